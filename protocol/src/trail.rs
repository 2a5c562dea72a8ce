//! The shape of an honest trail, from the chain's facts alone.
//!
//! Round `r` of a job with `H` inner steps and checkpoint interval `c` starts at optimizer step
//! `rH`. Its trail holds `n + 1` checkpoints, `n = ⌈H/c⌉`: checkpoint `i` after step
//! `rH + min(i·c, H)`, so every segment but possibly the last is exactly `c` steps and the last
//! ends at `rH + H`. It holds `H` losses (one per step) and, in a groth16 job, one proof per
//! segment. A checker builds the expected shape ([`TrailFrame`]) from the job's spec, the round
//! and the worker slot the chain recorded, and the final checkpoint the miner revealed, and
//! accepts a trail only if it matches field for field ([`check_trail`]): a miner cannot skip
//! steps between checkpoints, claim another slot's batches or leave losses out.

use thiserror::Error;
use trellis_proto::{CheckpointState, DeltaEncoding, Hash, JobId, JobSpec, Trail, TrailEntry, VerificationMode};

/// Whether a job's Δ is the negated drift of its final compact checkpoint: compact checkpoints,
/// an f32 Δ, replay verification. Then `Δ = −drift` exactly (a bf16 value in every f32), the
/// trail names the hash of the final checkpoint's other part ([`Trail::final_moments`]), and a
/// checker recomputes the final checkpoint's hash from the Δ and that part instead of
/// downloading the checkpoint (`docs/protocol.md` §4.4). A streaming job's Δ covers one fragment
/// and its drift spans several rounds, so it never is. In every other job the trail's
/// `final_moments` is zero and `Δ = θ_r − θ_final`.
pub fn delta_is_drift(spec: &JobSpec) -> bool {
    !crate::fragments::is_streaming(spec)
        && spec.verification.checkpoint_state == CheckpointState::Compact
        && spec.diloco.encoding == DeltaEncoding::F32
        && !matches!(spec.verification.mode, VerificationMode::Groth16 { .. })
}

/// Segments of a round: `⌈H/c⌉` (an interval of 0 counts as 1; specs with it are refused).
pub fn segment_count(inner_steps: u32, interval: u32) -> u32 {
    inner_steps.div_ceil(interval.max(1))
}

/// Checkpoints in an honest trail: the start, every `c` steps, and the end.
pub fn checkpoint_count(inner_steps: u32, interval: u32) -> u32 {
    1 + segment_count(inner_steps, interval)
}

/// Steps from the round's start to checkpoint `index`: `min(index·c, H)`.
pub fn checkpoint_offset(index: u32, inner_steps: u32, interval: u32) -> u64 {
    (u64::from(index) * u64::from(interval.max(1))).min(u64::from(inner_steps))
}

/// The optimizer step a round starts at: `rH` (the learning-rate schedule spans the job).
pub fn round_start_step(round: u32, inner_steps: u32) -> u64 {
    u64::from(round) * u64::from(inner_steps)
}

/// What the chain says a trail must be: which job, round and slot, its steps, and how it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrailFrame {
    pub job: JobId,
    pub round: u32,
    /// The worker's slot, as the chain recorded it.
    pub worker: u32,
    /// The job's H: where the round starts in the learning-rate schedule.
    pub inner_steps: u32,
    /// The steps the miner revealed it trained (`min_inner_steps..=inner_steps`): the trail's
    /// losses, segments and last checkpoint follow them.
    pub steps: u32,
    pub interval: u32,
    /// Proofs the trail must list: one per segment in a groth16 job, none otherwise.
    pub proofs: u32,
    /// The final checkpoint the miner revealed.
    pub final_checkpoint: Hash,
    /// Whether the job's Δ is its final checkpoint's drift ([`delta_is_drift`]): only then may
    /// the trail name a `final_moments` part.
    pub delta_is_drift: bool,
}

impl TrailFrame {
    /// The frame of `worker`'s trail for `round` of job `job` with `spec`, of a miner that
    /// revealed `steps` inner steps ending at `final_checkpoint`.
    pub fn of(spec: &JobSpec, job: JobId, round: u32, worker: u32, final_checkpoint: Hash, steps: u32) -> Self {
        let (inner_steps, interval) = (spec.diloco.inner_steps, spec.verification.checkpoint_interval);
        let proofs = match spec.verification.mode {
            VerificationMode::Groth16 { .. } => segment_count(steps, interval),
            _ => 0,
        };
        Self {
            job,
            round,
            worker,
            inner_steps,
            steps,
            interval,
            proofs,
            final_checkpoint,
            delta_is_drift: delta_is_drift(spec),
        }
    }

    pub fn segments(&self) -> u32 {
        segment_count(self.steps, self.interval)
    }

    pub fn checkpoints(&self) -> u32 {
        checkpoint_count(self.steps, self.interval)
    }

    /// The optimizer step after which checkpoint `index` is taken.
    pub fn step(&self, index: u32) -> u64 {
        round_start_step(self.round, self.inner_steps) + checkpoint_offset(index, self.steps, self.interval)
    }

    /// The size of the canonical encoding of every trail that fits this frame (its fields are
    /// fixed-size and their counts are the frame's): the most a reader of such a trail fetches.
    pub fn trail_bytes(&self) -> u64 {
        // job, round, worker, interval; three length-prefixed sequences; the final moments' hash.
        let fixed = 8 + 4 + 4 + 4 + 3 * 4 + 32;
        fixed + 40 * u64::from(self.checkpoints()) + 4 * u64::from(self.steps) + 32 * u64::from(self.proofs)
    }

    /// The steps segment `segment` runs (from checkpoint `segment` to `segment + 1`).
    pub fn steps_of(&self, segment: u32) -> u64 {
        checkpoint_offset(segment + 1, self.steps, self.interval)
            - checkpoint_offset(segment, self.steps, self.interval)
    }
}

/// Why a trail is not the one its round needs. Every case is the miner's doing.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TrailMismatch {
    #[error("the trail is for job {got}, not job {expected}")]
    Job { expected: JobId, got: JobId },
    #[error("the trail is for round {got}, not round {expected}")]
    Round { expected: u32, got: u32 },
    #[error("the trail is for worker slot {got}, the chain gave the miner slot {expected}")]
    Worker { expected: u32, got: u32 },
    #[error("the trail's checkpoint interval is {got}, the job's is {expected}")]
    Interval { expected: u32, got: u32 },
    #[error("the trail has {got} checkpoints, a round has {expected}")]
    Checkpoints { expected: u32, got: usize },
    #[error("checkpoint {index} is at step {got}, it must be at step {expected}")]
    Step { index: u32, expected: u64, got: u64 },
    #[error("the trail has {got} losses, a round has {expected} steps")]
    Losses { expected: u32, got: usize },
    #[error("the trail lists {got} proofs, the job needs {expected}")]
    Proofs { expected: u32, got: usize },
    #[error("the trail ends at checkpoint {got}, the miner revealed {expected}")]
    Final { expected: Hash, got: Hash },
    #[error("the trail names a part of its final checkpoint, which a job whose Δ is not the final drift never has")]
    FinalMoments,
}

/// Checks that `trail` is exactly the shape `frame` says, field by field.
pub fn check_trail(trail: &Trail, frame: &TrailFrame) -> Result<(), TrailMismatch> {
    if trail.job != frame.job {
        return Err(TrailMismatch::Job { expected: frame.job, got: trail.job });
    }
    if trail.round != frame.round {
        return Err(TrailMismatch::Round { expected: frame.round, got: trail.round });
    }
    if trail.worker != frame.worker {
        return Err(TrailMismatch::Worker { expected: frame.worker, got: trail.worker });
    }
    if trail.checkpoint_interval != frame.interval {
        return Err(TrailMismatch::Interval { expected: frame.interval, got: trail.checkpoint_interval });
    }
    if trail.checkpoints.len() != frame.checkpoints() as usize {
        return Err(TrailMismatch::Checkpoints { expected: frame.checkpoints(), got: trail.checkpoints.len() });
    }
    for (index, entry) in (0u32..).zip(&trail.checkpoints) {
        let expected = frame.step(index);
        if entry.step != expected {
            return Err(TrailMismatch::Step { index, expected, got: entry.step });
        }
    }
    if trail.losses.len() != frame.steps as usize {
        return Err(TrailMismatch::Losses { expected: frame.steps, got: trail.losses.len() });
    }
    if trail.proofs.len() != frame.proofs as usize {
        return Err(TrailMismatch::Proofs { expected: frame.proofs, got: trail.proofs.len() });
    }
    let last = trail.checkpoints.last().map_or(Hash::ZERO, |e| e.hash);
    if last != frame.final_checkpoint {
        return Err(TrailMismatch::Final { expected: frame.final_checkpoint, got: last });
    }
    // One encoding per trail: a part that no checker reads is zero.
    if !frame.delta_is_drift && trail.final_moments != Hash::ZERO {
        return Err(TrailMismatch::FinalMoments);
    }
    Ok(())
}

/// What a trail claims about one segment: where it starts and ends, how many steps lie between,
/// and the loss of each of those steps.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentClaim<'a> {
    pub segment: u32,
    pub start: TrailEntry,
    pub end: TrailEntry,
    pub steps: u64,
    pub losses: &'a [f32],
}

/// The claim of segment `segment` of a trail that passed [`check_trail`] against `frame`;
/// `None` when the segment does not exist.
pub fn segment_claim<'a>(trail: &'a Trail, frame: &TrailFrame, segment: u32) -> Option<SegmentClaim<'a>> {
    if segment >= frame.segments() {
        return None;
    }
    let (from, to) = (
        checkpoint_offset(segment, frame.steps, frame.interval),
        checkpoint_offset(segment + 1, frame.steps, frame.interval),
    );
    let losses = trail.losses.get(usize::try_from(from).ok()?..usize::try_from(to).ok()?)?;
    Some(SegmentClaim {
        segment,
        start: *trail.checkpoints.get(segment as usize)?,
        end: *trail.checkpoints.get(segment as usize + 1)?,
        steps: to - from,
        losses,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(inner_steps: u32, interval: u32) -> TrailFrame {
        TrailFrame {
            job: JobId(1),
            round: 2,
            worker: 1,
            inner_steps,
            steps: inner_steps,
            interval,
            proofs: 0,
            final_checkpoint: Hash([9; 32]),
            delta_is_drift: false,
        }
    }

    /// The trail an honest worker writes for `frame`.
    fn honest(frame: &TrailFrame) -> Trail {
        let mut checkpoints: Vec<TrailEntry> =
            (0..frame.checkpoints()).map(|i| TrailEntry { step: frame.step(i), hash: Hash([i as u8; 32]) }).collect();
        checkpoints.last_mut().unwrap().hash = frame.final_checkpoint;
        Trail {
            job: frame.job,
            round: frame.round,
            worker: frame.worker,
            checkpoint_interval: frame.interval,
            checkpoints,
            losses: (0..frame.steps).map(|i| 5.0 - i as f32 * 0.01).collect(),
            proofs: Vec::new(),
            final_moments: if frame.delta_is_drift { Hash([5; 32]) } else { Hash::ZERO },
        }
    }

    #[test]
    fn a_fitting_trail_is_exactly_as_long_as_its_frame_says() {
        use trellis_proto::Encode as _;
        for (inner_steps, interval, proofs) in [(10, 4, 0), (40, 10, 0), (1, 1, 0), (12, 3, 4)] {
            let f = TrailFrame { proofs, ..frame(inner_steps, interval) };
            let mut trail = honest(&f);
            trail.proofs = (0..proofs).map(|i| Hash([i as u8; 32])).collect();
            assert_eq!(trail.to_bytes().len() as u64, f.trail_bytes(), "H {inner_steps}, c {interval}");
        }
    }

    #[test]
    fn checkpoints_sit_at_fixed_steps_and_the_last_segment_may_be_short() {
        let f = frame(10, 4);
        assert_eq!(f.checkpoints(), 4);
        assert_eq!((0..4).map(|i| f.step(i)).collect::<Vec<_>>(), vec![20, 24, 28, 30]);
        assert_eq!((0..3).map(|s| f.steps_of(s)).collect::<Vec<_>>(), vec![4, 4, 2]);
        let even = frame(40, 10);
        assert_eq!((0..5).map(|i| even.step(i)).collect::<Vec<_>>(), vec![80, 90, 100, 110, 120]);
        assert_eq!(checkpoint_count(1, 1), 2);
    }

    #[test]
    fn an_honest_trail_fits_and_its_claims_cover_every_loss_once() {
        let f = frame(10, 4);
        let trail = honest(&f);
        check_trail(&trail, &f).unwrap();
        let claims: Vec<_> = (0..f.segments()).map(|s| segment_claim(&trail, &f, s).unwrap()).collect();
        assert_eq!(claims.iter().map(|c| c.losses.len() as u64).collect::<Vec<_>>(), vec![4, 4, 2]);
        assert_eq!(claims.iter().map(|c| c.steps).sum::<u64>(), 10);
        assert_eq!(claims[2].end.hash, f.final_checkpoint);
        assert_eq!(claims[1].losses, &trail.losses[4..8]);
        assert!(segment_claim(&trail, &f, 3).is_none());
    }

    #[test]
    fn a_straggler_trail_starts_at_the_rounds_step_and_ends_after_the_steps_it_revealed() {
        // H = 40, c = 10; the worker trained 17 steps: checkpoints at 80, 90, 97 (round 2 starts
        // at 2H = 80 whatever the steps), 17 losses, two segments of 10 and 7.
        let f = TrailFrame { steps: 17, ..frame(40, 10) };
        assert_eq!((0..f.checkpoints()).map(|i| f.step(i)).collect::<Vec<_>>(), vec![80, 90, 97]);
        assert_eq!((0..f.segments()).map(|s| f.steps_of(s)).collect::<Vec<_>>(), vec![10, 7]);
        let trail = honest(&f);
        check_trail(&trail, &f).unwrap();
        assert_eq!(segment_claim(&trail, &f, 1).unwrap().losses, &trail.losses[10..17]);
        // The same trail against the full H (a reveal claiming 40 steps) does not fit.
        assert_eq!(check_trail(&trail, &frame(40, 10)), Err(TrailMismatch::Checkpoints { expected: 5, got: 3 }));
    }

    /// The unit-gap attack: checkpoints one step apart (rH, rH+1, …, rH+n) so that only n of the
    /// H steps are trained, every one-step segment replays, and H losses are padded in.
    #[test]
    fn a_unit_gap_trail_is_refused() {
        let f = frame(40, 10);
        let mut trail = honest(&f);
        for (i, entry) in trail.checkpoints.iter_mut().enumerate() {
            entry.step = f.step(0) + i as u64;
        }
        assert_eq!(check_trail(&trail, &f), Err(TrailMismatch::Step { index: 1, expected: 90, got: 81 }));
    }

    #[test]
    fn every_field_the_chain_fixes_is_checked() {
        let f = frame(10, 4);
        type Edit = fn(&mut Trail);
        let cases: Vec<(Edit, TrailMismatch)> = vec![
            (|t| t.job = JobId(7), TrailMismatch::Job { expected: JobId(1), got: JobId(7) }),
            (|t| t.round = u32::MAX, TrailMismatch::Round { expected: 2, got: u32::MAX }),
            (|t| t.worker = 5, TrailMismatch::Worker { expected: 1, got: 5 }),
            (|t| t.checkpoint_interval = 1, TrailMismatch::Interval { expected: 4, got: 1 }),
            (
                |t| {
                    t.checkpoints.pop();
                },
                TrailMismatch::Checkpoints { expected: 4, got: 3 },
            ),
            (
                |t| {
                    t.losses.pop();
                },
                TrailMismatch::Losses { expected: 10, got: 9 },
            ),
            (|t| t.proofs.push(Hash::ZERO), TrailMismatch::Proofs { expected: 0, got: 1 }),
            (|t| t.checkpoints[3].hash = Hash::ZERO, TrailMismatch::Final { expected: Hash([9; 32]), got: Hash::ZERO }),
            (|t| t.final_moments = Hash([5; 32]), TrailMismatch::FinalMoments),
        ];
        for (edit, expected) in cases {
            let mut trail = honest(&f);
            edit(&mut trail);
            assert_eq!(check_trail(&trail, &f), Err(expected));
        }
        // A job whose Δ is the final drift: the trail names the final checkpoint's other part.
        let drift = TrailFrame { delta_is_drift: true, ..f };
        check_trail(&honest(&drift), &drift).unwrap();
    }

    #[test]
    fn only_a_compact_f32_replayed_job_sends_its_final_drift_as_the_delta() {
        use trellis_proto::{CheckpointState, DeltaEncoding, VerificationMode};
        let mut spec =
            crate::outer::tests::spec(trellis_proto::OuterOptimizer::Nesterov, trellis_proto::AggregationRule::Mean);
        spec.verification.checkpoint_state = CheckpointState::Compact;
        spec.diloco.encoding = DeltaEncoding::F32;
        assert!(delta_is_drift(&spec));
        for encoding in DeltaEncoding::ALL.into_iter().filter(|e| *e != DeltaEncoding::F32) {
            let mut lossy = spec.clone();
            lossy.diloco.encoding = encoding;
            assert!(!delta_is_drift(&lossy));
        }
        let mut full = spec.clone();
        full.verification.checkpoint_state = CheckpointState::Full;
        assert!(!delta_is_drift(&full));
        let mut zk = spec.clone();
        zk.verification.mode =
            VerificationMode::Groth16 { model: "zk".into(), proving_key: Hash([1; 32]), verifying_key: Hash([2; 32]) };
        assert!(!delta_is_drift(&zk));
    }
}
