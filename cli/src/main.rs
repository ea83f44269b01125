//! `tarflow`: the command-line front end of the tarflow engine. Every command is a library call
//! plus argument parsing and progress output.

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Train, sample and convert TarFlow image models.
#[derive(Debug, Parser)]
#[command(name = "tarflow", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show a model's config, classes, parameter count and provenance.
    Info(commands::info::InfoArgs),
    /// Turn a PyTorch reference checkpoint (.pth or .safetensors state_dict) into a model file.
    Import(commands::import::ImportArgs),
    /// Write a model's weights as a reference state_dict (.safetensors, PyTorch key names).
    Export(commands::export::ExportArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info(a) => commands::info::run(a),
        Command::Import(a) => commands::import::run(a),
        Command::Export(a) => commands::export::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
