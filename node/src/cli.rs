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
    configure_reproducibility();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// MKL's strict reproducibility mode makes matrix products independent of the thread count
/// (docs/protocol.md). It must be in the environment before libtorch first calls MKL, so it is
/// set here, before anything else runs; a value the user set is kept.
fn configure_reproducibility() {
    if std::env::var_os("MKL_CBWR").is_none() {
        // Single-threaded at this point: no other thread can be reading the environment.
        std::env::set_var("MKL_CBWR", trellis_trainer::device::MKL_CBWR_DEFAULT);
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
