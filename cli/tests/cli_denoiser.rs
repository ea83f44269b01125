//! The learned denoiser from the command line: `train --denoiser` on a finished model (new run,
//! resume, refusals), `info`, and `sample` using it or, with `--score-denoise`, the flow's step.

use std::path::PathBuf;

mod common;
use common::{ok, pixels, s, tarflow, text};

#[test]
fn a_denoiser_trains_on_a_finished_model_resumes_and_samples() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().unwrap();
    let data = root.join("assets/textures");
    let flow = dir.path().join("flow.safetensors");
    ok(&[
        "train",
        s(&data),
        "--out",
        s(&flow),
        "--steps",
        "2",
        "--blocks",
        "2",
        "--layers",
        "1",
        "--channels",
        "64",
        "--batch",
        "4",
        "--noise",
        "0.1",
        "--checkpoint-every",
        "2",
        "--preview-every",
        "0",
    ]);
    let out = dir.path().join("dn.safetensors");
    let dn = |extra: &[&str]| {
        let mut a = vec![
            "train",
            s(&data),
            "--denoiser",
            "--from",
            s(&flow),
            "--out",
            s(&out),
            "--batch",
            "4",
            "--denoiser-layers",
            "1",
            "--checkpoint-every",
            "2",
            "--eval-every",
            "2",
        ];
        a.extend_from_slice(extra);
        tarflow(&a)
    };
    // Flow-only settings are refused, naming the flag.
    let r = dn(&["--steps", "2", "--channels", "128"]);
    assert!(
        !r.status.success() && text(&r).contains("--channels"),
        "{}",
        text(&r)
    );
    let said = dn(&["--steps", "4"]);
    assert!(said.status.success(), "{}", text(&said));
    let said = text(&said);
    assert!(said.contains("trained the denoiser to step 4"), "{said}");
    assert!(said.contains("held-out: explains"), "{said}");
    let info = ok(&["info", s(&out)]);
    assert!(
        info.contains("denoiser:    learned, 1 layers of width 64, trained 4 steps")
            && info.contains("one forward pass; --score-denoise"),
        "{info}"
    );
    // The same command with more steps resumes from the checkpoint beside the output.
    let again = dn(&["--steps", "6"]);
    let again_text = text(&again);
    assert!(again.status.success(), "{again_text}");
    assert!(again_text.contains("at step 4"), "{again_text}");
    assert!(again_text.contains("to step 6"), "{again_text}");
    // Without --from there is nothing to start from; --from and --out must differ; an existing
    // model without a denoiser checkpoint is not overwritten.
    let other = dir.path().join("other.safetensors");
    let r = tarflow(&["train", s(&data), "--denoiser", "--out", s(&other)]);
    assert!(
        !r.status.success() && text(&r).contains("--from"),
        "{}",
        text(&r)
    );
    let r = tarflow(&[
        "train",
        s(&data),
        "--denoiser",
        "--from",
        s(&flow),
        "--out",
        s(&flow),
    ]);
    assert!(
        !r.status.success() && text(&r).contains("same file"),
        "{}",
        text(&r)
    );
    let r = tarflow(&[
        "train",
        s(&data),
        "--denoiser",
        "--from",
        s(&out),
        "--out",
        s(&flow),
    ]);
    assert!(
        !r.status.success() && text(&r).contains("--fresh"),
        "{}",
        text(&r)
    );
    // Sampling denoises through it; --score-denoise takes the flow's own step instead.
    let a = dir.path().join("a.png");
    let b = dir.path().join("b.png");
    let sample = |png: &PathBuf, extra: &[&str]| {
        let mut args = vec![
            "sample",
            "--model",
            s(&out),
            "--count",
            "4",
            "--seed",
            "3",
            "--out",
            s(png),
        ];
        args.extend_from_slice(extra);
        ok(&args)
    };
    sample(&a, &[]);
    sample(&b, &["--score-denoise"]);
    assert_ne!(pixels(&a).2, pixels(&b).2);
}
