//! `trellis tx ...` and `trellis query ...`: talk to a node over JSON-RPC, through the typed
//! client of [`super::api::TrellisRpc`].

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use jsonrpsee::http_client::{HttpClient, HttpClientBuilder};
use trellis_proto::{Address, Amount, Encode, Keypair, Role, Transaction, TxKind};

pub use super::api::TrellisRpcClient;
use super::api::TxStatus;

/// Default node to talk to: the RPC port `trellis init` uses by default.
pub const DEFAULT_RPC: &str = "http://127.0.0.1:26657";

#[derive(Debug, Args)]
pub struct RpcArg {
    /// The node's JSON-RPC URL.
    #[arg(long, default_value = DEFAULT_RPC, env = "TRELLIS_RPC")]
    pub rpc: String,
}

#[derive(Debug, Args)]
pub struct SignerArgs {
    /// Key file that signs (from `trellis keys new`); or use --home.
    #[arg(long, conflicts_with = "home")]
    pub key: Option<PathBuf>,
    /// Sign with this node home's key.
    #[arg(long)]
    pub home: Option<PathBuf>,
    /// Fee offered, in base units.
    #[arg(long, default_value_t = 10)]
    pub fee: u64,
    /// Wait until the transaction is committed (up to 60 s) and print its height.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub rpc: RpcArg,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum RoleArg {
    Validator,
    Miner,
}

impl From<RoleArg> for Role {
    fn from(role: RoleArg) -> Role {
        match role {
            RoleArg::Validator => Role::Validator,
            RoleArg::Miner => Role::Miner,
        }
    }
}

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

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")
}

pub fn client(url: &str) -> anyhow::Result<HttpClient> {
    HttpClientBuilder::default()
        .request_timeout(Duration::from_secs(30))
        .build(url)
        .with_context(|| format!("'{url}' is not a usable RPC URL (like {DEFAULT_RPC})"))
}

/// Explains a failed call of `method` at `url` in terms of what the user asked.
pub fn explain(url: &str, method: &str, error: jsonrpsee::core::ClientError) -> anyhow::Error {
    match error {
        jsonrpsee::core::ClientError::Call(e) => anyhow::anyhow!("{method}: {}", e.message()),
        jsonrpsee::core::ClientError::Transport(e) => {
            anyhow::anyhow!("cannot reach a node at {url}: {e} (is `trellis run` going? see --rpc)")
        }
        other => anyhow::anyhow!("{method} at {url}: {other}"),
    }
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

fn load_signer(args: &SignerArgs) -> anyhow::Result<Keypair> {
    match (&args.key, &args.home) {
        (Some(path), _) => crate::home::read_key(path),
        (None, Some(home)) => crate::home::Home::new(home).load_key(),
        (None, None) => bail!("say who signs: --key FILE (from `trellis keys new`) or --home DIR"),
    }
}

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

/// Signs `kind` as the signer the arguments name, submits it, and waits if asked.
pub fn sign_and_submit(kind: TxKind, signer: &SignerArgs) -> anyhow::Result<()> {
    let key = load_signer(signer)?;
    let url = signer.rpc.rpc.clone();
    let rt = runtime()?;
    rt.block_on(async {
        let client = client(&url)?;
        let head = client.head().await.map_err(|e| explain(&url, "chain_getHead", e))?;
        let account =
            client.account(key.address().to_string()).await.map_err(|e| explain(&url, "state_getAccount", e))?;
        let nonce = account.pending_nonce;
        let tx =
            Transaction { sender: key.public_key(), nonce, fee: Amount(signer.fee), kind }.sign(&head.chain_id, &key);
        let submitted =
            client.submit(hex::encode(tx.to_bytes())).await.map_err(|e| explain(&url, "tx_submit", e))?;
        let hash = submitted.hash;
        println!("submitted {hash} (nonce {nonce})");
        if signer.wait {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                match client.tx(hash.to_string()).await {
                    Ok(TxStatus::Committed { height, .. }) => {
                        println!("committed at height {height}");
                        break;
                    }
                    Ok(TxStatus::Failed { height, reason, .. }) => bail!(
                        "{hash} was included at height {height} but failed (its fee was paid, nothing else happened): {reason}"
                    ),
                    Ok(TxStatus::Pending) | Err(_) => {}
                }
                if Instant::now() > deadline {
                    bail!("{hash} was not committed within 60 s (it may still be; `trellis query tx {hash}`)");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    })
}
