//! The node's duties beyond consensus: the miner (train rounds, commit work, serve blobs) and
//! the validator's job duties (check sampled segments, compute and propose aggregates).
//!
//! Both are driven by committed blocks: after every commit a role looks at the chain state and
//! starts whatever work the state asks of it, each piece once. Heavy work (training, replay,
//! aggregation) runs on blocking threads; its result becomes a transaction signed with the
//! node's key and admitted to the node's own mempool (and forwarded to peers), exactly as if it
//! had come over RPC.

#[cfg(feature = "adversary")]
mod adversary;
pub mod aggregate;
pub mod checker;
pub mod jobdata;
pub mod miner;

/// The work that holds a model's worth of state (a replay, an aggregation) runs one piece at a
/// time in a node, so its peak memory is one piece's whatever a round assigns it; on a node's
/// cores the pieces would share the same threads anyway.
pub static HEAVY_WORK: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// A piece of role work that is started once (until forgotten): what it is, and the job,
/// round, miner or segment it is for. `Send…` pieces end in a transaction of ours; they are
/// forgotten together when our transactions are stuck, so that they are sent again.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Work {
    /// Checking whether this node can run a job (again every `miner::RECHECK_BLOCKS` blocks).
    CheckRunnable {
        job: JobId,
        period: u64,
    },
    /// Training a round into its stage.
    Train {
        job: JobId,
        round: u32,
    },
    /// Fetching another miner's trail (the `lying-peer` adversary).
    #[cfg(feature = "adversary")]
    Hoard {
        trail: Hash,
    },
    /// Computing a round's aggregate.
    ComputeAggregate {
        job: JobId,
        round: u32,
    },
    /// Fetching a revealed trail before the round's segments are sampled, for its checks.
    PrefetchTrail {
        job: JobId,
        round: u32,
        miner: Address,
    },
    /// Fetching a revealed Δ while the round is checked, for the aggregate.
    PrefetchDelta {
        job: JobId,
        round: u32,
        miner: Address,
    },
    /// Deleting what nobody needs of a job's rounds before `keep_from`.
    CollectGarbage {
        job: JobId,
        keep_from: u32,
    },
    SendJoin {
        job: JobId,
    },
    SendCommit {
        job: JobId,
        round: u32,
    },
    SendReveal {
        job: JobId,
        round: u32,
    },
    SendVerdict {
        job: JobId,
        round: u32,
        miner: Address,
        segment: u32,
    },
    SendAggregate {
        job: JobId,
        round: u32,
    },
}

impl Work {
    /// Whether this work ends in a transaction of ours.
    pub fn sends(&self) -> bool {
        matches!(
            self,
            Work::SendJoin { .. }
                | Work::SendCommit { .. }
                | Work::SendReveal { .. }
                | Work::SendVerdict { .. }
                | Work::SendAggregate { .. }
        )
    }

    /// The job this work is for, if any.
    pub fn job(&self) -> Option<JobId> {
        match self {
            #[cfg(feature = "adversary")]
            Work::Hoard { .. } => None,
            Work::CheckRunnable { job, .. }
            | Work::Train { job, .. }
            | Work::ComputeAggregate { job, .. }
            | Work::PrefetchTrail { job, .. }
            | Work::PrefetchDelta { job, .. }
            | Work::CollectGarbage { job, .. }
            | Work::SendJoin { job }
            | Work::SendCommit { job, .. }
            | Work::SendReveal { job, .. }
            | Work::SendVerdict { job, .. }
            | Work::SendAggregate { job, .. } => Some(*job),
        }
    }
}

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use tch::Device;
use trellis_contracts::state::{self, keys, Job, JobStatus, RoundState};
use trellis_contracts::KvStore;
use trellis_proto::{Address, Amount, Hash, Height, JobId, Keypair, Transaction, TxKind};
use trellis_trainer::data::Dataset;
use trellis_zk::{PreparedVerifier, ZkProvingKey, ZkVerifyingKey};

use crate::p2p::exchange::BlobNet;
use crate::shared::Shared;

/// Fee on the transactions roles send.
pub const ROLE_TX_FEE: u64 = 1;
/// Blocks our committed nonce may stand still, with our transactions pending, before we drop
/// them from our mempool and send anew (a transaction that can no longer be included would
/// otherwise hold back every later one).
const STUCK_BLOCKS: u64 = 15;
/// Blocks between gossiping our still-pending transactions again (see [`QueueStep::Rebroadcast`]).
const REBROADCAST_BLOCKS: u64 = 3;

/// What every role needs.
pub struct RoleContext {
    pub shared: Arc<Shared>,
    pub net: BlobNet,
    pub key: Arc<Keypair>,
    /// Scratch space for trails in progress.
    pub work_dir: PathBuf,
    pub device: Device,
    /// How this node misbehaves (`Honest` unless told otherwise; the field exists only in
    /// builds with the `adversary` feature).
    #[cfg(feature = "adversary")]
    pub behaviour: trellis_protocol::behaviour::Behaviour,
    /// Pieces of work started (so each is done once).
    started: Mutex<HashSet<Work>>,
    /// Own failures counted per piece of work (so a checker abstains after a few).
    failures: Mutex<HashMap<Work, u32>>,
    nonce_watch: Mutex<NonceWatch>,
    /// Jobs [`RoleContext::collect_garbage`] still visits (`None` until its first run).
    collect_watch: Mutex<Option<std::collections::BTreeSet<JobId>>>,
    datasets: Mutex<HashMap<Hash, Arc<Dataset>>>,
    /// groth16 jobs' keys, parsed once (a proving key takes seconds to parse, and a miner
    /// needs it every round; a checker needs the prepared verifier for every segment).
    proving_keys: Mutex<HashMap<Hash, Arc<ZkProvingKey>>>,
    verifiers: Mutex<HashMap<Hash, Arc<PreparedVerifier>>>,
}

/// Most pieces of work whose failures are counted at once (older counts are forgotten).
const MAX_TRACKED_FAILURES: usize = 4096;

/// How many parsed keys of each kind a node keeps (one per groth16 job it works on).
const CACHED_KEYS: usize = 4;

/// Looks `hash` up in `cache`, or fetches the blob, builds the value on a blocking thread and
/// keeps it (forgetting everything once `CACHED_KEYS` are held: keys of finished jobs).
async fn cached_key<T: Send + Sync + 'static>(
    net: &BlobNet,
    cache: &Mutex<HashMap<Hash, Arc<T>>>,
    hash: Hash,
    what: &'static str,
    build: fn(&[u8]) -> Result<T, trellis_zk::ZkError>,
) -> anyhow::Result<Arc<T>> {
    if let Some(found) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&hash) {
        return Ok(found.clone());
    }
    let deadline = tokio::time::Instant::now() + crate::roles::jobdata::FETCH_PATIENCE;
    let bytes = net
        .fetch_until(
            crate::storage::blobs::BlobKey::new(crate::storage::blobs::BlobKind::Data, hash),
            deadline,
            crate::roles::jobdata::MAX_ZK_KEY_BYTES,
        )
        .await
        .with_context(|| format!("fetching the job's {what}"))?;
    let value = tokio::task::spawn_blocking(move || build(&bytes))
        .await
        .context("the key parser stopped")?
        .with_context(|| format!("the job's {what}"))?;
    let value = Arc::new(value);
    let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
    if cache.len() >= CACHED_KEYS {
        cache.clear();
    }
    cache.insert(hash, value.clone());
    Ok(value)
}

/// Watches whether our own transactions get included, block by block.
#[derive(Debug, Default)]
struct NonceWatch {
    nonce: u64,
    since_height: Height,
    fee_bump: u64,
}

/// What to do about our pending transactions after a block ([`NonceWatch::observe`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QueueStep {
    /// Nothing pending, or our nonce moved, or not long enough stalled.
    Wait,
    /// Gossip them again: a batch lost on its first hop (no peer subscribed yet, a dropped
    /// connection) is otherwise never seen by a proposer, and a reveal window is shorter than
    /// [`STUCK_BLOCKS`]. (A peer that holds it already forwards no copy, so a loss further on is
    /// left to the peers' own relaying and, after [`STUCK_BLOCKS`], to sending anew.)
    Rebroadcast,
    /// Drop them and send the work anew at a higher fee.
    Unstick,
}

impl NonceWatch {
    /// Our committed next nonce and whether we have transactions pending, seen at `height`.
    fn observe(&mut self, committed: u64, pending: bool, height: Height) -> QueueStep {
        if committed != self.nonce || !pending {
            self.nonce = committed;
            self.since_height = height;
            return QueueStep::Wait;
        }
        let stalled = height.0.saturating_sub(self.since_height.0);
        if stalled >= STUCK_BLOCKS {
            self.fee_bump += 1;
            self.since_height = height;
            QueueStep::Unstick
        } else if stalled > 0 && stalled % REBROADCAST_BLOCKS == 0 {
            QueueStep::Rebroadcast
        } else {
            QueueStep::Wait
        }
    }
}

impl RoleContext {
    pub fn new(
        shared: Arc<Shared>,
        net: BlobNet,
        key: Arc<Keypair>,
        work_dir: PathBuf,
        device: Device,
        #[cfg(feature = "adversary")] behaviour: trellis_protocol::behaviour::Behaviour,
    ) -> Arc<Self> {
        Arc::new(Self {
            shared,
            net,
            key,
            work_dir,
            device,
            #[cfg(feature = "adversary")]
            behaviour,
            started: Mutex::default(),
            failures: Mutex::default(),
            nonce_watch: Mutex::default(),
            collect_watch: Mutex::default(),
            datasets: Mutex::default(),
            proving_keys: Mutex::default(),
            verifiers: Mutex::default(),
        })
    }

    pub fn height(&self) -> Height {
        self.shared.ledger.store().head().unwrap_or_default()
    }

    /// Every job the chain knows.
    pub fn jobs(&self) -> Vec<Job> {
        let view = self.shared.ledger.store().pending_state();
        view.scan_prefix(keys::JOB_PREFIX)
            .into_iter()
            .filter_map(|(key, bytes)| state::decode_record::<Job>(&key, &bytes).ok())
            .collect()
    }

    /// Jobs that are still running (through the chain's active index, so the cost does not grow
    /// with the jobs that have ended).
    pub fn active_jobs(&self) -> Vec<Job> {
        let view = self.shared.ledger.store().pending_state();
        state::active_jobs(&view).unwrap_or_else(|e| crate::storage::store::fatal(e))
    }

    /// The active jobs someone has committed work to ([`state::working_jobs`]): all a validator's
    /// duties look at, so that jobs nobody works in (a flood of them costs a token each) cost
    /// its blocks nothing.
    pub fn working_jobs(&self) -> Vec<Job> {
        let view = self.shared.ledger.store().pending_state();
        state::working_jobs(&view).unwrap_or_else(|e| crate::storage::store::fatal(e))
    }

    /// Deletes what this node keeps of rounds nobody needs any more: the round blobs (trails,
    /// checkpoints, Δ) and a miner's stages of every round before a job's current one, and all
    /// of them once the job has ended. Visits every job the first time, then the jobs it has
    /// something of (blobs listed for a round, a miner's files) and those someone works in, and
    /// forgets a job once it ended and was collected: jobs nobody works in (a flood of them costs
    /// a token each) cost it nothing.
    pub fn collect_garbage(&self) {
        let ids: Vec<JobId> = {
            let mut watched = self.collect_watch.lock().unwrap_or_else(|p| p.into_inner());
            let watched = watched.get_or_insert_with(|| self.jobs().iter().map(|job| job.id).collect());
            watched.extend(self.working_jobs().iter().map(|job| job.id));
            watched.extend(self.net.store().listed_jobs());
            watched.extend(miner::jobs_with_local_files(&self.work_dir));
            watched.iter().copied().collect()
        };
        for id in ids {
            let Some(job) = self.job(id) else { continue };
            let ended = job.status != JobStatus::Active;
            let keep_from = if ended { job.spec.diloco.rounds } else { job.current_round };
            if keep_from > 0 && self.start_once(Work::CollectGarbage { job: job.id, keep_from }) {
                let removed = self.net.store().collect_settled(job.id, keep_from);
                miner::collect_local(self, &job, keep_from);
                tracing::debug!(target: "node::roles", job = %job.id, removed, "collected blobs of settled rounds");
            }
            if ended {
                // Nothing of an ended job is started again: forget its pieces of work.
                self.started.lock().unwrap_or_else(|p| p.into_inner()).retain(|work| work.job() != Some(id));
                self.failures.lock().unwrap_or_else(|p| p.into_inner()).retain(|work, _| work.job() != Some(id));
                if let Some(watched) = self.collect_watch.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
                    watched.remove(&id);
                }
            }
        }
    }

    pub fn job(&self, id: JobId) -> Option<Job> {
        let view = self.shared.ledger.store().pending_state();
        state::read(&view, &keys::job(id)).ok().flatten()
    }

    pub fn round(&self, job: JobId, round: u32) -> Option<RoundState> {
        let view = self.shared.ledger.store().pending_state();
        RoundState::load(&view, job, round).ok().flatten()
    }

    /// A job's dataset, fetched and checked against its root once per node.
    pub async fn dataset(&self, root: Hash) -> anyhow::Result<Arc<Dataset>> {
        if let Some(found) = self.datasets.lock().unwrap_or_else(|p| p.into_inner()).get(&root) {
            return Ok(found.clone());
        }
        let dataset = crate::roles::jobdata::fetch_dataset(&self.net, root).await?;
        if dataset.root() != root {
            anyhow::bail!("the fetched dataset has root {}, not {root}", dataset.root());
        }
        let dataset = Arc::new(dataset);
        self.datasets.lock().unwrap_or_else(|p| p.into_inner()).insert(root, dataset.clone());
        Ok(dataset)
    }

    /// The parsed proving key of a groth16 job (blob `hash`).
    pub async fn proving_key(&self, hash: Hash) -> anyhow::Result<Arc<ZkProvingKey>> {
        cached_key(&self.net, &self.proving_keys, hash, "proving key", ZkProvingKey::from_bytes).await
    }

    /// The prepared verifier of a groth16 job's verifying key (blob `hash`).
    pub async fn verifier(&self, hash: Hash) -> anyhow::Result<Arc<PreparedVerifier>> {
        cached_key(&self.net, &self.verifiers, hash, "verifying key", |bytes| {
            ZkVerifyingKey::from_bytes(bytes).map(|key| PreparedVerifier::new(&key))
        })
        .await
    }

    /// Marks `work` started; false if it already was.
    pub fn start_once(&self, work: Work) -> bool {
        self.started.lock().unwrap_or_else(|p| p.into_inner()).insert(work)
    }

    /// Counts one more failure of `work`; returns how many there were so far.
    pub fn count_failure(&self, work: &Work) -> u32 {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if failures.len() >= MAX_TRACKED_FAILURES {
            failures.clear();
        }
        let count = failures.entry(work.clone()).or_default();
        *count += 1;
        *count
    }

    /// Forgets the started work and counted failures of every job not in `active` (jobs that
    /// ended without this node visiting them for garbage collection: one it only checked).
    pub fn forget_jobs_other_than(&self, active: &HashSet<JobId>) {
        let keep = |work: &Work| work.job().is_none_or(|job| active.contains(&job));
        self.started.lock().unwrap_or_else(|p| p.into_inner()).retain(|work| keep(work));
        self.failures.lock().unwrap_or_else(|p| p.into_inner()).retain(|work, _| keep(work));
    }

    /// Forgets `work`, so it may be tried again.
    pub fn forget(&self, work: &Work) {
        self.started.lock().unwrap_or_else(|p| p.into_inner()).remove(work);
    }

    /// Signs `kind` with the node key at the next free nonce, admits it to the mempool and
    /// forwards it to peers.
    pub fn submit(&self, kind: TxKind) -> anyhow::Result<Hash> {
        let fee = ROLE_TX_FEE + self.nonce_watch.lock().unwrap_or_else(|p| p.into_inner()).fee_bump;
        sign_and_admit(&self.shared, &self.key, kind, fee)
    }

    /// Looks after our transaction queue when our nonce has not moved for a while: every
    /// [`REBROADCAST_BLOCKS`] gossips our pending transactions again; after [`STUCK_BLOCKS`]
    /// drops them from our mempool, raises our fee for replacements, and forgets started work so
    /// it is sent again.
    pub fn watch_nonce(&self, height: Height) {
        let address = self.key.address();
        let committed = self.shared.ledger.next_nonce(&address);
        let pending = {
            let mempool = self.shared.mempool.lock().unwrap_or_else(|p| p.into_inner());
            mempool.next_free_nonce(&address, committed) > committed
        };
        let step = self.nonce_watch.lock().unwrap_or_else(|p| p.into_inner()).observe(committed, pending, height);
        match step {
            QueueStep::Wait => {}
            QueueStep::Rebroadcast => {
                let ours = self.shared.mempool.lock().unwrap_or_else(|p| p.into_inner()).pending_of(&address);
                let count = ours.len();
                for tx in ours {
                    let _ = self.shared.gossip.try_send(tx);
                }
                tracing::info!(target: "node::roles", count, nonce = committed, "our transactions are not included yet; gossiping them again");
            }
            QueueStep::Unstick => {
                let dropped = self.shared.mempool.lock().unwrap_or_else(|p| p.into_inner()).remove_sender(&address);
                self.started.lock().unwrap_or_else(|p| p.into_inner()).retain(|work| !work.sends());
                tracing::warn!(target: "node::roles", dropped, nonce = committed, "our transactions were not included; sending again");
            }
        }
    }
}

/// Signs `kind` with `key` at its next free nonce (after its pending transactions), admits it to
/// the node's mempool and forwards it to peers.
pub fn sign_and_admit(shared: &Shared, key: &Keypair, kind: TxKind, fee: u64) -> anyhow::Result<Hash> {
    let ledger = &shared.ledger;
    let address = key.address();
    let name = kind.name();
    let mut mempool = shared.mempool.lock().unwrap_or_else(|p| p.into_inner());
    let account = ledger.sender_account(&address);
    let nonce = mempool.next_free_nonce(&address, account.next_nonce);
    let signed = Transaction { sender: key.public_key(), nonce, fee: Amount(fee), kind }.sign(ledger.chain_id(), key);
    let hash = mempool
        .insert_verified(signed.clone(), account)
        .map_err(|e| anyhow::anyhow!("our own {name} transaction: {e}"))?;
    drop(mempool);
    let _ = shared.gossip.try_send(signed);
    tracing::info!(target: "node::roles", tx = %hash, kind = name, nonce, "sent");
    Ok(hash)
}

/// Runs a validator's job duties (segment checks and aggregates) until the node stops.
pub async fn run_validator(context: Arc<RoleContext>, book: Arc<aggregate::AggregateBook>) {
    drive(context, move |context, height| {
        checker::prefetch_trails(context);
        checker::tick(context, height);
        aggregate::prefetch(context);
        aggregate::tick(context, &book, height);
    })
    .await;
}

/// Runs `tick` after every committed block until the node stops.
pub async fn drive<F>(context: Arc<RoleContext>, mut tick: F)
where
    F: FnMut(&Arc<RoleContext>, Height) + Send,
{
    let mut events = context.shared.events.subscribe();
    tick(&context, context.height());
    loop {
        match events.recv().await {
            Ok(crate::shared::NodeEvent::Committed { block, .. }) => {
                let height = block.header.height;
                context.watch_nonce(height);
                tick(&context, height);
                context.collect_garbage();
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => tick(&context, context.height()),
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A transaction of ours pending while our nonce stands still is gossiped again every few
    /// blocks (a reveal has ten blocks to land), and dropped and sent anew after
    /// [`STUCK_BLOCKS`]; a nonce that moves or an empty queue starts the count over.
    #[test]
    fn a_pending_transaction_is_gossiped_again_every_few_blocks_then_sent_anew() {
        let mut watch = NonceWatch::default();
        let steps: Vec<QueueStep> = (1..=31).map(|h| watch.observe(4, true, Height(h))).collect();
        let at = |wanted: QueueStep| -> Vec<u64> {
            steps.iter().zip(1u64..).filter(|(s, _)| **s == wanted).map(|(_, h)| h).collect()
        };
        // Height 1 starts the watch on nonce 4 (from 0); the first stalled block is 2.
        assert_eq!(at(QueueStep::Rebroadcast), vec![4, 7, 10, 13, 19, 22, 25, 28]);
        assert_eq!(at(QueueStep::Unstick), vec![16, 31]);
        assert_eq!(watch.fee_bump, 2, "each unsticking raises our fee");
        assert!(REBROADCAST_BLOCKS * 3 <= trellis_contracts::params::Params::default().reveal_blocks);

        let mut watch = NonceWatch::default();
        assert_eq!(watch.observe(4, true, Height(10)), QueueStep::Wait);
        assert_eq!(watch.observe(4, true, Height(13)), QueueStep::Rebroadcast);
        assert_eq!(watch.observe(5, true, Height(14)), QueueStep::Wait, "the nonce moved");
        assert_eq!(watch.observe(5, true, Height(16)), QueueStep::Wait);
        assert_eq!(watch.observe(5, false, Height(17)), QueueStep::Wait, "nothing pending");
        assert_eq!(watch.observe(5, true, Height(19)), QueueStep::Wait);
        assert_eq!(watch.observe(5, true, Height(20)), QueueStep::Rebroadcast, "three blocks after the queue filled");
        assert_eq!(watch.fee_bump, 0);
    }
}
