//! The node's JSON-RPC interface as one typed trait, [`TrellisRpc`]: the server implements it
//! (`TrellisRpcServer`, in [`super`]), and the CLI, the devnet and the tests call it through the
//! generated `TrellisRpcClient`, so a method's name, parameters and answer are written once.
//!
//! Every answer is a type here (or a chain record from `trellis-contracts`); their JSON is the
//! one `docs/rpc.md` documents. Method names are the wire names; the Rust names say what a call
//! returns.

use jsonrpsee::core::SubscriptionResult;
use jsonrpsee::proc_macros::rpc;
use jsonrpsee::types::ErrorObjectOwned;
use serde::{Deserialize, Serialize};
use trellis_contracts::state::{Job, JobStatus, RoundState, RoundSummary, Stake};
use trellis_contracts::Event;
use trellis_proto::{Address, Amount, BlockHeader, Hash, JobId, PublicKey, SignedTx};

/// A method's result: its answer, or a JSON-RPC error (codes in [`super::codes`]).
pub type RpcResult<T> = Result<T, ErrorObjectOwned>;

/// The head as RPC shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadInfo {
    pub chain_id: String,
    pub height: u64,
    pub hash: Hash,
    pub time_ms: u64,
    pub state_root: Hash,
    pub txs: usize,
}

/// A committed block: its hash, header, and every transaction with its hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockView {
    pub hash: Hash,
    pub header: BlockHeader,
    pub txs: Vec<TxInBlock>,
}

/// A transaction as a block holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TxInBlock {
    pub hash: Hash,
    pub tx: SignedTx,
}

/// A transaction the mempool admitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Submitted {
    pub hash: Hash,
}

/// How many of a gossiped batch the peer admitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GossipReceipt {
    pub admitted: usize,
}

/// Where a transaction is: committed (its action applied), included but failed (its fee paid,
/// its action refused, with the reason), or still pending in the mempool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum TxStatus {
    Committed { height: u64, index: u32, tx: SignedTx },
    Failed { reason: String, height: u64, index: u32, tx: SignedTx },
    Pending,
}

/// An account: balance, nonces (committed, and the next one free in the mempool) and stakes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountView {
    pub address: Address,
    pub balance: Amount,
    pub nonce: u64,
    /// The nonce a new transaction from this account should carry (after its pending ones).
    pub pending_nonce: u64,
    pub validator_stake: Option<Stake>,
    pub miner_stake: Option<Stake>,
}

/// The validator set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidatorsView {
    pub validators: Vec<ValidatorView>,
    pub total_power: u64,
}

/// One validator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidatorView {
    pub address: Address,
    pub public_key: PublicKey,
    pub power: u64,
    /// Whether it may propose: false once the chain jailed it (it votes until the epoch ends).
    pub proposes: bool,
}

/// A job in `job_list`: enough to pick one and ask `job_get`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobListing {
    pub id: JobId,
    pub submitter: Address,
    pub status: JobStatus,
    pub current_round: u32,
    pub escrow: Amount,
}

/// A committed block as `chain_subscribeHeads` announces it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewHead {
    pub height: u64,
    pub hash: Hash,
    pub time_ms: u64,
    pub txs: usize,
}

/// A job's event as `job_subscribeEvents` announces it, with the height of its block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    pub height: u64,
    pub event: Event,
}

/// The node's JSON-RPC methods (`docs/rpc.md`). Every method but `mempool_gossip` draws on the
/// caller's public request budget; `mempool_gossip` on the peer's gossip budget.
#[rpc(server, client)]
pub trait TrellisRpc {
    /// The committed head.
    #[method(name = "chain_getHead", with_extensions)]
    fn head(&self) -> RpcResult<HeadInfo>;

    /// The committed block at `height`.
    #[method(name = "chain_getBlock", with_extensions)]
    fn block(&self, height: u64) -> RpcResult<BlockView>;

    /// Admits a hex-encoded signed transaction to the mempool (and gossips it to peers).
    #[method(name = "tx_submit", with_extensions)]
    fn submit(&self, tx_hex: String) -> RpcResult<Submitted>;

    /// A peer's batch of hex-encoded signed transactions (at most `p2p::gossip::MAX_BATCH`).
    #[method(name = "mempool_gossip", with_extensions)]
    fn gossip(&self, txs_hex: Vec<String>) -> RpcResult<GossipReceipt>;

    /// Where transaction `hash` (64 hex digits) is.
    #[method(name = "tx_get", with_extensions)]
    fn tx(&self, hash: String) -> RpcResult<TxStatus>;

    /// The account at `address` (40 hex digits), as the mempool's pending state sees it.
    #[method(name = "state_getAccount", with_extensions)]
    fn account(&self, address: String) -> RpcResult<AccountView>;

    /// The validator set.
    #[method(name = "state_getValidators", with_extensions)]
    fn validators(&self) -> RpcResult<ValidatorsView>;

    /// Every job the chain holds.
    #[method(name = "job_list", with_extensions)]
    fn jobs(&self) -> RpcResult<Vec<JobListing>>;

    /// Job `id`.
    #[method(name = "job_get", with_extensions)]
    fn job(&self, id: u64) -> RpcResult<Job>;

    /// Round `round` of job `id`, while it is held in full (a settled round is pruned to its
    /// summary some blocks later: ask `job_getRoundSummary` then).
    #[method(name = "job_getRound", with_extensions)]
    fn round(&self, id: u64, round: u32) -> RpcResult<RoundState>;

    /// The summary of round `round` of job `id` (of a round held in full too).
    #[method(name = "job_getRoundSummary", with_extensions)]
    fn round_summary(&self, id: u64, round: u32) -> RpcResult<RoundSummary>;

    /// Every committed block, as it commits.
    #[subscription(name = "chain_subscribeHeads" => "chain_head", unsubscribe = "chain_unsubscribeHeads", item = NewHead)]
    async fn subscribe_heads(&self) -> SubscriptionResult;

    /// Every job event (of job `job` only, if given), as its block commits.
    #[subscription(name = "job_subscribeEvents" => "job_event", unsubscribe = "job_unsubscribeEvents", item = JobEvent)]
    async fn subscribe_job_events(&self, job: Option<u64>) -> SubscriptionResult;
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use trellis_proto::{Amount, Keypair, Transaction, TxKind};

    use super::*;

    /// `value` serialises to `expected` (the JSON `docs/rpc.md` shows) and reads back as itself.
    fn wire<T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(
        value: T,
        expected: serde_json::Value,
    ) {
        let json = serde_json::to_value(&value).unwrap();
        assert_eq!(json, expected);
        assert_eq!(serde_json::from_value::<T>(json).unwrap(), value);
    }

    #[test]
    fn answers_are_the_json_docs_rpc_md_shows_and_read_back() {
        let key = Keypair::from_seed([3; 32]);
        let tx = Transaction {
            sender: key.public_key(),
            nonce: 0,
            fee: Amount(10),
            kind: TxKind::Transfer { to: Address([1; 20]), amount: Amount(5) },
        }
        .sign("rpc-test", &key);
        let tx_json = serde_json::to_value(&tx).unwrap();
        wire(TxStatus::Pending, json!({ "status": "pending" }));
        wire(
            TxStatus::Committed { height: 17, index: 0, tx: tx.clone() },
            json!({ "status": "committed", "height": 17, "index": 0, "tx": tx_json }),
        );
        wire(
            TxStatus::Failed { reason: "insufficient balance".into(), height: 3, index: 1, tx },
            json!({ "status": "failed", "reason": "insufficient balance", "height": 3, "index": 1, "tx": tx_json }),
        );
        let address = key.address();
        wire(
            AccountView {
                address,
                balance: Amount(130),
                nonce: 0,
                pending_nonce: 1,
                validator_stake: Some(Stake {
                    key: key.public_key(),
                    bonded: Amount(100),
                    unbonding: Vec::new(),
                    jailed: false,
                }),
                miner_stake: None,
            },
            json!({
                "address": address, "balance": 130, "nonce": 0, "pending_nonce": 1, "miner_stake": null,
                "validator_stake": { "key": key.public_key(), "bonded": 100, "unbonding": [], "jailed": false },
            }),
        );
        wire(
            ValidatorsView {
                validators: vec![ValidatorView { address, public_key: key.public_key(), power: 100, proposes: true }],
                total_power: 100,
            },
            json!({ "total_power": 100, "validators": [{ "address": address, "public_key": key.public_key(), "power": 100, "proposes": true }] }),
        );
        wire(GossipReceipt { admitted: 0 }, json!({ "admitted": 0 }));
        wire(
            JobListing {
                id: JobId(0),
                submitter: address,
                status: JobStatus::Active,
                current_round: 2,
                escrow: Amount(9),
            },
            json!({ "id": 0, "submitter": address, "status": "active", "current_round": 2, "escrow": 9 }),
        );
    }
}
