//! Helpers shared by the CLI tests: running the binary (on the CPU, or on the test device),
//! its output, paths and images.
#![allow(dead_code)] // each test binary uses its own subset

/// The device the tests run on, as the binary's `--device` takes it: `TARFLOW_TEST_DEVICE`
/// (`cpu` when unset; `cuda`, `cuda:N`, `metal`). Panics with the reason when it cannot be
/// used by this build.
pub fn device_arg() -> String {
    tarflow::testing::from_test_env()
        .unwrap_or_else(|e| panic!("{e}"))
        .to_string()
}

/// The device itself, for tests that load what the binary wrote.
pub fn device() -> tarflow::candle::Device {
    tarflow::testing::open_test_device().unwrap_or_else(|e| panic!("{e}"))
}

/// The accepted differences on the test device (`tarflow::testing::Tolerances`).
pub fn tol() -> tarflow::testing::Tolerances {
    tarflow::testing::tolerances(
        tarflow::testing::from_test_env().unwrap_or_else(|e| panic!("{e}")),
    )
}

/// The subcommands that take `--device`.
pub const DEVICE_COMMANDS: [&str; 9] = [
    "train", "sample", "sheet", "vary", "encode", "decode", "morph", "inpaint", "eval",
];

/// `args` with `--device <test device>` appended when the subcommand (`args[0]`) takes one.
pub fn with_device(args: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    if args.first().is_some_and(|c| DEVICE_COMMANDS.contains(c)) && !args.contains(&"--device") {
        v.push("--device".into());
        v.push(device_arg());
    }
    v
}

/// Run the `tarflow` binary with `args` as given (on the CPU unless they say `--device`).
pub fn tarflow(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tarflow"))
        .args(args)
        .output()
        .unwrap()
}

/// Everything a run printed: stdout, then stderr.
pub fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Panic with the run's output unless it succeeded.
pub fn assert_success(o: &std::process::Output) {
    assert!(o.status.success(), "{}", text(o));
}

/// Run `tarflow args`, which must succeed; what it printed.
pub fn ok(args: &[&str]) -> String {
    let o = tarflow(args);
    let text = text(&o);
    assert!(o.status.success(), "tarflow {args:?} failed: {text}");
    text
}

/// [`tarflow`] and [`ok`] on the test device: `--device` appended as [`with_device`] does.
pub mod on_device {
    /// Run the `tarflow` binary with `args` on the test device.
    pub fn tarflow(args: &[&str]) -> std::process::Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_tarflow"))
            .args(super::with_device(args))
            .output()
            .unwrap()
    }

    /// Run `tarflow args` on the test device, which must succeed; what it printed.
    pub fn ok(args: &[&str]) -> String {
        let o = tarflow(args);
        let text = super::text(&o);
        assert!(o.status.success(), "tarflow {args:?} failed: {text}");
        text
    }
}

/// The repository root.
pub fn repo() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A path as the `&str` an argument list takes.
pub fn s(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

/// An image file's width, height and RGBA8 pixels.
pub fn pixels(path: &std::path::Path) -> (u32, u32, Vec<u8>) {
    let img = image::open(path).unwrap().to_rgba8();
    (img.width(), img.height(), img.into_raw())
}
