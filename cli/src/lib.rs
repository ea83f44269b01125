//! The library behind the `tarflow` command: one module per subcommand (its clap arguments and
//! its `run`), the shared sampling options and batched generation, and PNG input and output.
//! The binary (`src/main.rs`) is argument dispatch only; end-to-end tests drive the commands
//! through this library with the same argument parsing.

pub mod commands;
pub mod generate;
pub mod images;
pub mod interrupt;

/// The error and its causes on one line, leaving out causes its message already quotes.
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !out.contains(&c) {
            out.push_str(": ");
            out.push_str(&c);
        }
    }
    out
}
