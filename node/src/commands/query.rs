//! `trellis query …`: ask a node about the chain and print its answer as JSON.

use anyhow::Context as _;
use clap::Subcommand;
use trellis_proto::Address;

use crate::rpc::client::{client, explain, runtime, RpcArg, TrellisRpcClient as _};

#[derive(Debug, Subcommand)]
pub enum QueryCommand {
    /// The last committed block's height, hash and state root.
    Head(RpcArg),
    /// A block by height.
    Block {
        /// The block's height.
        height: u64,
        #[command(flatten)]
        rpc: RpcArg,
    },
    /// An account's balance, nonces and stakes.
    Account {
        /// The account's address (40 hex digits).
        address: String,
        #[command(flatten)]
        rpc: RpcArg,
    },
    /// The active validator set.
    Validators(RpcArg),
    /// A transaction by hash: committed (with its height), failed (included, fee paid, with the
    /// reason) or pending.
    Tx {
        /// The transaction's hash (64 hex digits).
        hash: String,
        #[command(flatten)]
        rpc: RpcArg,
    },
    /// A training job, or all jobs when no id is given.
    Job {
        /// The job's id; all jobs when left out.
        id: Option<u64>,
        #[command(flatten)]
        rpc: RpcArg,
    },
    /// One round of a training job (its summary, once settled long ago and pruned).
    Round {
        /// The job's id.
        job: u64,
        /// The round's number (from 0).
        round: u32,
        #[command(flatten)]
        rpc: RpcArg,
    },
}

fn print(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value).context("printing the answer")?);
    Ok(())
}

impl QueryCommand {
    fn rpc(&self) -> &str {
        match self {
            QueryCommand::Head(rpc) | QueryCommand::Validators(rpc) => &rpc.rpc,
            QueryCommand::Block { rpc, .. }
            | QueryCommand::Account { rpc, .. }
            | QueryCommand::Tx { rpc, .. }
            | QueryCommand::Job { rpc, .. }
            | QueryCommand::Round { rpc, .. } => &rpc.rpc,
        }
    }
}

/// Prints the answer to `method`, or explains why there is none.
fn show<T: serde::Serialize>(
    url: &str,
    method: &str,
    answer: Result<T, jsonrpsee::core::ClientError>,
) -> anyhow::Result<()> {
    print(&answer.map_err(|e| explain(url, method, e))?)
}

/// Asks the node `command` names and prints the answer.
pub fn query(command: QueryCommand) -> anyhow::Result<()> {
    let url = command.rpc().to_string();
    let rt = runtime()?;
    rt.block_on(async {
        let c = client(&url)?;
        match command {
            QueryCommand::Head(_) => show(&url, "chain_getHead", c.head().await),
            QueryCommand::Block { height, .. } => show(&url, "chain_getBlock", c.block(height).await),
            QueryCommand::Account { address, .. } => {
                address
                    .parse::<Address>()
                    .map_err(|_| anyhow::anyhow!("'{address}' is not an address (40 hex digits)"))?;
                show(&url, "state_getAccount", c.account(address).await)
            }
            QueryCommand::Validators(_) => show(&url, "state_getValidators", c.validators().await),
            QueryCommand::Tx { hash, .. } => show(&url, "tx_get", c.tx(hash).await),
            QueryCommand::Job { id: Some(id), .. } => show(&url, "job_get", c.job(id).await),
            QueryCommand::Job { id: None, .. } => show(&url, "job_list", c.jobs().await),
            QueryCommand::Round { job, round, .. } => match c.round(job, round).await {
                Ok(state) => print(&state),
                // A round settled long ago keeps only its summary: show that.
                Err(jsonrpsee::core::ClientError::Call(e)) if e.message().contains("job_getRoundSummary") => {
                    eprintln!("(pruned to its summary)");
                    show(&url, "job_getRoundSummary", c.round_summary(job, round).await)
                }
                Err(e) => Err(explain(&url, "job_getRound", e)),
            },
        }
    })
}
