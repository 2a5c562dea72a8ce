//! The command line: one subcommand per thing a user does.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Trellis: a blockchain on which strangers train a language model together, and can prove it.
#[derive(Debug, Parser)]
#[command(name = "trellis", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the compute backend this binary is linked against (libtorch, CPU threads, CUDA).
    Doctor,
}

/// Parses `std::env::args` and runs the command; errors are printed for humans.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Doctor => {
            println!("{}", trellis_trainer::device::BackendInfo::probe());
            Ok(())
        }
    }
}
