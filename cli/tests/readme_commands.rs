//! Every `tarflow` command the README shows runs and succeeds, in the README's order (the
//! `train` that writes `my.tarflow.safetensors` comes before the `eval` that reads it), in a scratch
//! folder where `assets/` is the repository's. `cargo run --release -p tarflow-cli -- ARGS` runs
//! as `tarflow ARGS`; `cargo test --workspace` is CI's own command.
//!
//! What the README leaves to the reader is filled in: `M` and `old.tarflow.safetensors` are the bundled
//! demo model; `tex.png`, `a.png`, `b.png`, `master_palette.png` are held-out textures;
//! `mask.png` masks their middle; `ref.pth` is the reference's small checkpoint; `new_art/` and
//! `more_art/` are folders of textures. To keep CI short, work sizes are cut
//! (`--steps` to 2, also where `train` relies on its default, `--samples` to 2, `--count` to at
//! most 4, `--per-class` to 1); every flag, file and folder is otherwise as written, so a renamed
//! flag, a missing `--out` or a command that fails on its own example fails here.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The commands in the README's `sh` blocks, continuation lines joined, comments dropped.
fn readme_commands() -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let mut commands = Vec::new();
    let (mut in_sh, mut pending) = (false, String::new());
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("```") {
            in_sh = !in_sh && (t == "```sh" || t == "```bash" || t == "```shell");
            continue;
        }
        if !in_sh {
            continue;
        }
        let code = match t.find(" #") {
            Some(i) => t[..i].trim_end(),
            None if t.starts_with('#') => "",
            None => t,
        };
        if let Some(head) = code.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(code);
        if !pending.trim().is_empty() {
            commands.push(pending.trim().to_string());
        }
        pending.clear();
    }
    commands
}

/// Words of a command line, with '...' and "..." quoting.
fn words(line: &str) -> Vec<String> {
    let (mut out, mut cur, mut quote, mut any) = (Vec::new(), String::new(), None, false);
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                any = true;
            }
            (None, c) if c.is_whitespace() => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                any = false;
            }
            (None, c) => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The README's example inputs, made in the scratch folder.
fn scratch() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::os::unix::fs::symlink(repo().join("assets"), d.join("assets")).unwrap();
    let test = repo().join("assets/textures/test");
    let mut textures: Vec<PathBuf> = std::fs::read_dir(test.join("stone"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    textures.sort();
    assert!(textures.len() >= 4, "held-out stone textures");
    for (name, src) in ["tex.png", "a.png", "b.png"].iter().zip(&textures) {
        std::fs::copy(src, d.join(name)).unwrap();
    }
    for folder in ["new_art/stone", "more_art/stone"] {
        std::fs::create_dir_all(d.join(folder)).unwrap();
        for (k, src) in textures.iter().take(4).enumerate() {
            std::fs::copy(src, d.join(folder).join(format!("t{k}.png"))).unwrap();
        }
    }
    let golden = repo().join("../shared/golden/small.pth");
    std::fs::copy(golden, d.join("ref.pth")).unwrap();
    std::fs::copy(&textures[3], d.join("master_palette.png")).unwrap();
    let demo = repo().join("assets/models/textures16.tarflow.safetensors");
    std::fs::copy(demo, d.join("old.tarflow.safetensors")).unwrap();
    // A 16x16 mask: white (regenerate) in the middle 8x8.
    let mask = image::RgbaImage::from_fn(16, 16, |x, y| {
        let inside = (4..12).contains(&x) && (4..12).contains(&y);
        image::Rgba(if inside { [255; 4] } else { [0, 0, 0, 255] })
    });
    mask.save(d.join("mask.png")).unwrap();
    dir
}

/// The arguments to run for a README command (None: not a `tarflow` command).
fn tarflow_args(command: &str) -> Option<Vec<String>> {
    let w = words(command);
    let rest = if w.first().map(String::as_str) == Some("tarflow") {
        &w[1..]
    } else if w.starts_with(&["cargo".into(), "run".into()]) {
        let sep = w.iter().position(|a| a == "--")?;
        if !w[..sep].iter().any(|a| a == "tarflow-cli") {
            return None;
        }
        &w[sep + 1..]
    } else {
        return None;
    };
    let mut args: Vec<String> = rest.to_vec();
    for i in 1..args.len() {
        let cut = match args[i - 1].as_str() {
            "--steps" | "--samples" => Some(2),
            "--count" => Some(4),
            "--per-class" => Some(1),
            _ => None,
        };
        if let (Some(cut), Ok(v)) = (cut, args[i].parse::<u64>()) {
            args[i] = v.min(cut).to_string();
        }
        if args[i] == "M" && args[i - 1] == "--model" {
            args[i] = "assets/models/textures16.tarflow.safetensors".into();
        }
    }
    if args.first().map(String::as_str) == Some("train") && !args.iter().any(|a| a == "--steps") {
        args.extend(["--steps".into(), "2".into()]);
    }
    Some(args)
}

#[test]
fn every_readme_command_runs_as_written() {
    let commands = readme_commands();
    let runnable: Vec<(String, Vec<String>)> = commands
        .iter()
        .filter_map(|c| Some((c.clone(), tarflow_args(c)?)))
        .collect();
    assert!(
        runnable.len() >= 10,
        "only {} tarflow commands found in the README: {commands:?}",
        runnable.len()
    );
    let dir = scratch();
    let mut failures = Vec::new();
    for (line, args) in &runnable {
        let started = std::time::Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_tarflow"))
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        eprintln!(
            "{:>5.1} s  {}",
            started.elapsed().as_secs_f64(),
            args.join(" ")
        );
        if !out.status.success() {
            failures.push(format!(
                "README: `{line}`\n  ran: tarflow {}\n  {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} README command(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Nothing was written into the repository's assets through the link.
    let assets = Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets");
    assert!(
        !assets.join("my.tarflow.safetensors").exists() && !assets.join("sheet.png").exists(),
        "a README command wrote into assets/"
    );
}

#[test]
fn the_readme_parser_sees_continuations_comments_and_cargo_run() {
    let args = tarflow_args(
        "cargo run --release -p tarflow-cli -- sample --model M --count 16 --out g.png",
    )
    .unwrap();
    assert_eq!(
        args,
        [
            "sample",
            "--model",
            "assets/models/textures16.tarflow.safetensors",
            "--count",
            "4",
            "--out",
            "g.png"
        ]
    );
    assert_eq!(tarflow_args("cargo test --workspace"), None);
    assert_eq!(
        tarflow_args("tarflow train art/ --out m.safetensors").unwrap(),
        ["train", "art/", "--out", "m.safetensors", "--steps", "2"]
    );
    assert_eq!(words("a 'b c' \"\" d"), ["a", "b c", "", "d"]);
    let all = readme_commands();
    assert!(
        all.iter().all(|c| !c.ends_with('\\') && !c.contains(" # ")),
        "{all:?}"
    );
}
