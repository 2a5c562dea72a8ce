//! `trellis tx …`: sign a transfer, bond or unbond with a key file or a node's key, and submit it.

use clap::Subcommand;
use trellis_proto::{Address, Amount, TxKind};

use crate::rpc::client::{sign_and_submit, RoleArg, SignerArgs};

#[derive(Debug, Subcommand)]
pub enum TxCommand {
    /// Send tokens to an address.
    Transfer {
        /// Recipient address (40 hex digits).
        #[arg(long)]
        to: String,
        /// How much to send.
        #[arg(long)]
        amount: u64,
        #[command(flatten)]
        signer: SignerArgs,
    },
    /// Bond stake as a validator or miner.
    Bond {
        /// The role the stake backs.
        #[arg(long, value_enum)]
        role: RoleArg,
        /// How much to bond (taken from the signer's balance).
        #[arg(long)]
        amount: u64,
        #[command(flatten)]
        signer: SignerArgs,
    },
    /// Start unbonding stake (released after the unbonding period).
    Unbond {
        /// The role whose stake to unbond.
        #[arg(long, value_enum)]
        role: RoleArg,
        /// How much to unbond.
        #[arg(long)]
        amount: u64,
        #[command(flatten)]
        signer: SignerArgs,
    },
}

/// Signs and submits the transaction `command` describes.
pub fn send(command: TxCommand) -> anyhow::Result<()> {
    let (kind, signer) = match command {
        TxCommand::Transfer { to, amount, signer } => {
            let to =
                to.parse::<Address>().map_err(|_| anyhow::anyhow!("--to '{to}' is not an address (40 hex digits)"))?;
            (TxKind::Transfer { to, amount: Amount(amount) }, signer)
        }
        TxCommand::Bond { role, amount, signer } => {
            (TxKind::Bond { role: role.into(), amount: Amount(amount) }, signer)
        }
        TxCommand::Unbond { role, amount, signer } => {
            (TxKind::Unbond { role: role.into(), amount: Amount(amount) }, signer)
        }
    };
    sign_and_submit(kind, &signer)
}
