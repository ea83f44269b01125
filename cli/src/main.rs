//! `tarflow`: the command-line front end of the tarflow engine. Every command is a library call
//! plus argument parsing and progress output.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tarflow_cli::{commands, error_chain};

/// Train, sample and convert TarFlow image models.
#[derive(Debug, Parser)]
#[command(name = "tarflow", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train a model on a folder of images (resumes from its checkpoint when run again).
    Train(Box<commands::train::TrainArgs>),
    /// Generate samples: a grid PNG, or one PNG per sample in a folder.
    Sample(commands::sample::SampleArgs),
    /// Generate a sprite sheet (a row per class) with a JSON atlas.
    Sheet(commands::sheet::SheetArgs),
    /// A terrain tileset: the 16-tile corner Wang set between two classes, with an atlas and a
    /// Tiled .tsx beside it.
    Tileset(commands::tileset::TilesetArgs),
    /// Variations of an existing texture through the flow's exact inverse.
    Vary(commands::latent::VaryArgs),
    /// Encode images to latents (z) exactly.
    Encode(commands::latent::EncodeArgs),
    /// Decode latents (z) to images.
    Decode(commands::latent::DecodeArgs),
    /// A sprite strip morphing one texture (or seed) into another through the exact latents.
    Morph(commands::morph::MorphArgs),
    /// Regenerate the masked pixels of a texture (white = regenerate) so that they fit the rest,
    /// or extend it to the right or below (--extend-right/--extend-down N patches).
    Inpaint(commands::inpaint::InpaintArgs),
    /// Learn per-class colour palettes from a data folder into a copy of a model file.
    Palette(commands::palette::PaletteArgs),
    /// Record a model's recommended sampling settings (guidance, alpha cutoff...) in a copy of
    /// its file; sampling uses them where no flag says otherwise.
    Recommend(commands::recommend::RecommendArgs),
    /// Bits/dim of a model on a folder of images, per class, next to PNG's.
    Eval(commands::eval::EvalArgs),
    /// Show a model's config, classes, parameter count and provenance.
    Info(commands::info::InfoArgs),
    /// Turn a PyTorch reference checkpoint (.pth or .safetensors state_dict) into a model file.
    Import(commands::import::ImportArgs),
    /// Write a model's weights as a reference state_dict (.safetensors, PyTorch key names).
    Export(commands::export::ExportArgs),
}

fn main() -> ExitCode {
    // RAYON_NUM_THREADS (candle re-reads /proc/cpuinfo per matmul without it) and malloc
    // keeping freed tensor memory: see tarflow::runtime. No other thread exists yet.
    // SAFETY: first statement of main: no other thread exists yet.
    unsafe { tarflow::runtime::tune_process() };
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(a) => commands::train::run(*a),
        Command::Sample(a) => commands::sample::run(a),
        Command::Sheet(a) => commands::sheet::run(a),
        Command::Tileset(a) => commands::tileset::run(a),
        Command::Vary(a) => commands::latent::vary(a),
        Command::Encode(a) => commands::latent::encode(a),
        Command::Decode(a) => commands::latent::decode(a),
        Command::Morph(a) => commands::morph::run(a),
        Command::Inpaint(a) => commands::inpaint::run(a),
        Command::Palette(a) => commands::palette::run(a),
        Command::Recommend(a) => commands::recommend::run(a),
        Command::Eval(a) => commands::eval::run(a),
        Command::Info(a) => commands::info::run(a),
        Command::Import(a) => commands::import::run(a),
        Command::Export(a) => commands::export::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
