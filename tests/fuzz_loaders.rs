//! Mutation fuzzing of every loader that reads untrusted files: our model files
//! (`model_from_bytes`, `load_model`), training checkpoints (`Checkpoint::load`) and PyTorch
//! `.pth` state_dicts (`read_reference`, `load_reference`).
//!
//! Valid files are mutated by proptest (fixed seed, no failure persistence, bounded case counts):
//! byte flips and overwrites, truncations, insertions, deletions, splices from another valid file,
//! and structured edits of the safetensors header (huge or empty shapes, out-of-range, negative or
//! reversed offsets, foreign dtypes, duplicate and renamed tensors, a wrong header length) and of
//! the JSON in its metadata (absurd config sizes, wrong types, broken trainer state).
//!
//! Every case must return `Ok` or `Err` (a panic fails the test, with the input saved under
//! `CARGO_TARGET_TMPDIR/fuzz_loaders/` for reproduction), finish within [`CASE_TIME`], and never
//! ask the allocator for a block larger than a bound proportional to the input: a header that
//! claims a terabyte tensor must be refused before anything is allocated. A counting global
//! allocator measures the largest request made on the loading thread.
//!
//! Each test prints how many loader executions it ran.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use serde_json::{Value, json};
use tarflow::candle::Device;
use tarflow::format::model_file::{model_metadata, parse_safetensors, safetensors_bytes};
use tarflow::format::{ConfigHints, infer_config, load_reference, model_from_bytes};
use tarflow::model::{InitOptions, init_weights};
use tarflow::train::{Checkpoint, Dataset, Item, TrainConfig, Trainer};
use tarflow::{Model, ModelConfig};

// ---------------------------------------------------------------------------------------------
// Allocation guard

/// Records, per thread, the largest single allocation asked for; refuses (which aborts the
/// process, leaving the saved input behind) any block over [`HARD_CAP`] on a guarded thread, so
/// that a loader bug cannot take the machine's memory.
struct CountingAlloc;

const HARD_CAP: usize = 6 << 30;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    static GUARDED: Cell<bool> = const { Cell::new(false) };
    /// Loader executions run on this thread (each test runs on its own thread).
    static RUNS: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) -> bool {
    let _ = LARGEST.try_with(|c| {
        if size > c.get() {
            c.set(size);
        }
    });
    !(size > HARD_CAP && GUARDED.try_with(Cell::get).unwrap_or(false))
}

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !note(layout.size()) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !note(layout.size()) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !note(new_size) {
            return std::ptr::null_mut();
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Time one loader call may take.
const CASE_TIME: Duration = Duration::from_secs(10);

/// Largest single allocation a loader may make for an input of `len` bytes: the loaders copy the
/// file and convert tensors to f32 (at most 4x the bytes of a u8 or 2x of an f16 tensor).
fn alloc_bound(len: usize) -> usize {
    (64 << 20) + 8 * len
}

static EXECUTIONS: AtomicUsize = AtomicUsize::new(0);

/// Run one loader on one input: it must not panic, must finish in time and must stay within
/// the allocation bound. Failing inputs are saved for reproduction.
fn check<T>(
    what: &str,
    input: &[u8],
    load: impl FnOnce() -> tarflow::Result<T>,
) -> Result<Option<String>, TestCaseError> {
    EXECUTIONS.fetch_add(1, Ordering::Relaxed);
    RUNS.with(|r| r.set(r.get() + 1));
    LARGEST.with(|c| c.set(0));
    GUARDED.with(|g| g.set(true));
    let start = Instant::now();
    let result = catch_unwind(AssertUnwindSafe(load));
    let elapsed = start.elapsed();
    GUARDED.with(|g| g.set(false));
    let largest = LARGEST.with(Cell::get);
    let fail = |why: String| {
        let saved = save_failure(what, input);
        TestCaseError::fail(format!("{what}: {why}; input saved to {}", saved.display()))
    };
    let outcome = match result {
        Err(payload) => {
            let text = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            return Err(fail(format!("the loader panicked: {text}")));
        }
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(e.to_string()),
    };
    if elapsed > CASE_TIME {
        return Err(fail(format!("took {elapsed:?}")));
    }
    if largest > alloc_bound(input.len()) {
        return Err(fail(format!(
            "allocated a block of {largest} bytes for a {}-byte input",
            input.len()
        )));
    }
    Ok(outcome)
}

fn save_failure(what: &str, input: &[u8]) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz_loaders");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!(
        "{what}-{}-{}.bin",
        input.len(),
        EXECUTIONS.load(Ordering::Relaxed)
    ));
    let _ = std::fs::write(&path, input);
    path
}

/// Cases per test are multiplied by `TARFLOW_FUZZ_SCALE` (default 1) for longer local runs;
/// the seed then changes with the scale too, so a longer run explores new inputs.
fn runner(cases: u32, seed: u8) -> TestRunner {
    let scale: u32 = std::env::var("TARFLOW_FUZZ_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
        .max(1);
    let seed = seed.wrapping_add((scale - 1) as u8);
    let config = Config {
        cases: cases.saturating_mul(scale),
        failure_persistence: None,
        max_shrink_iters: 256,
        max_shrink_time: 20_000,
        ..Config::default()
    };
    TestRunner::new_with_rng(
        config,
        TestRng::from_seed(RngAlgorithm::ChaCha, &[seed; 32]),
    )
}

fn report(test: &str, before: usize) {
    let n = RUNS.with(Cell::get) - before;
    eprintln!("{test}: {n} loader executions, no panic, hang or unbounded allocation");
}

// ---------------------------------------------------------------------------------------------
// Valid inputs

fn tiny_config() -> ModelConfig {
    // 4x4 RGB, patch 2: N = 4 patches of D = 12, width 64, one block of one layer (~200 KB).
    let mut c = ModelConfig::new(3, 4, 2, 64, 1, 1);
    c.num_classes = 2;
    c.class_names = vec!["stone".into(), "wood".into()];
    c.noise_sigma = 0.05;
    c
}

fn tiny_model() -> Model {
    let c = tiny_config();
    let w = init_weights(
        &c,
        7,
        InitOptions {
            proj_out_scale: 0.05,
        },
        &Device::Cpu,
    )
    .unwrap();
    Model::from_weights(c, &w, &Device::Cpu).unwrap()
}

fn model_bytes() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let m = tiny_model();
        safetensors_bytes(&m.weights().unwrap(), model_metadata(m.config())).unwrap()
    })
}

fn checkpoint_bytes() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let items = (0..8)
            .map(|i| Item {
                pixels: (0..4 * 4 * 3)
                    .map(|k| ((k * 37 + i * 11) % 256) as u8)
                    .collect(),
                width: 4,
                height: 4,
                label: Some(i % 2),
                file: i,
                frame: 0,
            })
            .collect();
        let data = Dataset::from_items(items, 3, 4, vec!["stone".into(), "wood".into()]).unwrap();
        let config = TrainConfig {
            batch_size: 4,
            holdout_fraction: 0.0,
            warmup_steps: 1,
            ..TrainConfig::default()
        };
        let mut t = Trainer::new(tiny_config(), config, data, &Device::Cpu).unwrap();
        t.step().unwrap();
        t.checkpoint().unwrap().to_bytes().unwrap()
    })
}

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/golden")
        .join(name)
}

fn pth_bytes() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| std::fs::read(golden("small.pth")).unwrap())
}

/// The entries of the golden `.pth`, in archive order (the pickle first).
fn pth_entries() -> &'static [(String, Vec<u8>)] {
    use std::io::Read;
    static ENTRIES: OnceLock<Vec<(String, Vec<u8>)>> = OnceLock::new();
    ENTRIES.get_or_init(|| {
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(pth_bytes())).unwrap();
        (0..zip.len())
            .map(|i| {
                let mut f = zip.by_index(i).unwrap();
                let mut data = Vec::new();
                f.read_to_end(&mut data).unwrap();
                (f.name().unwrap().into_owned(), data)
            })
            .collect()
    })
}

/// A `.pth` archive (stored entries, valid checksums) holding `entries`.
fn build_pth(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    use std::io::Write;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, data) in entries {
        w.start_file(name.as_str(), opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// The golden `.pth` with its pickle mutated by `edit`, re-archived with valid checksums (the
/// zip checksum is no defence: a hostile file has a correct one).
fn pth_with_pickle(edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut entries = pth_entries().to_vec();
    assert!(entries[0].0.ends_with("data.pkl"), "{}", entries[0].0);
    edit(&mut entries[0].1);
    build_pth(&entries)
}

// ---------------------------------------------------------------------------------------------
// Mutations

/// Values that break size arithmetic.
fn interesting() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(2),
        Just(3),
        Just(63),
        Just(64),
        Just(65),
        Just(255),
        Just(4096),
        Just(1 << 31),
        Just(1 << 32),
        Just((1 << 32) + 1),
        Just(1 << 40),
        Just(1 << 53),
        Just(1 << 62),
        Just(u64::MAX / 4),
        Just(u64::MAX - 1),
        Just(u64::MAX),
        any::<u64>(),
        0u64..100_000,
    ]
}

/// JSON values put where the loaders expect something else.
fn json_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        interesting().prop_map(Value::from),
        Just(json!(-1)),
        Just(json!(i64::MIN)),
        Just(json!(1e300)),
        Just(json!(-0.5)),
        Just(json!(0.5)),
        Just(json!(null)),
        Just(json!(true)),
        Just(json!("")),
        Just(json!("x")),
        Just(json!([])),
        Just(json!([1, 2, 3])),
        Just(json!({})),
        Just(json!(vec!["a"; 9])),
    ]
}

#[derive(Debug, Clone)]
enum ByteEdit {
    Flip {
        at: usize,
        xor: u8,
    },
    Set {
        at: usize,
        value: u8,
    },
    Truncate {
        keep: usize,
    },
    Insert {
        at: usize,
        bytes: Vec<u8>,
    },
    Delete {
        at: usize,
        len: usize,
    },
    /// Copy `len` bytes from `from` of the donor file over `at`.
    Splice {
        at: usize,
        from: usize,
        len: usize,
    },
    /// Overwrite 8 bytes with an interesting little-endian u64 (a length, an offset).
    Word {
        at: usize,
        value: u64,
    },
}

fn byte_edit(hot: usize) -> impl Strategy<Value = ByteEdit> {
    // Positions are taken modulo the length; half of them fall in the first `hot` bytes (the
    // header or pickle), where structure lives.
    let pos = prop_oneof![0..hot.max(1), any::<usize>()];
    prop_oneof![
        (pos.clone(), 1..=255u8).prop_map(|(at, xor)| ByteEdit::Flip { at, xor }),
        (pos.clone(), any::<u8>()).prop_map(|(at, value)| ByteEdit::Set { at, value }),
        any::<usize>().prop_map(|keep| ByteEdit::Truncate { keep }),
        (pos.clone(), proptest::collection::vec(any::<u8>(), 1..64))
            .prop_map(|(at, bytes)| ByteEdit::Insert { at, bytes }),
        (pos.clone(), 1..4096usize).prop_map(|(at, len)| ByteEdit::Delete { at, len }),
        (pos.clone(), any::<usize>(), 1..8192usize).prop_map(|(at, from, len)| ByteEdit::Splice {
            at,
            from,
            len
        }),
        (pos, interesting()).prop_map(|(at, value)| ByteEdit::Word { at, value }),
    ]
}

fn apply_bytes(bytes: &mut Vec<u8>, edit: &ByteEdit, donor: &[u8]) {
    let n = bytes.len();
    let at = |a: usize| if n == 0 { 0 } else { a % n };
    match edit {
        ByteEdit::Flip { at: a, xor } if n > 0 => bytes[at(*a)] ^= xor,
        ByteEdit::Set { at: a, value } if n > 0 => bytes[at(*a)] = *value,
        ByteEdit::Truncate { keep } => bytes.truncate(keep % (n + 1)),
        ByteEdit::Insert { at: a, bytes: b } => {
            let a = at(*a);
            bytes.splice(a..a, b.iter().copied());
        }
        ByteEdit::Delete { at: a, len } => {
            let a = at(*a);
            bytes.drain(a..(a + len).min(n));
        }
        ByteEdit::Splice { at: a, from, len } if n > 0 && !donor.is_empty() => {
            let a = at(*a);
            let from = from % donor.len();
            let len = (*len).min(donor.len() - from).min(n - a);
            bytes[a..a + len].copy_from_slice(&donor[from..from + len]);
        }
        ByteEdit::Word { at: a, value } if n >= 8 => {
            let a = at(*a).min(n - 8);
            bytes[a..a + 8].copy_from_slice(&value.to_le_bytes());
        }
        _ => {}
    }
}

/// A safetensors file split into its header entries (in order, duplicates allowed) and data.
struct Parsed {
    entries: Vec<(String, Value)>,
    data: Vec<u8>,
}

fn parse(bytes: &[u8]) -> Parsed {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    Parsed {
        entries: header.into_iter().collect(),
        data: bytes[8 + n..].to_vec(),
    }
}

impl Parsed {
    fn to_bytes(&self, header_len: Option<u64>) -> Vec<u8> {
        let body: Vec<String> = self
            .entries
            .iter()
            .map(|(k, v)| format!("{}:{}", Value::from(k.as_str()), v))
            .collect();
        let header = format!("{{{}}}", body.join(","));
        let len = header_len.unwrap_or(header.len() as u64);
        let mut out = len.to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&self.data);
        out
    }

    fn tensor_indices(&self) -> Vec<usize> {
        (0..self.entries.len())
            .filter(|&i| self.entries[i].0 != "__metadata__")
            .collect()
    }

    fn metadata(&mut self) -> Option<&mut serde_json::Map<String, Value>> {
        self.entries
            .iter_mut()
            .find(|(k, _)| k == "__metadata__")
            .and_then(|(_, v)| v.as_object_mut())
    }

    /// Edit the JSON document stored as a string under metadata `key`.
    fn edit_meta_json(&mut self, key: &str, edit: impl FnOnce(&mut Value)) {
        let Some(meta) = self.metadata() else { return };
        let Some(text) = meta.get(key).and_then(Value::as_str) else {
            return;
        };
        let Ok(mut doc) = serde_json::from_str::<Value>(text) else {
            return;
        };
        if !doc.is_object() {
            return;
        }
        edit(&mut doc);
        meta.insert(key.to_string(), Value::from(doc.to_string()));
    }
}

const CONFIG_FIELDS: [&str; 11] = [
    "in_channels",
    "img_size",
    "patch_size",
    "channels",
    "num_blocks",
    "layers_per_block",
    "nvp",
    "num_classes",
    "class_names",
    "noise_sigma",
    "provenance",
];

const TRAINER_FIELDS: [&str; 9] = [
    "step",
    "rng",
    "epoch",
    "epoch_seed",
    "epoch_pos",
    "consecutive_skips",
    "total_skips",
    "config",
    "manifest",
];

const DTYPES: [&str; 14] = [
    "F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "U16", "U32", "BOOL", "F8_E4M3",
    "F4",
];

#[derive(Debug, Clone)]
enum HeaderEdit {
    Shape {
        tensor: usize,
        shape: Vec<u64>,
    },
    Offsets {
        tensor: usize,
        begin: Value,
        end: Value,
    },
    Dtype {
        tensor: usize,
        dtype: &'static str,
    },
    Remove {
        tensor: usize,
    },
    Duplicate {
        tensor: usize,
        shift: u64,
    },
    Rename {
        tensor: usize,
        name: String,
    },
    HeaderLen {
        value: u64,
    },
    ConfigField {
        field: &'static str,
        value: Value,
    },
    ConfigRemove {
        field: &'static str,
    },
    ClassNames {
        count: usize,
    },
    TrainerField {
        field: &'static str,
        value: Value,
    },
    RngSeed {
        seed: String,
    },
    MetaSet {
        key: &'static str,
        value: String,
    },
    MetaRemove {
        key: &'static str,
    },
}

fn header_edit() -> impl Strategy<Value = HeaderEdit> {
    let tensor = any::<usize>();
    prop_oneof![
        (tensor, proptest::collection::vec(interesting(), 0..5))
            .prop_map(|(tensor, shape)| HeaderEdit::Shape { tensor, shape }),
        (tensor, json_value(), json_value()).prop_map(|(tensor, begin, end)| HeaderEdit::Offsets {
            tensor,
            begin,
            end
        }),
        (tensor, proptest::sample::select(&DTYPES[..]))
            .prop_map(|(tensor, dtype)| HeaderEdit::Dtype { tensor, dtype }),
        tensor.prop_map(|tensor| HeaderEdit::Remove { tensor }),
        (tensor, prop_oneof![Just(0u64), interesting()])
            .prop_map(|(tensor, shift)| HeaderEdit::Duplicate { tensor, shift }),
        (
            tensor,
            prop_oneof![
                Just("var".to_string()),
                Just("blocks.0.attn_mask".to_string()),
                Just("blocks.9.proj_in.weight".to_string()),
                Just("model.var".to_string()),
                Just("ema.blocks.0.pos_embed".to_string()),
                Just("adam.m.".to_string()),
                Just("blocks.18446744073709551615.proj_in.weight".to_string()),
                "[a-z.0-9]{0,12}",
            ]
        )
            .prop_map(|(tensor, name)| HeaderEdit::Rename { tensor, name }),
        interesting().prop_map(|value| HeaderEdit::HeaderLen { value }),
        (proptest::sample::select(&CONFIG_FIELDS[..]), json_value())
            .prop_map(|(field, value)| HeaderEdit::ConfigField { field, value }),
        proptest::sample::select(&CONFIG_FIELDS[..])
            .prop_map(|field| HeaderEdit::ConfigRemove { field }),
        prop_oneof![Just(0usize), Just(1), Just(3), Just(100_000)]
            .prop_map(|count| HeaderEdit::ClassNames { count }),
        (proptest::sample::select(&TRAINER_FIELDS[..]), json_value())
            .prop_map(|(field, value)| HeaderEdit::TrainerField { field, value }),
        prop_oneof![
            Just(String::new()),
            Just("zz".repeat(32)),
            Just("é".repeat(32)),
            Just("0".repeat(63)),
            "[0-9a-f]{64}",
        ]
        .prop_map(|seed| HeaderEdit::RngSeed { seed }),
        (
            proptest::sample::select(&["config", "format", "format_version", "trainer"][..]),
            prop_oneof![
                Just(String::new()),
                Just("{".to_string()),
                Just("tarflow-checkpoint".to_string()),
                Just("2".to_string()),
                Just("[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[".repeat(64)),
                ".{0,40}",
            ]
        )
            .prop_map(|(key, value)| HeaderEdit::MetaSet { key, value }),
        proptest::sample::select(&["config", "format", "format_version", "trainer"][..])
            .prop_map(|key| HeaderEdit::MetaRemove { key }),
    ]
}

fn apply_header(p: &mut Parsed, edit: &HeaderEdit) -> Option<u64> {
    let tensors = p.tensor_indices();
    let pick = |i: usize| tensors[i % tensors.len()];
    match edit {
        HeaderEdit::Shape { tensor, shape } => {
            p.entries[pick(*tensor)].1["shape"] = json!(shape);
        }
        HeaderEdit::Offsets { tensor, begin, end } => {
            p.entries[pick(*tensor)].1["data_offsets"] = json!([begin, end]);
        }
        HeaderEdit::Dtype { tensor, dtype } => {
            p.entries[pick(*tensor)].1["dtype"] = json!(dtype);
        }
        HeaderEdit::Remove { tensor } => {
            p.entries.remove(pick(*tensor));
        }
        HeaderEdit::Duplicate { tensor, shift } => {
            let (name, mut entry) = p.entries[pick(*tensor)].clone();
            if let Some(off) = entry["data_offsets"].as_array_mut() {
                for o in off.iter_mut() {
                    *o = json!(o.as_u64().unwrap_or(0).wrapping_add(*shift));
                }
            }
            p.entries.push((name, entry));
        }
        HeaderEdit::Rename { tensor, name } => {
            p.entries[pick(*tensor)].0 = name.clone();
        }
        HeaderEdit::HeaderLen { value } => return Some(*value),
        HeaderEdit::ConfigField { field, value } => {
            p.edit_meta_json("config", |c| c[*field] = value.clone());
        }
        HeaderEdit::ConfigRemove { field } => {
            p.edit_meta_json("config", |c| {
                if let Some(o) = c.as_object_mut() {
                    o.remove(*field);
                }
            });
        }
        HeaderEdit::ClassNames { count } => {
            p.edit_meta_json("config", |c| {
                c["class_names"] = json!(vec!["x"; *count]);
                if *count > 3 {
                    c["num_classes"] = json!(count);
                }
            });
        }
        HeaderEdit::TrainerField { field, value } => {
            p.edit_meta_json("trainer", |c| c[*field] = value.clone());
        }
        HeaderEdit::RngSeed { seed } => {
            p.edit_meta_json("trainer", |c| {
                if let Some(rng) = c.get_mut("rng").and_then(Value::as_object_mut) {
                    rng.insert("seed".into(), json!(seed));
                }
            });
        }
        HeaderEdit::MetaSet { key, value } => {
            if let Some(m) = p.metadata() {
                m.insert(key.to_string(), json!(value));
            }
        }
        HeaderEdit::MetaRemove { key } => {
            if let Some(m) = p.metadata() {
                m.remove(*key);
            }
        }
    }
    None
}

/// One fuzz input: structured header edits, then raw byte edits.
#[derive(Debug, Clone)]
struct Mutation {
    header: Vec<HeaderEdit>,
    bytes: Vec<ByteEdit>,
}

fn mutation(hot: usize, max_header: usize, max_bytes: usize) -> impl Strategy<Value = Mutation> {
    (
        proptest::collection::vec(header_edit(), 0..=max_header),
        proptest::collection::vec(byte_edit(hot), 0..=max_bytes),
    )
        .prop_map(|(header, bytes)| Mutation { header, bytes })
}

fn mutate(valid: &[u8], m: &Mutation, donor: &[u8], structured: bool) -> Vec<u8> {
    let mut bytes = if structured && !m.header.is_empty() {
        let mut p = parse(valid);
        let mut len = None;
        for e in &m.header {
            len = apply_header(&mut p, e).or(len);
        }
        p.to_bytes(len)
    } else {
        valid.to_vec()
    };
    for e in &m.bytes {
        apply_bytes(&mut bytes, e, donor);
    }
    bytes
}

fn header_len(bytes: &[u8]) -> usize {
    8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize
}

// ---------------------------------------------------------------------------------------------
// Loaders under test

fn load_model_bytes(bytes: &[u8]) -> Result<Option<String>, TestCaseError> {
    let path = Path::new("fuzzed.safetensors");
    let out = check("model", bytes, || {
        model_from_bytes(bytes, path, &Device::Cpu)
    })?;
    // The import path reads the same bytes as a bare state_dict and infers the config.
    check("import", bytes, || {
        let contents = parse_safetensors(bytes, path, &Device::Cpu)?;
        let config = infer_config(&contents.tensors, ConfigHints::default())?;
        Model::from_weights(config, &contents.tensors, &Device::Cpu)
    })?;
    if let Some(e) = &out {
        prop_assert!(
            e.contains("fuzzed.safetensors") || e.contains("model config"),
            "{e}"
        );
    }
    Ok(out)
}

fn load_checkpoint_file(dir: &Path, bytes: &[u8]) -> Result<Option<String>, TestCaseError> {
    let path = dir.join("fuzzed.ckpt.safetensors");
    std::fs::write(&path, bytes).unwrap();
    let out = check("checkpoint", bytes, || {
        Checkpoint::load(&path, &Device::Cpu)
    })?;
    if let Some(e) = &out {
        prop_assert!(
            e.contains("fuzzed.ckpt.safetensors") || e.contains("config"),
            "{e}"
        );
    }
    Ok(out)
}

fn load_pth_file(dir: &Path, bytes: &[u8]) -> Result<Option<String>, TestCaseError> {
    let path = dir.join("fuzzed.pth");
    std::fs::write(&path, bytes).unwrap();
    check("pth", bytes, || {
        load_reference(
            &path,
            None,
            ConfigHints {
                in_channels: Some(3),
                ..Default::default()
            },
            &Device::Cpu,
        )
    })
}

// ---------------------------------------------------------------------------------------------
// The tests

#[test]
fn valid_inputs_load() {
    assert_eq!(load_model_bytes(model_bytes()).unwrap(), None);
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        load_checkpoint_file(dir.path(), checkpoint_bytes()).unwrap(),
        None
    );
    assert_eq!(load_pth_file(dir.path(), pth_bytes()).unwrap(), None);
    // The re-archived golden file too: the pickle mutations start from a loadable file.
    assert_eq!(
        load_pth_file(dir.path(), &pth_with_pickle(|_| {})).unwrap(),
        None
    );
}

#[test]
fn fuzz_model_file_bytes() {
    let before = RUNS.with(Cell::get);
    let valid = model_bytes();
    let donor = checkpoint_bytes();
    let hot = header_len(valid);
    let errors = Cell::new(0usize);
    runner(400, 1)
        .run(&mutation(hot, 0, 4), |m| {
            let bytes = mutate(valid, &m, donor, false);
            errors.set(errors.get() + usize::from(load_model_bytes(&bytes)?.is_some()));
            Ok(())
        })
        .unwrap();
    assert!(
        errors.get() > 0,
        "no mutation was refused: the fuzzer is not fuzzing"
    );
    report("fuzz_model_file_bytes", before);
}

#[test]
fn fuzz_model_file_header() {
    let before = RUNS.with(Cell::get);
    let valid = model_bytes();
    let hot = header_len(valid);
    let errors = Cell::new(0usize);
    runner(500, 2)
        .run(&mutation(hot, 3, 1), |m| {
            let bytes = mutate(valid, &m, valid, true);
            errors.set(errors.get() + usize::from(load_model_bytes(&bytes)?.is_some()));
            Ok(())
        })
        .unwrap();
    assert!(
        errors.get() > 0,
        "no mutation was refused: the fuzzer is not fuzzing"
    );
    report("fuzz_model_file_header", before);
}

#[test]
fn fuzz_checkpoint() {
    let before = RUNS.with(Cell::get);
    let valid = checkpoint_bytes();
    let donor = model_bytes();
    let hot = header_len(valid);
    let dir = tempfile::tempdir().unwrap();
    let errors = Cell::new(0usize);
    runner(300, 3)
        .run(&mutation(hot, 3, 2), |m| {
            let bytes = mutate(valid, &m, donor, true);
            errors.set(
                errors.get() + usize::from(load_checkpoint_file(dir.path(), &bytes)?.is_some()),
            );
            Ok(())
        })
        .unwrap();
    assert!(
        errors.get() > 0,
        "no mutation was refused: the fuzzer is not fuzzing"
    );
    report("fuzz_checkpoint", before);
}

#[test]
fn fuzz_pth() {
    let before = RUNS.with(Cell::get);
    let valid = pth_bytes();
    let pickle_len = pth_entries()[0].1.len();
    let dir = tempfile::tempdir().unwrap();
    let errors = Cell::new(0usize);
    // Half the cases mutate the pickle and re-archive it with valid checksums; the others
    // mutate the archive's bytes (most of its structure is in its first 7000 bytes).
    runner(300, 4)
        .run(&(any::<bool>(), mutation(7000, 0, 3)), |(pickle, m)| {
            let bytes = if pickle {
                pth_with_pickle(|p| {
                    for e in &m.bytes {
                        apply_bytes(p, e, pth_bytes());
                    }
                })
            } else {
                mutate(valid, &m, model_bytes(), false)
            };
            errors.set(errors.get() + usize::from(load_pth_file(dir.path(), &bytes)?.is_some()));
            Ok(())
        })
        .unwrap();
    let _ = pickle_len;
    assert!(
        errors.get() > 0,
        "no mutation was refused: the fuzzer is not fuzzing"
    );
    report("fuzz_pth", before);
}

#[test]
fn metadata_of_the_valid_files_is_what_the_mutations_edit() {
    // Guards the structured mutations: if the format's keys change, this fails instead of the
    // header edits silently becoming no-ops.
    let mut p = parse(checkpoint_bytes());
    let meta: HashMap<String, Value> = p.metadata().unwrap().clone().into_iter().collect();
    for key in ["config", "trainer", "format", "format_version"] {
        assert!(meta.contains_key(key), "checkpoint metadata lacks {key}");
    }
    let config: Value = serde_json::from_str(meta["config"].as_str().unwrap()).unwrap();
    for f in &CONFIG_FIELDS[..10] {
        assert!(config.get(f).is_some(), "config lacks {f}");
    }
    let trainer: Value = serde_json::from_str(meta["trainer"].as_str().unwrap()).unwrap();
    for f in TRAINER_FIELDS {
        assert!(trainer.get(f).is_some(), "trainer state lacks {f}");
    }
    let p = parse(model_bytes());
    assert_eq!(load_model_bytes(&p.to_bytes(None)).unwrap(), None);
}

// ---------------------------------------------------------------------------------------------
// Regression tests: one per bug the fuzzing found

/// Found by `fuzz_pth`: a 4-byte change of a string length in the pickle made candle's reader
/// allocate up to 4 GiB (`vec![0; len]` before reading). The archive is now checked first.
#[test]
fn regression_pth_forged_string_length_is_refused_before_allocating() {
    let bytes = pth_with_pickle(|p| {
        let at = p
            .windows(8)
            .position(|w| w == b"X\x03\x00\x00\x00var")
            .expect("the key `var` in the pickle");
        p[at + 1..at + 5].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    });
    let dir = tempfile::tempdir().unwrap();
    let err = load_pth_file(dir.path(), &bytes).unwrap().expect("refused");
    assert!(
        err.contains("fuzzed.pth") && err.contains("past the end of the pickle"),
        "{err}"
    );
}

/// Issue 26: a 524-byte pickle that memoises a list and then, forty times over, stores a tuple
/// of two copies of it back over it, doubled candle's reader's memory each round (it copies memo
/// entries on every read: "memory allocation failed", exit 134); a million nested lists
/// overflowed the stack when dropped. Both are refused by the pre-scan, naming the file.
#[test]
fn regression_pth_memo_bomb_and_deep_nesting_are_refused() {
    let mut bomb = vec![0x80, 2, b']', b'q', 0];
    for _ in 0..40 {
        bomb.extend_from_slice(&[b'h', 0, b'h', 0, 0x86, b'q', 0]);
    }
    bomb.push(b'.');
    let mut deep = vec![0x80, 2];
    deep.extend(std::iter::repeat_n(b']', 1_000_000));
    deep.extend(std::iter::repeat_n(b'a', 999_999));
    deep.push(b'.');
    let dir = tempfile::tempdir().unwrap();
    for (what, pickle, says) in [("memo bomb", bomb, "objects"), ("nesting", deep, "nested")] {
        let bytes = pth_with_pickle(|p| *p = pickle);
        let err = load_pth_file(dir.path(), &bytes).unwrap().expect("refused");
        assert!(
            err.contains("fuzzed.pth") && err.contains(says),
            "{what}: {err}"
        );
    }
}

/// Found by reading the checkpoint loader for `fuzz_checkpoint`: its config was used (every
/// tensor name listed) before being validated, so `num_blocks: 2^50` ran out of memory instead
/// of being refused.
#[test]
fn regression_checkpoint_with_absurd_config_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    for (field, value) in [
        ("num_blocks", 1u64 << 50),
        ("layers_per_block", 1 << 50),
        ("img_size", 1 << 40),
        ("channels", 1 << 40),
    ] {
        let mut p = parse(checkpoint_bytes());
        p.edit_meta_json("config", |c| c[field] = json!(value));
        let start = Instant::now();
        let err = load_checkpoint_file(dir.path(), &p.to_bytes(None))
            .unwrap()
            .expect("refused");
        assert!(
            err.contains("fuzzed.ckpt.safetensors") && err.contains("refused"),
            "{field}: {err}"
        );
        assert!(start.elapsed() < Duration::from_secs(2), "{field}");
    }
}

/// Weights that are not finite were refused in models and in a checkpoint's live weights, but
/// not in its EMA or AdamW moments, from which a resumed run would produce NaN at once.
#[test]
fn regression_checkpoint_with_non_finite_or_negative_moments_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("valid.ckpt.safetensors");
    std::fs::write(&path, checkpoint_bytes()).unwrap();
    let valid = Checkpoint::load(&path, &Device::Cpu).unwrap();
    let name = "blocks.0.proj_in.bias";
    let cases = [
        ("EMA", f32::NAN, "non-finite"),
        ("first moment", f32::INFINITY, "non-finite"),
        ("second moment", f32::NEG_INFINITY, "non-finite"),
        ("second moment", -1.0, "negative"),
    ];
    for (what, value, expect) in cases {
        let mut ckpt = valid.clone();
        let map = match what {
            "EMA" => &mut ckpt.ema,
            "first moment" => &mut ckpt.adam_m,
            _ => &mut ckpt.adam_v,
        };
        let t = &map[name];
        let mut v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        v[5] = value;
        let bad = tarflow::candle::Tensor::from_vec(v, t.dims(), &Device::Cpu).unwrap();
        map.insert(name.to_string(), bad);
        let out = dir.path().join("bad.ckpt.safetensors");
        ckpt.save(&out).unwrap();
        let err = Checkpoint::load(&out, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("bad.ckpt.safetensors")
                && err.contains(what)
                && err.contains(name)
                && err.contains(expect)
                && err.contains("index 5"),
            "{what} = {value}: {err}"
        );
    }
}

/// Found by `fuzz_pth`: a pickle whose tuples are shorter than torch writes them made candle's
/// reader panic (`removal index (is 4) should be < len (is 1)`); it is now an error naming the
/// file.
#[test]
fn regression_pth_short_storage_tuple_is_an_error_not_a_panic() {
    // The case proptest found (seed 4), kept as it was.
    let bytes = pth_with_pickle(|p| {
        let edit = ByteEdit::Delete {
            at: 6445822814418001832,
            len: 627,
        };
        apply_bytes(p, &edit, &[]);
    });
    let dir = tempfile::tempdir().unwrap();
    let err = load_pth_file(dir.path(), &bytes).unwrap().expect("refused");
    assert!(
        err.contains("fuzzed.pth") && err.contains("its pickle is malformed"),
        "{err}"
    );
}
