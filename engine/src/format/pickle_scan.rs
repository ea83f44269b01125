//! The pre-scan of a PyTorch checkpoint's pickle (`data.pkl`), run before candle's reader sees
//! it: every opcode's argument must lie within the pickle, and the values the pickle builds must
//! stay of checkpoint size, so that a hostile file is a clear error naming it instead of an
//! allocation failure or a stack overflow (neither of which `catch_unwind` can catch).

/// Walk the opcodes of a pickle (every opcode of protocols 0 to 5, as Python's `pickletools`
/// lists them) and check that every argument, length-prefixed ones included, lies within it,
/// while running the pickle machine's stack and memo on sizes instead of objects
/// ([`Machine`]): no value may hold more than [`MAX_OBJECTS`] objects once its memo references
/// are copied out (as candle's reader copies them) nor nest deeper than [`MAX_DEPTH`]. An
/// unknown opcode is an error: skipping it would desynchronise the walk.
pub(super) fn scan_pickle(p: &[u8]) -> std::result::Result<(), String> {
    let mut machine = Machine::default();
    /// How an opcode's argument is laid out.
    enum Arg {
        Fixed(usize),
        /// A little-endian length of this many bytes, then that many bytes.
        Counted(usize),
        /// This many newline-terminated lines.
        Lines(usize),
    }
    let mut i = 0usize;
    while i < p.len() {
        let (op, at) = (p[i], i);
        i += 1;
        let rest = p.len() - i;
        let past = |n: u128| {
            format!("opcode {op:#04x} at byte {at} claims {n} bytes, past the end of the pickle")
        };
        let arg = match op {
            b'.' => return Ok(()),
            // No argument.
            b'(' | b'0' | b'1' | b'2' | b'N' | b'a' | b'e' | b'b' | b'd' | b'}' | b']' | b')'
            | b'l' | b't' | b's' | b'u' | b'R' | b'o' | b'Q' | 0x81 | 0x85 | 0x86 | 0x87 | 0x88
            | 0x89 | 0x8f | 0x90 | 0x91 | 0x92 | 0x93 | 0x94 | 0x97 | 0x98 => Arg::Fixed(0),
            // PROTO, BININT1, BINGET, BINPUT, EXT1; BININT2, EXT2; BININT, LONG_BINGET,
            // LONG_BINPUT, EXT4; BINFLOAT; FRAME (its 8-byte length: the frame's opcodes follow).
            0x80 | b'K' | b'h' | b'q' | 0x82 => Arg::Fixed(1),
            b'M' | 0x83 => Arg::Fixed(2),
            b'J' | b'j' | b'r' | 0x84 => Arg::Fixed(4),
            b'G' | 0x95 => Arg::Fixed(8),
            // SHORT_BINSTRING, SHORT_BINBYTES, SHORT_BINUNICODE, LONG1.
            b'U' | b'C' | 0x8c | 0x8a => Arg::Counted(1),
            // BINSTRING, BINUNICODE, BINBYTES, LONG4.
            b'T' | b'X' | b'B' | 0x8b => Arg::Counted(4),
            // BINUNICODE8, BINBYTES8, BYTEARRAY8.
            0x8d | 0x8e | 0x96 => Arg::Counted(8),
            // INT, LONG, FLOAT, STRING, UNICODE, PERSID, GET, PUT: one line.
            b'I' | b'L' | b'F' | b'S' | b'V' | b'P' | b'g' | b'p' => Arg::Lines(1),
            // GLOBAL, INST: module and name.
            b'c' | b'i' => Arg::Lines(2),
            _ => return Err(format!("unknown pickle opcode {op:#04x} at byte {at}")),
        };
        let n = match arg {
            Arg::Fixed(n) => n,
            Arg::Counted(w) => {
                let head = p.get(i..i + w).ok_or_else(|| past(w as u128))?;
                let mut len = [0u8; 8];
                len[..w].copy_from_slice(head);
                let len = u64::from_le_bytes(len) as u128;
                if w as u128 + len > rest as u128 {
                    return Err(past(w as u128 + len));
                }
                w + len as usize
            }
            Arg::Lines(k) => {
                let mut n = 0;
                for _ in 0..k {
                    let line = p[i + n..]
                        .iter()
                        .position(|&b| b == b'\n')
                        .ok_or_else(|| past((rest - n + 1) as u128))?;
                    n += line + 1;
                }
                n
            }
        };
        if n > rest {
            return Err(past(n as u128));
        }
        machine
            .step(op, &p[i..i + n])
            .map_err(|e| format!("opcode {op:#04x} at byte {at}: {e}"))?;
        i += n;
    }
    Ok(())
}

/// Most objects one value of a checkpoint's pickle may hold (a state_dict of a few hundred
/// tensors holds a few thousand).
pub(super) const MAX_OBJECTS: u64 = 1 << 24;
/// Deepest nesting of a checkpoint's pickle (a state_dict nests about six deep).
pub(super) const MAX_DEPTH: u32 = 1000;

/// What the pickle machine would hold, by size: each stack entry (and memo entry) is the number
/// of objects in the value and its nesting depth, or a mark.
#[derive(Default)]
struct Machine {
    stack: Vec<Option<Size>>,
    memo: std::collections::HashMap<u64, Size>,
}

#[derive(Debug, Clone, Copy)]
struct Size {
    objects: u64,
    depth: u32,
}

impl Size {
    const LEAF: Size = Size {
        objects: 1,
        depth: 1,
    };

    /// A container of `children`.
    fn of(children: &[Size]) -> std::result::Result<Size, String> {
        let mut s = Size::LEAF;
        for c in children {
            s = s.add(*c)?;
        }
        Ok(s)
    }

    /// This container with `child` added to it.
    fn add(self, child: Size) -> std::result::Result<Size, String> {
        let s = Size {
            objects: self.objects.saturating_add(child.objects),
            depth: self.depth.max(child.depth.saturating_add(1)),
        };
        if s.objects > MAX_OBJECTS {
            return Err(format!(
                "a value of more than {MAX_OBJECTS} objects (memo references copied out): not \
                 a checkpoint, refused before reading it"
            ));
        }
        if s.depth > MAX_DEPTH {
            return Err(format!(
                "values nested more than {MAX_DEPTH} deep: not a checkpoint, refused before \
                 reading it"
            ));
        }
        Ok(s)
    }
}

impl Machine {
    fn pop(&mut self) -> std::result::Result<Size, String> {
        match self.stack.pop() {
            Some(Some(s)) => Ok(s),
            Some(None) => Err("pops a mark as a value (malformed pickle)".into()),
            None => Err("pops from an empty stack (malformed pickle)".into()),
        }
    }

    /// The values above the topmost mark, which is removed.
    fn pop_mark(&mut self) -> std::result::Result<Vec<Size>, String> {
        let at = self
            .stack
            .iter()
            .rposition(Option::is_none)
            .ok_or("needs a mark and there is none (malformed pickle)")?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items.into_iter().flatten().collect())
    }

    fn push(&mut self, s: Size) {
        self.stack.push(Some(s));
    }

    /// Add `children` to the container on top of the stack.
    fn extend_top(&mut self, children: &[Size]) -> std::result::Result<(), String> {
        let mut top = self.pop()?;
        for c in children {
            top = top.add(*c)?;
        }
        self.push(top);
        Ok(())
    }

    fn top(&self) -> std::result::Result<Size, String> {
        match self.stack.last() {
            Some(Some(s)) => Ok(*s),
            _ => Err("needs a value on the stack (malformed pickle)".into()),
        }
    }

    /// The stack effect of opcode `op` with its argument bytes `arg`.
    fn step(&mut self, op: u8, arg: &[u8]) -> std::result::Result<(), String> {
        let index = |arg: &[u8]| -> std::result::Result<u64, String> {
            match op {
                b'g' | b'p' => std::str::from_utf8(arg)
                    .ok()
                    .and_then(|t| t.trim().parse().ok())
                    .ok_or_else(|| "a memo index that is not a number".to_string()),
                _ => {
                    let mut b = [0u8; 8];
                    b[..arg.len().min(8)].copy_from_slice(&arg[..arg.len().min(8)]);
                    Ok(u64::from_le_bytes(b))
                }
            }
        };
        match op {
            // PROTO, FRAME, STOP: nothing on the stack.
            0x80 | 0x95 | b'.' => {}
            b'(' => self.stack.push(None),
            b'0' => {
                self.stack
                    .pop()
                    .ok_or("pops from an empty stack (malformed pickle)")?;
            }
            b'1' => {
                self.pop_mark()?;
            }
            b'2' => {
                let t = self.top()?;
                self.push(t);
            }
            // Values: numbers, strings, bytes, None, booleans, empty containers, globals,
            // persistent ids by text, extension codes, out-of-band buffers.
            b'F' | b'I' | b'J' | b'K' | b'M' | b'L' | 0x8a | 0x8b | b'S' | b'T' | b'U' | b'V'
            | b'X' | 0x8c | 0x8d | b'B' | b'C' | 0x8e | 0x96 | b'N' | 0x88 | 0x89 | b'G' | b']'
            | b'}' | b')' | 0x8f | b'c' | b'P' | 0x82 | 0x83 | 0x84 | 0x97 => self.push(Size::LEAF),
            // READONLY_BUFFER: the value on top, unchanged.
            0x98 => {
                self.top()?;
            }
            // STACK_GLOBAL: module and name to one global.
            0x93 => {
                self.pop()?;
                self.pop()?;
                self.push(Size::LEAF);
            }
            // BINPERSID: a persistent id object to what it loads.
            b'Q' => {
                let id = self.pop()?;
                self.push(Size::of(&[id])?);
            }
            // REDUCE and NEWOBJ: callable or class and arguments to a new object.
            b'R' | 0x81 => {
                let (a, f) = (self.pop()?, self.pop()?);
                self.push(Size::of(&[f, a])?);
            }
            // NEWOBJ_EX: class, arguments and keywords.
            0x92 => {
                let (k, a, c) = (self.pop()?, self.pop()?, self.pop()?);
                self.push(Size::of(&[c, a, k])?);
            }
            // BUILD: the state into the object below it.
            b'b' => {
                let state = self.pop()?;
                self.extend_top(&[state])?;
            }
            // INST, OBJ, LIST, TUPLE, DICT, FROZENSET: the marked values to one new object.
            b'i' | b'o' | b'l' | b't' | b'd' | 0x91 => {
                let items = self.pop_mark()?;
                self.push(Size::of(&items)?);
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.pop()?);
                }
                self.push(Size::of(&items)?);
            }
            // APPEND, SETITEM: one value (or key and value) into the container below.
            b'a' => {
                let v = self.pop()?;
                self.extend_top(&[v])?;
            }
            b's' => {
                let (v, k) = (self.pop()?, self.pop()?);
                self.extend_top(&[k, v])?;
            }
            // APPENDS, SETITEMS, ADDITEMS: the marked values into the container below the mark.
            b'e' | b'u' | 0x90 => {
                let items = self.pop_mark()?;
                self.extend_top(&items)?;
            }
            // PUT, BINPUT, LONG_BINPUT, MEMOIZE: the top into the memo.
            b'p' | b'q' | b'r' => {
                let t = self.top()?;
                self.memo.insert(index(arg)?, t);
            }
            0x94 => {
                let t = self.top()?;
                let next = self.memo.len() as u64;
                self.memo.insert(next, t);
            }
            // GET, BINGET, LONG_BINGET: a copy of a memo entry.
            b'g' | b'h' | b'j' => {
                let i = index(arg)?;
                let v = *self
                    .memo
                    .get(&i)
                    .ok_or_else(|| format!("reads memo entry {i}, which was never stored"))?;
                self.push(v);
            }
            _ => return Err("unknown opcode".into()),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{MAX_DEPTH, scan_pickle};

    /// The hostile pickle of issue 26: a list memoised, then forty rounds of a tuple of two
    /// copies of the memo entry stored back over it; a reader that copies memo entries on
    /// every read doubles its memory each round (2^40 objects from 335 bytes).
    fn doubling() -> Vec<u8> {
        let mut p = vec![0x80, 2, b']', b'q', 0];
        for _ in 0..40 {
            p.extend_from_slice(&[b'h', 0, b'h', 0, 0x86, b'q', 0]);
        }
        p.push(b'.');
        p
    }

    /// A million lists, each appended into the one before it: a value nested a million deep,
    /// which overflows the stack when a reader drops it.
    fn nested(n: usize) -> Vec<u8> {
        let mut p = vec![0x80, 2];
        p.extend(std::iter::repeat_n(b']', n));
        p.extend(std::iter::repeat_n(b'a', n - 1));
        p.push(b'.');
        p
    }

    #[test]
    fn memo_bombs_and_deep_nesting_are_refused() {
        let e = scan_pickle(&doubling()).unwrap_err();
        assert!(e.contains("more than") && e.contains("objects"), "{e}");
        let e = scan_pickle(&nested(1_000_000)).unwrap_err();
        assert!(e.contains("nested more than"), "{e}");
        // Within the bounds: a few rounds of doubling, and nesting to the limit, scan.
        let mut few = vec![0x80, 2, b']', b'q', 0];
        for _ in 0..10 {
            few.extend_from_slice(&[b'h', 0, b'h', 0, 0x86, b'q', 0]);
        }
        few.push(b'.');
        scan_pickle(&few).unwrap();
        scan_pickle(&nested(MAX_DEPTH as usize)).unwrap();
        // Reading a memo entry never stored, and popping an empty stack, are errors.
        assert!(
            scan_pickle(&[0x80, 2, b'h', 7, b'.'])
                .unwrap_err()
                .contains("memo entry 7")
        );
        assert!(
            scan_pickle(&[0x80, 2, b'a', b'.'])
                .unwrap_err()
                .contains("empty stack")
        );
    }

    /// `pickle.dumps({'weight': 'X\xff\xff\xff\xff.', 'n': [1, 2.5, b'ab']}, protocol=4)`, as
    /// Python 3.11 writes it: FRAME, MEMOIZE, SHORT_BINUNICODE (whose text holds the bytes of
    /// BINUNICODE and STOP), SHORT_BINBYTES, BINFLOAT.
    const PROTOCOL_4: &[u8] = &[
        128, 4, 149, 51, 0, 0, 0, 0, 0, 0, 0, 125, 148, 40, 140, 6, 119, 101, 105, 103, 104, 116,
        148, 140, 10, 88, 195, 191, 195, 191, 195, 191, 195, 191, 46, 148, 140, 1, 110, 148, 93,
        148, 40, 75, 1, 71, 64, 4, 0, 0, 0, 0, 0, 0, 67, 2, 97, 98, 148, 101, 117, 46,
    ];

    #[test]
    fn protocol_4_pickles_scan_whole_and_truncations_are_caught() {
        scan_pickle(PROTOCOL_4).unwrap();
        // The string's length byte raised past the end.
        let mut long = PROTOCOL_4.to_vec();
        long[24] = 200;
        let e = scan_pickle(&long).unwrap_err();
        assert!(e.contains("0x8c") && e.contains("past the end"), "{e}");
        // Cut inside the string.
        let e = scan_pickle(&PROTOCOL_4[..30]).unwrap_err();
        assert!(e.contains("past the end"), "{e}");
        // An opcode no protocol defines.
        let e = scan_pickle(&[0x80, 2, 0xff, b'.']).unwrap_err();
        assert!(e.contains("unknown pickle opcode 0xff"), "{e}");
        // Text-protocol opcodes read up to their newlines.
        scan_pickle(b"(lp0\nI1\naF2.5\naS'X\\xff'\np1\na.").unwrap();
        assert!(scan_pickle(b"cmodule\nname").is_err());
    }

    /// Every protocol Python's `pickle` writes (0 to 5) scans whole, when python3 is present.
    #[test]
    fn pickles_python_writes_at_every_protocol_scan_whole() {
        let code = "import pickle,sys\n\
            v={'w':[1,-5,2**70,2.5,'X\\xff.',b'ab'*40,bytearray(b'z'),(1,2,3),{1,2},frozenset([3]),None,True],'t':'\\u20ac'*300}\n\
            for p in range(6): sys.stdout.buffer.write(len(pickle.dumps(v,protocol=p)).to_bytes(4,'little')+pickle.dumps(v,protocol=p))";
        let Ok(out) = std::process::Command::new("python3")
            .args(["-c", code])
            .output()
        else {
            eprintln!("python3 not found: skipped");
            return;
        };
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (mut b, mut n) = (out.stdout.as_slice(), 0);
        while b.len() >= 4 {
            let len = u32::from_le_bytes(b[..4].try_into().unwrap()) as usize;
            scan_pickle(&b[4..4 + len]).unwrap_or_else(|e| panic!("protocol {n}: {e}"));
            b = &b[4 + len..];
            n += 1;
        }
        assert_eq!(n, 6);
    }
}
