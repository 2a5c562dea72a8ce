//! The command line: one subcommand per thing a user does, each in its own module: [`init`] (a
//! node's home), [`keys`], [`run`] (a node), [`tx`] and [`query`] (talk to a node), [`job`]
//! (submit and follow a job, stake, export a model), [`train`] (DiLoCo on this machine, with the
//! attacks of [`attack`] and the charts of [`plot`]), [`verify`] (check a trail), [`zk`]
//! (Groth16 setup, proofs, checks), [`doctor`] (the compute backend); `devnet` is
//! `crate::devnet`.

pub mod attack;
pub mod doctor;
pub mod genesis;
pub mod init;
pub mod job;
pub mod keys;
pub mod plot;
pub mod query;
pub mod run;
pub mod train;
pub mod tx;
pub mod verify;
pub mod zk;

use clap::{Parser, Subcommand};

use crate::commands::train::{EvalArgs, TrainArgs};

/// Trellis: a blockchain on which strangers train a language model together, and can prove it.
#[derive(Debug, Parser)]
#[command(name = "trellis", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a node's home directory: a key (0600), a configuration and a genesis.
    Init(crate::commands::init::InitArgs),
    /// Manage keys.
    #[command(subcommand)]
    Keys(crate::commands::keys::KeysCommand),
    /// Build a network's genesis across machines (docs/network.md).
    #[command(subcommand)]
    Genesis(crate::commands::genesis::GenesisCommand),
    /// Train with DiLoCo on this machine: K simulated workers, no chain.
    Train(Box<TrainArgs>),
    /// Work with trained models.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Check Proof-of-Learning trails by re-executing their segments.
    #[command(subcommand)]
    Verify(crate::commands::verify::VerifyCommand),
    /// Run a node from its home directory until Ctrl-C.
    Run(crate::commands::run::RunArgs),
    /// Start N validators on loopback with a fresh genesis, until Ctrl-C.
    Devnet(crate::devnet::DevnetArgs),
    /// Sign and submit a transaction to a node.
    #[command(subcommand)]
    Tx(crate::commands::tx::TxCommand),
    /// Ask a node about the chain.
    #[command(subcommand)]
    Query(crate::commands::query::QueryCommand),
    /// Submit a training job and follow it.
    #[command(subcommand)]
    Job(crate::commands::job::JobCommand),
    /// Bond stake as a miner or validator (shorthand for `trellis tx bond`).
    Stake(crate::commands::job::StakeArgs),
    /// Groth16 proofs of fixed-point SGD steps of a small model (docs/zk.md).
    #[command(subcommand)]
    Zk(crate::commands::zk::ZkCommand),
    /// Show the compute backend this binary is linked against (libtorch, CPU threads, CUDA).
    Doctor,
}

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Print a model's validation loss and perplexity on a text.
    Eval(EvalArgs),
    /// Fetch a job's latest committed model, check its hash against the chain, write safetensors.
    Export(crate::commands::job::ExportArgs),
}

/// How a command that ran to the end came out.
pub enum Outcome {
    Success,
    /// A check ran and found a problem (for example an invalid trail segment): exit code 2.
    CheckFailed,
}

pub fn run(cli: Cli) -> anyhow::Result<Outcome> {
    match cli.command {
        Command::Train(args) => crate::commands::train::train(*args).map(|()| Outcome::Success),
        Command::Model(ModelCommand::Eval(args)) => crate::commands::train::eval(args).map(|()| Outcome::Success),
        Command::Model(ModelCommand::Export(args)) => crate::commands::job::export(args).map(|()| Outcome::Success),
        Command::Genesis(command) => crate::commands::genesis::genesis(command).map(|()| Outcome::Success),
        Command::Job(command) => crate::commands::job::job(command).map(|()| Outcome::Success),
        Command::Stake(args) => crate::commands::job::stake(args).map(|()| Outcome::Success),
        Command::Zk(command) => {
            Ok(if crate::commands::zk::zk(command)? { Outcome::Success } else { Outcome::CheckFailed })
        }
        Command::Verify(crate::commands::verify::VerifyCommand::Trail(args)) => {
            Ok(if crate::commands::verify::verify_trail(args)? { Outcome::Success } else { Outcome::CheckFailed })
        }
        Command::Init(args) => crate::commands::init::init(args).map(|()| Outcome::Success),
        Command::Keys(command) => crate::commands::keys::keys(command).map(|()| Outcome::Success),
        Command::Run(args) => crate::commands::run::run(args).map(|()| Outcome::Success),
        Command::Devnet(args) => crate::devnet::devnet(args).map(|()| Outcome::Success),
        Command::Tx(command) => crate::commands::tx::send(command).map(|()| Outcome::Success),
        Command::Query(command) => crate::commands::query::query(command).map(|()| Outcome::Success),
        Command::Doctor => {
            crate::commands::doctor::doctor();
            Ok(Outcome::Success)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// Every argument of every command, `path` being the command words that reach it.
    fn arguments_without_help(command: &clap::Command, path: &str, out: &mut Vec<String>) {
        for arg in command.get_arguments() {
            let builtin = matches!(arg.get_id().as_str(), "help" | "version");
            if !builtin && arg.get_help().is_none() && arg.get_long_help().is_none() {
                out.push(format!("{path} {}", arg.get_long().map_or(arg.get_id().to_string(), |l| format!("--{l}"))));
            }
        }
        for sub in command.get_subcommands() {
            if sub.get_about().is_none() && sub.get_long_about().is_none() && sub.get_name() != "help" {
                out.push(format!("{path} {} (the command itself)", sub.get_name()));
            }
            arguments_without_help(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }

    /// The help of `--behaviour` and `--adversary` names every behaviour there is.
    #[cfg(feature = "adversary")]
    #[test]
    fn the_attack_flags_list_every_behaviour() {
        let command = Cli::command();
        for (subcommand, flag) in [("run", "behaviour"), ("devnet", "adversary")] {
            let sub = command.find_subcommand(subcommand).expect("the subcommand");
            let arg = sub.get_arguments().find(|a| a.get_long() == Some(flag)).expect("the flag");
            let help = arg.get_long_help().or(arg.get_help()).map(|h| h.to_string()).unwrap_or_default();
            let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
            for behaviour in trellis_protocol::behaviour::Behaviour::ALL {
                if behaviour == trellis_protocol::behaviour::Behaviour::Honest && flag == "adversary" {
                    continue;
                }
                assert!(
                    help.contains(behaviour.name()),
                    "`trellis {subcommand} --{flag}` does not name {}",
                    behaviour.name()
                );
            }
        }
    }

    #[test]
    fn every_command_and_flag_says_what_it_does() {
        let command = Cli::command();
        command.clone().debug_assert();
        let mut missing = Vec::new();
        arguments_without_help(&command, "trellis", &mut missing);
        assert!(missing.is_empty(), "these have no help text:\n  {}", missing.join("\n  "));
    }
}
