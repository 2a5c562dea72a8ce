//! A validator's re-derivation of `Invalid` evidence before it votes.
//!
//! Every `Invalid` verdict quotes something the miner committed to (`trellis_protocol::evidence`).
//! The chain checks the part that needs only the revealed work; the rest needs the miner's trail,
//! a small blob. Before voting for a block, a validator with a blob exchange fetches the trail of
//! every miner an `Invalid` verdict in the block accuses (waiting at most [`EVIDENCE_WAIT`] in
//! all) and re-derives the quote: a block carrying evidence the trail refutes is not voted for, so
//! a framing checker cannot put a made-up `Invalid` on chain. A proposer leaves such verdicts out
//! of its blocks and drops them from its pool. A trail no peer serves in time cannot refute
//! anything: the verdict stands and the escalation committee judges it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use trellis_contracts::rounds::worker_index;
use trellis_contracts::state::{self, keys, Job, RoundState};
use trellis_proto::{Block, Hash, SignedTx, Trail, TxKind, Verdict, VerdictOutcome};
use trellis_protocol::evidence::{rederive, FetchedTrail, Unfounded};
use trellis_protocol::TrailFrame;

use crate::p2p::exchange::BlobNet;
use crate::storage::blobs::{BlobKey, BlobKind};
use crate::storage::ledger::Ledger;

/// The longest a validator waits for the trails of one block's `Invalid` verdicts.
pub const EVIDENCE_WAIT: Duration = Duration::from_millis(1500);

/// Judgements kept before the cache is cleared (a verdict is judged again after that).
const REMEMBERED: usize = 4096;

/// What re-deriving a verdict's evidence found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    /// The trail refutes it.
    Refuted(Unfounded),
    /// It holds as far as the trail can tell, or it could not be judged (no trail in time, not
    /// an `Invalid` verdict, no revealed work to compare with: the chain refuses the last).
    Stands,
}

/// Re-derives `Invalid` evidence and remembers what it found, by transaction hash.
pub struct EvidenceDesk {
    net: BlobNet,
    judged: Mutex<HashMap<Hash, Judgement>>,
}

impl EvidenceDesk {
    pub fn new(net: BlobNet) -> Self {
        Self { net, judged: Mutex::default() }
    }

    /// What was found about `tx` already, if it was judged.
    pub fn judged(&self, tx: &Hash) -> Option<Judgement> {
        self.judged.lock().unwrap_or_else(|p| p.into_inner()).get(tx).cloned()
    }

    fn remember(&self, tx: Hash, judgement: Judgement) {
        let mut judged = self.judged.lock().unwrap_or_else(|p| p.into_inner());
        if judged.len() >= REMEMBERED {
            judged.clear();
        }
        judged.insert(tx, judgement);
    }

    /// The first transaction of `block` whose evidence the miner's trail refutes, with why.
    pub async fn refuted_in(&self, ledger: &Ledger, block: &Block) -> Option<(Hash, Unfounded)> {
        let deadline = tokio::time::Instant::now() + EVIDENCE_WAIT;
        for tx in block.txs.iter().filter(|tx| accuses(tx).is_some()) {
            if let Judgement::Refuted(why) = self.judge(ledger, tx, deadline).await {
                return Some((tx.hash(), why));
            }
        }
        None
    }

    /// Judges `tx` (cached), fetching the accused miner's trail until `deadline`.
    pub async fn judge(&self, ledger: &Ledger, tx: &SignedTx, deadline: tokio::time::Instant) -> Judgement {
        let hash = tx.hash();
        if let Some(judgement) = self.judged(&hash) {
            return judgement;
        }
        let Some(verdict) = accuses(tx) else { return Judgement::Stands };
        let Some((evidence, reveal, frame)) = what_to_compare(ledger, verdict) else { return Judgement::Stands };
        let trail_key = BlobKey::new(BlobKind::Trail, reveal.trail);
        let trail_bytes = match self.net.fetch_until(trail_key, deadline, frame.trail_bytes()).await {
            Ok(bytes) => bytes,
            Err(error) => {
                // Remembered: a proposer waiting for a trail that never comes would otherwise
                // hold an honest verdict back for good (and its checker would be slashed as silent).
                tracing::debug!(target: "node::evidence", tx = %hash, %error, "no trail to re-derive the evidence from; it stands");
                self.remember(hash, Judgement::Stands);
                return Judgement::Stands;
            }
        };
        let decoded = Trail::from_bytes(&trail_bytes);
        let fetched = match &decoded {
            Ok(trail) => FetchedTrail::Decoded(trail),
            Err(_) => FetchedTrail::Undecodable,
        };
        let judgement = match rederive(&evidence, &reveal, &frame, verdict.segment, fetched) {
            Ok(()) => Judgement::Stands,
            Err(why) => {
                tracing::warn!(target: "node::evidence", tx = %hash, checker = %tx.tx.sender_address(), miner = %verdict.miner, %why, "Invalid evidence refuted by the miner's trail");
                Judgement::Refuted(why)
            }
        };
        self.remember(hash, judgement.clone());
        judgement
    }
}

/// The verdict in `tx` if it says `Invalid`.
pub fn accuses(tx: &SignedTx) -> Option<&Verdict> {
    match &tx.tx.kind {
        TxKind::Verdict(verdict) if matches!(verdict.outcome, VerdictOutcome::Invalid(_)) => Some(verdict),
        _ => None,
    }
}

/// The evidence, the miner's revealed work and the frame its trail must fit, from the chain.
fn what_to_compare(
    ledger: &Ledger,
    verdict: &Verdict,
) -> Option<(trellis_proto::InvalidEvidence, trellis_proto::WorkReveal, TrailFrame)> {
    let VerdictOutcome::Invalid(evidence) = &verdict.outcome else { return None };
    let view = ledger.store().pending_state();
    let job: Job = state::read(&view, &keys::job(verdict.job)).ok()??;
    let round = RoundState::load_record(&view, verdict.job, verdict.round).ok()??;
    let reveal = round.commits.iter().find(|c| c.miner == verdict.miner)?.reveal.clone()?;
    let worker = u32::try_from(worker_index(&round, &verdict.miner)?).ok()?;
    let frame = TrailFrame::of(&job.spec, job.id, round.round, worker, reveal.final_checkpoint, reveal.steps);
    Some((evidence.clone(), reveal, frame))
}
