//! Helpers shared by the CLI tests: the device they run the binary on.
#![allow(dead_code)] // each test binary uses its own subset

/// The device the tests run on, as the binary's `--device` takes it: `TARFLOW_TEST_DEVICE`
/// (`cpu` when unset; `cuda`, `cuda:N`, `metal`). Panics with the reason when it cannot be
/// used by this build.
pub fn device_arg() -> String {
    tarflow::DeviceChoice::from_test_env()
        .unwrap_or_else(|e| panic!("{e}"))
        .to_string()
}

/// The device itself, for tests that load what the binary wrote.
pub fn device() -> tarflow::candle::Device {
    tarflow::DeviceChoice::open_test_device().unwrap_or_else(|e| panic!("{e}"))
}

/// The accepted differences on the test device (`tarflow::device::Tolerances`).
pub fn tol() -> tarflow::device::Tolerances {
    tarflow::DeviceChoice::from_test_env()
        .unwrap_or_else(|e| panic!("{e}"))
        .tolerances()
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
