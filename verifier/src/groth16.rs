//! Jobs in `groth16` verification mode (`docs/zk.md` §10): what their miners train and prove,
//! and what their checkers verify instead of re-executing. Pure functions over the job's spec,
//! its dataset and keys, so the node's roles and any other checker run the same rules; every
//! failure is a [`Groth16JobError`] or, for a checked segment, a verdict with its blame.
//!
//! Such a job trains a `trellis-zk` model (softmax regression or a one-hidden-layer MLP in
//! Q15.16 fixed point) with SGD. Everything else is the protocol of every job: the batch
//! schedule, trails of checkpoint hashes every c steps, Δ = θ_r − θ_final committed and
//! aggregated in f32, the outer step. What differs:
//!
//! - **Examples** come from the schedule's byte windows (`trellis_zk::job::examples`). A pure
//!   function of (job seed, round, worker, step), like every batch.
//! - **The global model** is kept in f32 as for any job; a round starts from it rounded to the
//!   nearest Q15.16 value (`trellis_zk::job::to_fixed`). Initial weights are
//!   `trellis_zk::job::initial_weights`.
//! - **Checkpoints** are `trellis_zk::io::encode_weights` of the weights (no optimizer state:
//!   SGD has none), hashed like every checkpoint.
//! - **Each segment carries a proof** (`Trail::proofs`, blob hashes) that c SGD steps take the
//!   segment's start checkpoint to its end checkpoint on the scheduled batches. A checker
//!   recomputes the three commitments from the trail's checkpoints and the schedule and checks
//!   the proof against them in milliseconds; any failure is an `Invalid` verdict
//!   (`ProofRejected`), which the contracts punish like a failed re-execution.
//!
//! The losses in a groth16 trail are for people to read; nothing checks them.

use trellis_proto::{
    Hash, InvalidReason, JobFaultReason, JobId, JobSpec, Trail, TrailEntry, VerdictOutcome, VerificationMode,
};
use trellis_protocol::Blame;
use trellis_trainer::checkpoint::checkpoint_hash;
use trellis_trainer::data::{DataError, Dataset};
use trellis_zk::fixed::ONE;
use trellis_zk::job::{examples, from_fixed, to_fixed};
use trellis_zk::model::logits;
use trellis_zk::model::{ShapeError, SpecError, TrainError};
use trellis_zk::{
    io, sgd_step, Batch, ModelSpec, PreparedVerifier, PublicInputs, Weights, ZkError, ZkProof, ZkProvingKey,
};

/// Why a groth16 job cannot be worked with as submitted, or a round of it cannot be trained.
#[derive(Debug, thiserror::Error)]
pub enum Groth16JobError {
    #[error("the job's zk model '{text}': {source}")]
    Model { text: String, source: SpecError },
    #[error("the zk model's batch is {model}, the job's batch_size {job}")]
    BatchSize { model: usize, job: u32 },
    #[error("the zk model has {model} inputs, the job's sequence_length is {job}")]
    Inputs { model: usize, job: u32 },
    #[error("the zk model has {0} classes; byte labels allow at most 256")]
    Classes(usize),
    #[error("the proving key is for {key_model} × {key_steps} steps, the job needs {job_model} × {job_steps}")]
    KeyForAnotherJob { key_model: ModelSpec, key_steps: u32, job_model: ModelSpec, job_steps: u32 },
    #[error("the job's verifying key is not the one of its proving key: checkers would reject every honest proof")]
    ForeignVerifyingKey,
    #[error("the global model does not fit the zk model: {0}")]
    GlobalModel(#[from] ShapeError),
    #[error("the batch schedule: {0}")]
    Schedule(#[from] DataError),
    #[error("a fixed-point SGD step overflowed: {0}")]
    Overflow(#[from] TrainError),
    #[error("proving a segment: {0}")]
    Prove(#[source] ZkError),
    #[error("a checkpoint of the round: {0}")]
    Checkpoint(#[source] ZkError),
    #[error("worker slot {0} is out of range")]
    WorkerSlot(usize),
}

/// A groth16 job's model and the blob hashes of its keys.
#[derive(Debug, Clone)]
pub struct ZkJob {
    pub model: ModelSpec,
    pub proving_key: Hash,
    pub verifying_key: Hash,
}

impl ZkJob {
    /// The zk side of `spec`: `None` for a job in another mode, an error when the model text
    /// does not parse or does not fit the job's batch shape.
    pub fn of(spec: &JobSpec) -> Result<Option<ZkJob>, Groth16JobError> {
        let VerificationMode::Groth16 { model, proving_key, verifying_key } = &spec.verification.mode else {
            return Ok(None);
        };
        let model: ModelSpec =
            model.parse().map_err(|source| Groth16JobError::Model { text: model.clone(), source })?;
        let d = &spec.diloco;
        if model.batch() != d.batch_size as usize {
            return Err(Groth16JobError::BatchSize { model: model.batch(), job: d.batch_size });
        }
        if model.inputs() != d.sequence_length as usize {
            return Err(Groth16JobError::Inputs { model: model.inputs(), job: d.sequence_length });
        }
        if model.classes() > 256 {
            return Err(Groth16JobError::Classes(model.classes()));
        }
        Ok(Some(ZkJob { model, proving_key: *proving_key, verifying_key: *verifying_key }))
    }

    /// Steps per segment, which every proof covers.
    pub fn segment_steps(spec: &JobSpec) -> u64 {
        u64::from(spec.verification.checkpoint_interval)
    }

    /// The batch of `step` (0-based within the round) of `worker` in `round`.
    pub fn batch(
        &self,
        spec: &JobSpec,
        dataset: &Dataset,
        shards: &[usize],
        round: u32,
        worker: usize,
        step: u64,
    ) -> Batch {
        let schedule = trellis_trainer::job::schedule(spec);
        let absolute = trellis_trainer::job::round_start_step(spec, round) + step;
        let (inputs, targets) = schedule.batch(dataset, shards, u64::from(round), worker, absolute);
        examples(&self.model, &inputs, &targets)
    }

    /// The weights a round starts from: θ_r rounded to Q15.16.
    pub fn start_weights(&self, global: &[f32]) -> Result<Weights, Groth16JobError> {
        Ok(Weights::from_flat(&self.model, &to_fixed(global))?)
    }

    /// The checkpoint every honest trail of a round starts with.
    pub fn start_checkpoint(&self, global: &[f32]) -> Result<Vec<u8>, Groth16JobError> {
        Ok(io::encode_weights(&self.start_weights(global)?))
    }

    /// The hash of [`ZkJob::start_checkpoint`].
    pub fn start_checkpoint_hash(&self, global: &[f32]) -> Result<Hash, Groth16JobError> {
        Ok(checkpoint_hash(&self.start_checkpoint(global)?))
    }
}

/// Whether a groth16 job's keys can be worked with: the proving key is for the job's model and
/// segment length, and the verifying key is that proving key's own. A job whose verifying key
/// belongs to another setup (or another step count) would reject every honest proof, so a miner
/// checks this before joining.
pub fn check_keys(
    spec: &JobSpec,
    job: &ZkJob,
    proving_key: &ZkProvingKey,
    verifying_key: &[u8],
) -> Result<(), Groth16JobError> {
    key_fits(spec, job, proving_key)?;
    if verifying_key != proving_key.verifying_key().to_bytes() {
        return Err(Groth16JobError::ForeignVerifyingKey);
    }
    Ok(())
}

/// Whether `proving_key` is for the job's model and segment length.
fn key_fits(spec: &JobSpec, job: &ZkJob, proving_key: &ZkProvingKey) -> Result<(), Groth16JobError> {
    if proving_key.spec() != &job.model || u64::from(proving_key.steps()) != ZkJob::segment_steps(spec) {
        return Err(Groth16JobError::KeyForAnotherJob {
            key_model: proving_key.spec().clone(),
            key_steps: proving_key.steps(),
            job_model: job.model.clone(),
            job_steps: spec.verification.checkpoint_interval,
        });
    }
    Ok(())
}

/// Mean cross-entropy of `weights` on `batch`, in nats (for the trail's losses only).
fn batch_loss(model: &ModelSpec, weights: &Weights, batch: &Batch) -> f32 {
    let mut total = 0.0f64;
    for example in &batch.examples {
        let Ok(logits) = logits(model, weights, &example.features) else { return f32::NAN };
        let values: Vec<f64> = logits.iter().map(|l| f64::from(*l) / ONE as f64).collect();
        let max = values.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let log_sum = max + values.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
        total += log_sum - values.get(example.label as usize).copied().unwrap_or(max);
    }
    (total / batch.examples.len().max(1) as f64) as f32
}

/// Mean cross-entropy (nats) of the global weights `global` on `count` fixed validation
/// windows of `dataset`: the figure the devnet prints per round.
pub fn validation_loss(
    model: &ModelSpec,
    global: &[f32],
    dataset: &Dataset,
    count: usize,
) -> Result<f64, Groth16JobError> {
    let weights = Weights::from_flat(model, &to_fixed(global))?;
    let (inputs, targets) = trellis_trainer::data::validation_windows(dataset, model.inputs(), count);
    Ok(f64::from(batch_loss(model, &weights, &examples(model, &inputs, &targets))))
}

/// What a miner publishes for one round of a groth16 job.
pub struct ZkRound {
    /// The trail, with `proofs` holding the blob hashes of `proofs`.
    pub trail: Trail,
    /// Checkpoint bytes, in trail order.
    pub checkpoints: Vec<Vec<u8>>,
    /// Proof bytes, one per segment.
    pub proofs: Vec<Vec<u8>>,
    /// θ_final in f32, for Δ.
    pub final_weights: Vec<f32>,
}

/// How a miner's round comes out: honestly, or (`fake_checkpoints`, the `fake-trail` adversary;
/// only in tests and builds with the `adversary` feature) with checkpoints that were never
/// computed (the start weights plus growing noise) next to proofs of the real steps.
pub struct ZkTraining<'a> {
    pub job_id: JobId,
    pub spec: &'a JobSpec,
    pub job: &'a ZkJob,
    pub proving_key: &'a ZkProvingKey,
    pub dataset: &'a Dataset,
    pub round: u32,
    pub worker: usize,
    #[cfg(any(test, feature = "adversary"))]
    pub fake_checkpoints: bool,
}

impl ZkTraining<'_> {
    /// Whether this round records checkpoints it never computed.
    fn fakes(&self) -> bool {
        #[cfg(any(test, feature = "adversary"))]
        return self.fake_checkpoints;
        #[cfg(not(any(test, feature = "adversary")))]
        false
    }

    /// Trains the round's H steps and proves each segment of c steps.
    pub fn run(&self, global: &[f32]) -> Result<ZkRound, Groth16JobError> {
        let spec = self.spec;
        key_fits(spec, self.job, self.proving_key)?;
        let shards =
            trellis_trainer::job::schedule(spec).shards_of(self.dataset, u64::from(self.round), self.worker)?;
        let steps = u64::from(spec.diloco.inner_steps);
        let interval = ZkJob::segment_steps(spec);
        let start_step = trellis_trainer::job::round_start_step(spec, self.round);
        let mut weights = self.job.start_weights(global)?;
        let mut checkpoints = vec![io::encode_weights(&weights)];
        let mut entries = vec![TrailEntry { step: start_step, hash: checkpoint_hash(&checkpoints[0]) }];
        let (mut losses, mut proofs, mut proof_hashes) = (Vec::new(), Vec::new(), Vec::new());
        for segment in 0..steps / interval {
            let batches: Vec<Batch> = (segment * interval..(segment + 1) * interval)
                .map(|step| self.job.batch(spec, self.dataset, &shards, self.round, self.worker, step))
                .collect();
            let mut stepped = weights.clone();
            for batch in &batches {
                losses.push(batch_loss(&self.job.model, &stepped, batch));
                stepped = sgd_step(&self.job.model, &stepped, batch)?;
            }
            let proven = trellis_zk::prove(self.proving_key, &weights, &batches).map_err(Groth16JobError::Prove)?;
            debug_assert_eq!(proven.weights_after, stepped);
            weights = proven.weights_after;
            let bytes = proven.proof.to_bytes();
            proof_hashes.push(trellis_proto::blobwire::data_hash(&bytes));
            proofs.push(bytes);
            #[cfg(any(test, feature = "adversary"))]
            let recorded = if self.fakes() {
                noisy(&checkpoints[0], &self.job.model, segment)?
            } else {
                io::encode_weights(&weights)
            };
            #[cfg(not(any(test, feature = "adversary")))]
            let recorded = io::encode_weights(&weights);
            entries.push(TrailEntry { step: start_step + (segment + 1) * interval, hash: checkpoint_hash(&recorded) });
            checkpoints.push(recorded);
        }
        let final_weights = match checkpoints.last() {
            Some(bytes) if self.fakes() => {
                from_fixed(&io::decode_weights(&self.job.model, bytes).map_err(Groth16JobError::Checkpoint)?.flatten())
            }
            _ => from_fixed(&weights.flatten()),
        };
        let trail = Trail {
            job: self.job_id,
            round: self.round,
            worker: u32::try_from(self.worker).map_err(|_| Groth16JobError::WorkerSlot(self.worker))?,
            checkpoint_interval: spec.verification.checkpoint_interval,
            checkpoints: entries,
            losses,
            proofs: proof_hashes,
            final_moments: Hash::ZERO,
        };
        Ok(ZkRound { trail, checkpoints, proofs, final_weights })
    }
}

/// The start checkpoint's weights plus a deterministic perturbation growing with `segment`.
#[cfg(any(test, feature = "adversary"))]
fn noisy(start: &[u8], model: &ModelSpec, segment: u64) -> Result<Vec<u8>, Groth16JobError> {
    let mut values = io::decode_weights(model, start).map_err(Groth16JobError::Checkpoint)?.flatten();
    for (index, value) in values.iter_mut().enumerate() {
        let sign = if (index as u64 + segment) % 2 == 0 { 1 } else { -1 };
        *value = value.saturating_add(sign * 64 * (segment as i32 + 1));
    }
    Ok(io::encode_weights(&Weights::from_flat(model, &values)?))
}

/// What a checker holds for one assigned segment of a groth16 trail.
pub struct SegmentEvidence<'a> {
    pub start_checkpoint: &'a [u8],
    pub end_checkpoint: &'a [u8],
    pub proof: &'a [u8],
}

fn invalid(reason: InvalidReason, expected: Hash) -> VerdictOutcome {
    Blame::miner(reason, expected, Hash::ZERO).outcome()
}

/// The verdict on segment `segment` of a groth16 trail of `worker` in `round` (both as the chain
/// recorded them): the proof must verify against the commitments to the trail's start and end
/// checkpoints of the segment and to the batches the schedule gives this worker. The trail's
/// shape (length, steps, proofs, final checkpoint) and first link are checked by the caller, as
/// for every mode. Every failure has its blame: the miner's data, or the job's (a dataset that
/// cannot serve the schedule).
#[allow(clippy::too_many_arguments)]
pub fn check_segment(
    spec: &JobSpec,
    job: &ZkJob,
    verifier: &PreparedVerifier,
    dataset: &Dataset,
    trail: &Trail,
    (round, worker): (u32, usize),
    segment: usize,
    evidence: &SegmentEvidence<'_>,
) -> VerdictOutcome {
    let interval = ZkJob::segment_steps(spec);
    let segments = (u64::from(spec.diloco.inner_steps) / interval) as usize;
    if trail.proofs.len() != segments || segment >= segments || trail.checkpoints.len() != segments + 1 {
        return invalid(InvalidReason::TrailMismatch, trail.hash());
    }
    let (start_hash, end_hash) = (trail.checkpoints[segment].hash, trail.checkpoints[segment + 1].hash);
    if checkpoint_hash(evidence.start_checkpoint) != start_hash || checkpoint_hash(evidence.end_checkpoint) != end_hash
    {
        return invalid(InvalidReason::MalformedBlob, end_hash);
    }
    let (Ok(before), Ok(after)) = (
        io::decode_weights(&job.model, evidence.start_checkpoint),
        io::decode_weights(&job.model, evidence.end_checkpoint),
    ) else {
        return invalid(InvalidReason::MalformedBlob, end_hash);
    };
    let Ok(proof) = ZkProof::from_bytes(evidence.proof) else {
        return invalid(InvalidReason::ProofRejected, trail.proofs[segment]);
    };
    let Ok(shards) = trellis_trainer::job::schedule(spec).shards_of(dataset, u64::from(round), worker) else {
        return Blame::Job(JobFaultReason::SpecUnusable).outcome();
    };
    let first = segment as u64 * interval;
    let batches: Vec<Batch> =
        (first..first + interval).map(|step| job.batch(spec, dataset, &shards, round, worker, step)).collect();
    let public_inputs = PublicInputs::of_run(&job.model, &before, &after, &batches);
    match verifier.verify(&public_inputs, &proof) {
        Ok(()) => VerdictOutcome::Valid,
        Err(_) => invalid(InvalidReason::ProofRejected, trail.proofs[segment]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use trellis_proto::{Amount, DeltaEncoding, DilocoParams, ModelConfig, OuterOptimizer, VerificationParams};

    const MODEL: &str = "mlp:8x4x4,batch=2,lr=0.5";

    fn spec() -> JobSpec {
        JobSpec {
            name: "zk".into(),
            model: ModelConfig { vocab_size: 256, context_length: 8, width: 4, layers: 2, heads: 1 },
            init_seed: 3,
            dataset_root: Hash::ZERO,
            dataset_shards: 2,
            diloco: DilocoParams {
                workers_per_round: 2,
                inner_steps: 4,
                batch_size: 2,
                sequence_length: 8,
                learning_rate: 0.5,
                beta1: 0.9,
                beta2: 0.95,
                weight_decay: 0.0,
                grad_clip: 1.0,
                warmup_steps: 0,
                outer_optimizer: OuterOptimizer::Average,
                outer_learning_rate: 1.0,
                outer_momentum: 0.0,
                rounds: 2,
                encoding: DeltaEncoding::F32,
                inner_optimizer: Default::default(),
                min_inner_steps: 4,
                fragments: 1,
            },
            aggregation: trellis_proto::AggregationRule::Mean,
            verification: VerificationParams {
                checkpoint_interval: 2,
                segments_per_miner: 1,
                mode: VerificationMode::Groth16 {
                    model: MODEL.into(),
                    proving_key: Hash([1; 32]),
                    verifying_key: Hash([2; 32]),
                },
                checkpoint_state: Default::default(),
            },
            reward_per_round: Amount(1),
            min_miner_stake: Amount(1),
            commit_blocks: 1,
            verify_blocks: 1,
        }
    }

    fn dataset() -> Dataset {
        let text = "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife. ";
        Dataset::from_bytes(text.repeat(40).into_bytes(), 1024)
    }

    struct Fixture {
        spec: JobSpec,
        job: ZkJob,
        proving_key: ZkProvingKey,
        verifier: PreparedVerifier,
        dataset: Dataset,
        global: Vec<f32>,
    }

    fn fixture() -> Fixture {
        let spec = spec();
        let job = ZkJob::of(&spec).unwrap().unwrap();
        let mut rng = <rand_chacha::ChaCha20Rng as rand_core::SeedableRng>::seed_from_u64(5);
        let (proving_key, verifying_key) = trellis_zk::setup(&job.model, 2, &mut rng).unwrap();
        let global = trellis_zk::job::initial_weights(&job.model, spec.init_seed);
        Fixture { verifier: PreparedVerifier::new(&verifying_key), spec, job, proving_key, dataset: dataset(), global }
    }

    fn train(f: &Fixture, worker: usize, fake: bool) -> ZkRound {
        let training = ZkTraining {
            job_id: JobId(0),
            spec: &f.spec,
            job: &f.job,
            proving_key: &f.proving_key,
            dataset: &f.dataset,
            round: 1,
            worker,
            fake_checkpoints: fake,
        };
        training.run(&f.global).unwrap()
    }

    fn check(f: &Fixture, round: &ZkRound, segment: usize, proof: &[u8]) -> VerdictOutcome {
        let evidence = SegmentEvidence {
            start_checkpoint: &round.checkpoints[segment],
            end_checkpoint: &round.checkpoints[segment + 1],
            proof,
        };
        check_segment(
            &f.spec,
            &f.job,
            &f.verifier,
            &f.dataset,
            &round.trail,
            (1, round.trail.worker as usize),
            segment,
            &evidence,
        )
    }

    fn rejected(outcome: &VerdictOutcome) -> bool {
        matches!(outcome, VerdictOutcome::Invalid(e) if e.reason == InvalidReason::ProofRejected)
    }

    #[test]
    fn honest_segments_verify_and_training_repeats() {
        let f = fixture();
        let round = train(&f, 0, false);
        assert_eq!(round.trail.proofs.len(), 2);
        assert_eq!(round.trail.checkpoints[0].hash, f.job.start_checkpoint_hash(&f.global).unwrap());
        for segment in 0..2 {
            assert_eq!(check(&f, &round, segment, &round.proofs[segment]), VerdictOutcome::Valid);
        }
        // Proofs are randomised, the trail's checkpoints are not.
        assert_eq!(train(&f, 0, false).trail.hashes(), round.trail.hashes());
        assert_ne!(train(&f, 1, false).trail.hashes(), round.trail.hashes());
        assert!(round.trail.losses.iter().all(|l| l.is_finite()) && round.trail.losses.len() == 4);
    }

    #[test]
    fn wrong_proofs_checkpoints_and_batches_are_rejected() {
        let f = fixture();
        let round = train(&f, 0, false);
        // Another segment's proof, flipped bytes, and garbage.
        assert!(rejected(&check(&f, &round, 0, &round.proofs[1])));
        let mut flipped = round.proofs[0].clone();
        flipped[5] ^= 1;
        assert!(rejected(&check(&f, &round, 0, &flipped)));
        assert!(rejected(&check(&f, &round, 0, b"not a proof")));
        // Another worker's trail proves steps on other batches.
        let other = train(&f, 1, false);
        let mut swapped = ZkRound {
            trail: round.trail.clone(),
            checkpoints: other.checkpoints.clone(),
            proofs: other.proofs.clone(),
            final_weights: vec![],
        };
        swapped.trail.checkpoints = other.trail.checkpoints.clone();
        assert!(rejected(&check(&f, &swapped, 0, &other.proofs[0])));
        // The worker slot comes from the chain, not the trail: slot 1's trail checked as slot 0's
        // work proves steps on the wrong batches.
        let evidence = SegmentEvidence {
            start_checkpoint: &other.checkpoints[0],
            end_checkpoint: &other.checkpoints[1],
            proof: &other.proofs[0],
        };
        assert!(rejected(&check_segment(&f.spec, &f.job, &f.verifier, &f.dataset, &other.trail, (1, 0), 0, &evidence)));
        // Checkpoints never computed, next to proofs of the real steps.
        let fake = train(&f, 0, true);
        assert!(rejected(&check(&f, &fake, 0, &fake.proofs[0])));
        // A trail without its proofs is malformed.
        let mut bare = round.trail.clone();
        bare.proofs.clear();
        let evidence = SegmentEvidence {
            start_checkpoint: &round.checkpoints[0],
            end_checkpoint: &round.checkpoints[1],
            proof: &round.proofs[0],
        };
        let outcome = check_segment(&f.spec, &f.job, &f.verifier, &f.dataset, &bare, (1, 0), 0, &evidence);
        assert!(matches!(outcome, VerdictOutcome::Invalid(e) if e.reason == InvalidReason::TrailMismatch));
    }

    /// A trap job: keys of two different setups, or a verifying key for another step count.
    /// Honest proofs would all be rejected; a miner checks the keys and does not join.
    #[test]
    fn keys_of_another_setup_or_step_count_are_refused() {
        let f = fixture();
        let own = f.proving_key.verifying_key().to_bytes();
        check_keys(&f.spec, &f.job, &f.proving_key, &own).unwrap();
        let mut rng = <rand_chacha::ChaCha20Rng as rand_core::SeedableRng>::seed_from_u64(6);
        let (_, other_setup) = trellis_zk::setup(&f.job.model, 2, &mut rng).unwrap();
        let error = check_keys(&f.spec, &f.job, &f.proving_key, &other_setup.to_bytes()).unwrap_err();
        assert!(matches!(error, Groth16JobError::ForeignVerifyingKey), "{error}");
        let (three_steps, three_steps_vk) = trellis_zk::setup(&f.job.model, 3, &mut rng).unwrap();
        assert!(check_keys(&f.spec, &f.job, &f.proving_key, &three_steps_vk.to_bytes()).is_err());
        assert!(matches!(
            check_keys(&f.spec, &f.job, &three_steps, &three_steps_vk.to_bytes()),
            Err(Groth16JobError::KeyForAnotherJob { key_steps: 3, job_steps: 2, .. })
        ));
    }

    #[test]
    fn a_model_that_does_not_fit_the_batch_shape_is_an_error() {
        let mut spec = spec();
        spec.diloco.sequence_length = 9;
        assert!(matches!(ZkJob::of(&spec), Err(Groth16JobError::Inputs { model: 8, job: 9 })));
        let mut spec = self::spec();
        spec.verification.mode =
            VerificationMode::Groth16 { model: "mlp:8".into(), proving_key: Hash::ZERO, verifying_key: Hash::ZERO };
        assert!(matches!(ZkJob::of(&spec), Err(Groth16JobError::Model { .. })));
        let mut spec = self::spec();
        spec.verification.mode = VerificationMode::Exact;
        assert!(ZkJob::of(&spec).unwrap().is_none());
    }
}
