//! The command line: one subcommand per thing a user does.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::train::{EvalArgs, TrainArgs};

/// Trellis: a blockchain on which strangers train a language model together, and can prove it.
#[derive(Debug, Parser)]
#[command(name = "trellis", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train with DiLoCo on this machine: K simulated workers, no chain.
    Train(TrainArgs),
    /// Work with trained models.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Show the compute backend this binary is linked against (libtorch, CPU threads, CUDA).
    Doctor,
}

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Print a model's validation loss and perplexity on a text.
    Eval(EvalArgs),
}

/// Parses `std::env::args` and runs the command; errors are printed for humans.
pub fn main() -> ExitCode {
    // Before anything else runs: MKL reads this when libtorch first calls it.
    trellis_trainer::device::configure_reproducibility();
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
        Command::Train(args) => crate::train::train(args),
        Command::Model(ModelCommand::Eval(args)) => crate::train::eval(args),
        Command::Doctor => {
            println!("{}", trellis_trainer::device::BackendInfo::probe());
            Ok(())
        }
    }
}
