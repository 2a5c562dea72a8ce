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
    /// Check Proof-of-Learning trails by re-executing their segments.
    #[command(subcommand)]
    Verify(crate::verify::VerifyCommand),
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
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::CheckFailed) => ExitCode::from(2),
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// How a command that ran to the end came out.
pub enum Outcome {
    Success,
    /// A check ran and found a problem (for example an invalid trail segment): exit code 2.
    CheckFailed,
}

pub fn run(cli: Cli) -> anyhow::Result<Outcome> {
    match cli.command {
        Command::Train(args) => crate::train::train(args).map(|()| Outcome::Success),
        Command::Model(ModelCommand::Eval(args)) => crate::train::eval(args).map(|()| Outcome::Success),
        Command::Verify(crate::verify::VerifyCommand::Trail(args)) => {
            Ok(if crate::verify::verify_trail(args)? { Outcome::Success } else { Outcome::CheckFailed })
        }
        Command::Doctor => {
            println!("{}", trellis_trainer::device::BackendInfo::probe());
            Ok(Outcome::Success)
        }
    }
}
