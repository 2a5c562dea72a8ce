//! The `trellis` binary: parses the command line, runs the command (`trellis_node::commands`),
//! and turns its outcome into an exit code: 0 done, 2 a check found a problem, 1 an error
//! (printed for humans, with its causes).

use std::process::ExitCode;

use clap::Parser as _;
use trellis_node::commands::{self, Cli, Outcome};

fn main() -> ExitCode {
    // Before anything else runs: MKL reads this when libtorch first calls it.
    trellis_trainer::device::configure_reproducibility();
    match commands::run(Cli::parse()) {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::CheckFailed) => ExitCode::from(2),
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
