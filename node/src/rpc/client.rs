//! How the command line reaches a node: the typed client of [`super::api::TrellisRpc`], the
//! arguments that name a node and a signer, errors explained in the user's terms, and
//! sign-and-submit (used by `trellis tx`, `job`, `stake` and the devnet's demo job).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use jsonrpsee::http_client::{HttpClient, HttpClientBuilder};
use trellis_proto::{Amount, Encode, Keypair, Role, Transaction, TxKind};

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

/// A runtime for one command's calls.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
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

fn load_signer(args: &SignerArgs) -> anyhow::Result<Keypair> {
    match (&args.key, &args.home) {
        (Some(path), _) => crate::home::read_key(path),
        (None, Some(home)) => crate::home::Home::new(home).load_key(),
        (None, None) => bail!("say who signs: --key FILE (from `trellis keys new`) or --home DIR"),
    }
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
