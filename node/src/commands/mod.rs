//! The command line: one subcommand per thing a user does, each in its own module: [`run`]
//! (a node), [`job`] (submit and follow a job, stake, export a model), [`train`] (DiLoCo on
//! this machine, with the attacks of [`attack`] and the charts of [`plot`]), [`verify`] (check
//! a trail), [`zk`] (Groth16 setup, proofs, checks); `devnet` is `crate::devnet`, `tx` and
//! `query` are `crate::rpc::client`.

pub mod attack;
pub mod job;
pub mod plot;
pub mod run;
pub mod train;
pub mod verify;
pub mod zk;

use std::path::PathBuf;

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
    Init {
        /// The home directory to create.
        #[arg(long)]
        home: PathBuf,
        /// A name for this node in logs and peers' views.
        #[arg(long, default_value = "trellis-node")]
        moniker: String,
        /// The chain id signed into every transaction and vote (ignored with --genesis).
        #[arg(long, default_value = "trellis-devnet")]
        chain_id: String,
        /// First of three loopback ports: RPC, p2p, metrics.
        #[arg(long, default_value_t = 26657)]
        base_port: u16,
        /// Join an existing chain with this genesis file instead of starting a new one.
        #[arg(long)]
        genesis: Option<PathBuf>,
    },
    /// Manage keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Train with DiLoCo on this machine: K simulated workers, no chain.
    Train(TrainArgs),
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
    Tx(crate::rpc::client::TxCommand),
    /// Ask a node about the chain.
    #[command(subcommand)]
    Query(crate::rpc::client::QueryCommand),
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
pub enum KeysCommand {
    /// Print the address and public key of a node's key.
    Show {
        /// The node's home directory (from `trellis init`).
        #[arg(long)]
        home: PathBuf,
    },
    /// Create a new key file (0600) for an account.
    New {
        /// Where to write the key file; refuses to overwrite.
        #[arg(long)]
        out: PathBuf,
    },
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
        Command::Train(args) => crate::commands::train::train(args).map(|()| Outcome::Success),
        Command::Model(ModelCommand::Eval(args)) => crate::commands::train::eval(args).map(|()| Outcome::Success),
        Command::Model(ModelCommand::Export(args)) => crate::commands::job::export(args).map(|()| Outcome::Success),
        Command::Job(command) => crate::commands::job::job(command).map(|()| Outcome::Success),
        Command::Stake(args) => crate::commands::job::stake(args).map(|()| Outcome::Success),
        Command::Zk(command) => {
            Ok(if crate::commands::zk::zk(command)? { Outcome::Success } else { Outcome::CheckFailed })
        }
        Command::Verify(crate::commands::verify::VerifyCommand::Trail(args)) => {
            Ok(if crate::commands::verify::verify_trail(args)? { Outcome::Success } else { Outcome::CheckFailed })
        }
        Command::Init { home, moniker, chain_id, base_port, genesis } => {
            let home = crate::home::init(&home, &moniker, &chain_id, base_port, genesis.as_deref())?;
            let key = home.load_key()?;
            println!("initialised {}", home.root.display());
            println!("address:    {}", key.address());
            println!("public key: {}", key.public_key());
            println!("config:     {}", home.config().display());
            println!("genesis:    {}", home.genesis().display());
            Ok(Outcome::Success)
        }
        Command::Keys(KeysCommand::Show { home }) => {
            let key = crate::home::Home::new(home).load_key()?;
            println!("address:    {}\npublic key: {}", key.address(), key.public_key());
            Ok(Outcome::Success)
        }
        Command::Keys(KeysCommand::New { out }) => {
            let key = trellis_proto::Keypair::generate();
            crate::home::write_key(&out, &key)?;
            println!(
                "wrote {} (keep it private)\naddress:    {}\npublic key: {}",
                out.display(),
                key.address(),
                key.public_key()
            );
            Ok(Outcome::Success)
        }
        Command::Run(args) => crate::commands::run::run(args).map(|()| Outcome::Success),
        Command::Devnet(args) => crate::devnet::devnet(args).map(|()| Outcome::Success),
        Command::Tx(command) => crate::rpc::client::send(command).map(|()| Outcome::Success),
        Command::Query(command) => crate::rpc::client::query(command).map(|()| Outcome::Success),
        Command::Doctor => {
            println!("{}", trellis_trainer::device::BackendInfo::probe());
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

    #[test]
    fn every_command_and_flag_says_what_it_does() {
        let command = Cli::command();
        command.clone().debug_assert();
        let mut missing = Vec::new();
        arguments_without_help(&command, "trellis", &mut missing);
        assert!(missing.is_empty(), "these have no help text:\n  {}", missing.join("\n  "));
    }
}
