//! Training jobs: the spec a submitter escrows a reward for, and what miners and validators
//! put on chain about each round (work commitments, verdicts, aggregates).

use serde::{Deserialize, Serialize};

use crate::codec::{decode_seq, decode_string, encode_bytes, encode_seq, Decode, DecodeError, Encode, Reader};
use crate::crypto::Address;
use crate::hash::{Hash, HashDomain};
use crate::{canonical_newtype, canonical_struct, canonical_tag_enum, Amount};

/// Longest job name, in bytes.
pub const MAX_JOB_NAME_LEN: usize = 64;
/// Longest zk model spec of a `groth16` job, in bytes (`trellis_zk::model::MAX_SPEC_LEN`).
pub const MAX_ZK_MODEL_LEN: usize = 128;
/// Most miners accepted in one round of one job.
pub const MAX_MINERS_PER_ROUND: usize = 256;

/// A job's identifier, assigned by the chain in submission order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct JobId(pub u64);
canonical_newtype!(JobId);

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Shape of the GPT-style decoder a job trains (byte-level vocabulary by default).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub vocab_size: u32,
    pub context_length: u32,
    pub width: u32,
    pub layers: u32,
    pub heads: u32,
}
canonical_struct!(ModelConfig { vocab_size, context_length, width, layers, heads });

/// How the outer step combines the aggregated pseudo-gradient with the global model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OuterOptimizer {
    /// Nesterov momentum on the pseudo-gradient (DiLoCo).
    Nesterov,
    /// Plain averaging of the workers' models (FedAvg).
    Average,
}
canonical_tag_enum!(OuterOptimizer, "outer optimizer" { Nesterov = 1, Average = 2 });

/// The rule of a job's inner steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InnerOptimizer {
    #[default]
    Adamw,
    /// Muon on the blocks' weight matrices, AdamW on embeddings, norms and biases (MuLoCo);
    /// `trellis_trainer::optim`.
    Muon,
}
canonical_tag_enum!(InnerOptimizer, "inner optimizer" { Adamw = 1, Muon = 2 });

/// How a miner encodes its pseudo-gradient for the network. Job files and `trellis train
/// --encoding` name it as [`DeltaEncoding::name`] prints it (`f32`, `int8`, `topk:0.03+q2`, …),
/// and so do JSON-RPC answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeltaEncoding {
    F32,
    F16,
    /// int8 with one f32 scale per chunk, and the quantisation error carried to the next round.
    Int8,
    /// 4-bit codes (levels −7..7) with one f32 scale per chunk, and error feedback.
    Q4,
    /// 2-bit codes (levels −1, 0, 1) with one f32 scale per chunk, and error feedback.
    Q2,
    /// The `keep` largest magnitudes of every chunk of [`TOPK_CHUNK`] values, each sent as its
    /// index in the chunk and its value in `values` precision; what is dropped or rounded away is
    /// carried to the next round (SparseLoCo).
    TopK {
        keep: u16,
        values: KeptValues,
    },
}

/// Values per top-k chunk: `keep` of every 4096 are sent, with a 12-bit index each.
pub const TOPK_CHUNK: u32 = 4096;

/// The precision of the values a top-k Δ keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeptValues {
    F32,
    Int8,
    Q4,
    Q2,
}
canonical_tag_enum!(KeptValues, "top-k value precision" { F32 = 1, Int8 = 3, Q4 = 4, Q2 = 5 });

impl KeptValues {
    /// The dense encoding whose values these are.
    pub fn dense(self) -> DeltaEncoding {
        match self {
            KeptValues::F32 => DeltaEncoding::F32,
            KeptValues::Int8 => DeltaEncoding::Int8,
            KeptValues::Q4 => DeltaEncoding::Q4,
            KeptValues::Q2 => DeltaEncoding::Q2,
        }
    }

    fn of_dense(encoding: DeltaEncoding) -> Option<Self> {
        Some(match encoding {
            DeltaEncoding::F32 => KeptValues::F32,
            DeltaEncoding::Int8 => KeptValues::Int8,
            DeltaEncoding::Q4 => KeptValues::Q4,
            DeltaEncoding::Q2 => KeptValues::Q2,
            _ => return None,
        })
    }
}

impl Encode for DeltaEncoding {
    fn encode_to(&self, out: &mut Vec<u8>) {
        match self {
            DeltaEncoding::F32 => out.push(1),
            DeltaEncoding::F16 => out.push(2),
            DeltaEncoding::Int8 => out.push(3),
            DeltaEncoding::Q4 => out.push(4),
            DeltaEncoding::Q2 => out.push(5),
            DeltaEncoding::TopK { keep, values } => {
                out.push(6);
                keep.encode_to(out);
                values.encode_to(out);
            }
        }
    }
}

impl Decode for DeltaEncoding {
    fn decode_from(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(match u8::decode_from(reader)? {
            1 => DeltaEncoding::F32,
            2 => DeltaEncoding::F16,
            3 => DeltaEncoding::Int8,
            4 => DeltaEncoding::Q4,
            5 => DeltaEncoding::Q2,
            6 => {
                let keep = u16::decode_from(reader)?;
                if keep == 0 || u32::from(keep) > TOPK_CHUNK {
                    return Err(DecodeError::InvalidValue { what: "top-k keep count", reason: "must be 1..=4096" });
                }
                DeltaEncoding::TopK { keep, values: KeptValues::decode_from(reader)? }
            }
            tag => return Err(DecodeError::UnknownTag { what: "delta encoding", tag }),
        })
    }
}

/// A `--encoding` or job-file encoding that is not one of [`DeltaEncoding`]'s names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown delta encoding '{0}': expected f32, f16, int8, q4, q2, or topk:<density> with an optional +int8, +q4 or +q2 (e.g. topk:0.03+q2), density in (0, 1]")]
pub struct UnknownEncoding(pub String);

impl DeltaEncoding {
    /// Whether the encoding loses something, and so carries it into the next round (error
    /// feedback: the miner reveals the residual it carried in, and checkers bound it).
    pub fn has_error_feedback(self) -> bool {
        !matches!(self, DeltaEncoding::F32 | DeltaEncoding::F16)
    }

    /// The top-k encoding keeping `density` of every chunk's values (rounded to a whole count,
    /// at least one) in `values` precision; `None` for a density outside (0, 1].
    pub fn top_k(density: f64, values: KeptValues) -> Option<Self> {
        if !(density > 0.0 && density <= 1.0) {
            return None;
        }
        let keep = (density * f64::from(TOPK_CHUNK)).round().clamp(1.0, f64::from(TOPK_CHUNK)) as u16;
        Some(DeltaEncoding::TopK { keep, values })
    }

    /// The name job files and `trellis train --encoding` use; [`str::parse`] reads it back to the
    /// same encoding. A top-k density is written with the fewest decimals that name its count.
    pub fn name(self) -> String {
        match self {
            DeltaEncoding::F32 => "f32".into(),
            DeltaEncoding::F16 => "f16".into(),
            DeltaEncoding::Int8 => "int8".into(),
            DeltaEncoding::Q4 => "q4".into(),
            DeltaEncoding::Q2 => "q2".into(),
            DeltaEncoding::TopK { keep, values } => {
                let exact = f64::from(keep) / f64::from(TOPK_CHUNK);
                let density = (1..=6)
                    .map(|places| format!("{exact:.places$}"))
                    .find(|text| text.parse().ok().and_then(|d| Self::top_k(d, values)) == Some(self))
                    .unwrap_or_else(|| exact.to_string());
                let density = density.trim_end_matches('0').trim_end_matches('.');
                match values {
                    KeptValues::F32 => format!("topk:{density}"),
                    quantised => format!("topk:{density}+{}", quantised.dense().name()),
                }
            }
        }
    }

    /// Every dense encoding, in tag order, and one top-k encoding of each value precision: the
    /// set tests go through.
    pub const ALL: [DeltaEncoding; 9] = [
        DeltaEncoding::F32,
        DeltaEncoding::F16,
        DeltaEncoding::Int8,
        DeltaEncoding::Q4,
        DeltaEncoding::Q2,
        DeltaEncoding::TopK { keep: 123, values: KeptValues::F32 },
        DeltaEncoding::TopK { keep: 123, values: KeptValues::Int8 },
        DeltaEncoding::TopK { keep: 61, values: KeptValues::Q4 },
        DeltaEncoding::TopK { keep: 123, values: KeptValues::Q2 },
    ];
}

impl std::fmt::Display for DeltaEncoding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

impl std::str::FromStr for DeltaEncoding {
    type Err = UnknownEncoding;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let unknown = || UnknownEncoding(text.to_string());
        let dense = |name: &str| {
            [DeltaEncoding::F32, DeltaEncoding::F16, DeltaEncoding::Int8, DeltaEncoding::Q4, DeltaEncoding::Q2]
                .into_iter()
                .find(|e| e.name() == name)
        };
        let Some(top_k) = text.strip_prefix("topk:") else { return dense(text).ok_or_else(unknown) };
        let (density, values) = match top_k.split_once('+') {
            None => (top_k, KeptValues::F32),
            Some((density, values)) => {
                let values = dense(values).and_then(KeptValues::of_dense).filter(|v| *v != KeptValues::F32);
                (density, values.ok_or_else(unknown)?)
            }
        };
        let density: f64 = density.parse().map_err(|_| unknown())?;
        Self::top_k(density, values).ok_or_else(unknown)
    }
}

impl TryFrom<String> for DeltaEncoding {
    type Error = UnknownEncoding;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<DeltaEncoding> for String {
    fn from(encoding: DeltaEncoding) -> Self {
        encoding.name()
    }
}

/// How the accepted pseudo-gradients of a round are combined.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "rule")]
pub enum AggregationRule {
    Mean,
    /// Coordinate-wise mean after dropping the `trim` largest and `trim` smallest values.
    TrimmedMean {
        trim: u32,
    },
    /// Centred clipping (Karimireddy, He and Jaggi, 2021) with radius `tau` times the median
    /// distance of the inputs from their coordinate-wise median.
    CenteredClip {
        tau: f32,
        iterations: u32,
    },
}

impl Encode for AggregationRule {
    fn encode_to(&self, out: &mut Vec<u8>) {
        match self {
            AggregationRule::Mean => out.push(1),
            AggregationRule::TrimmedMean { trim } => {
                out.push(2);
                trim.encode_to(out);
            }
            AggregationRule::CenteredClip { tau, iterations } => {
                out.push(3);
                tau.encode_to(out);
                iterations.encode_to(out);
            }
        }
    }
}

impl Decode for AggregationRule {
    fn decode_from(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match u8::decode_from(reader)? {
            1 => Ok(AggregationRule::Mean),
            2 => Ok(AggregationRule::TrimmedMean { trim: u32::decode_from(reader)? }),
            3 => Ok(AggregationRule::CenteredClip {
                tau: f32::decode_from(reader)?,
                iterations: u32::decode_from(reader)?,
            }),
            tag => Err(DecodeError::UnknownTag { what: "aggregation rule", tag }),
        }
    }
}

/// How checkers decide whether a trail segment is honest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "mode")]
pub enum VerificationMode {
    /// Re-executed checkpoints must hash equal (same backend class).
    Exact,
    /// Re-executed weights must lie within `max_distance` (see `docs/protocol.md`).
    Tolerance { max_distance: f32 },
    /// Each segment carries a Groth16 proof of its fixed-point SGD steps (circuit-sized models
    /// only, `docs/zk.md`). The job trains `model` (a `trellis-zk` spec such as
    /// `mlp:16x16x4,batch=4,lr=0.5`) instead of the GPT in the job's `model` field; the proving
    /// and verifying keys of its trusted setup are blobs with these hashes.
    Groth16 { model: String, proving_key: Hash, verifying_key: Hash },
}

impl Encode for VerificationMode {
    fn encode_to(&self, out: &mut Vec<u8>) {
        match self {
            VerificationMode::Exact => out.push(1),
            VerificationMode::Tolerance { max_distance } => {
                out.push(2);
                max_distance.encode_to(out);
            }
            VerificationMode::Groth16 { model, proving_key, verifying_key } => {
                out.push(3);
                encode_bytes(model.as_bytes(), out);
                proving_key.encode_to(out);
                verifying_key.encode_to(out);
            }
        }
    }
}

impl Decode for VerificationMode {
    fn decode_from(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match u8::decode_from(reader)? {
            1 => Ok(VerificationMode::Exact),
            2 => Ok(VerificationMode::Tolerance { max_distance: f32::decode_from(reader)? }),
            3 => Ok(VerificationMode::Groth16 {
                model: decode_string(reader, "zk model", MAX_ZK_MODEL_LEN)?,
                proving_key: Hash::decode_from(reader)?,
                verifying_key: Hash::decode_from(reader)?,
            }),
            tag => Err(DecodeError::UnknownTag { what: "verification mode", tag }),
        }
    }
}

/// DiLoCo's inner (AdamW) and outer parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DilocoParams {
    pub workers_per_round: u32,
    pub inner_steps: u32,
    pub batch_size: u32,
    pub sequence_length: u32,
    pub learning_rate: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub weight_decay: f32,
    pub grad_clip: f32,
    pub warmup_steps: u32,
    pub outer_optimizer: OuterOptimizer,
    pub outer_learning_rate: f32,
    pub outer_momentum: f32,
    pub rounds: u32,
    pub encoding: DeltaEncoding,
    pub inner_optimizer: InnerOptimizer,
    /// The fewest inner steps a worker may commit (`1..=inner_steps`; `inner_steps` when the
    /// round waits for every worker's H steps). A slower worker stops at its commit deadline
    /// after at least this many; the merge weights each Δ by its steps and rewards follow them
    /// (docs/protocol.md §4.3 "Stragglers").
    pub min_inner_steps: u32,
    /// Streaming DiLoCo's fragments F (1 for plain DiLoCo): the parameters split into F
    /// contiguous fragments, and round r synchronises fragment `r mod F` only; a miner that
    /// continues from its own accepted state of the previous round keeps training the others
    /// (docs/protocol.md §2.9). Each fragment is synchronised every F rounds.
    pub fragments: u32,
}
canonical_struct!(DilocoParams {
    workers_per_round,
    inner_steps,
    batch_size,
    sequence_length,
    learning_rate,
    beta1,
    beta2,
    weight_decay,
    grad_clip,
    warmup_steps,
    outer_optimizer,
    outer_learning_rate,
    outer_momentum,
    rounds,
    encoding,
    inner_optimizer,
    min_inner_steps,
    fragments,
});

/// What a trail checkpoint holds, and so what a checker downloads to re-execute a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckpointState {
    /// Weights and both AdamW moments in f32: 12 bytes a parameter.
    #[default]
    Full,
    /// The weights as the round's start weights plus a bf16 drift, both moments in 8 bits: 4
    /// bytes a parameter, an f32 Δ's size. The trail rounds its live state to this form at every
    /// checkpoint (`trellis_trainer::compact`); needs β₁² < β₂.
    Compact,
}

impl Encode for CheckpointState {
    fn encode_to(&self, out: &mut Vec<u8>) {
        out.push(match self {
            CheckpointState::Full => 1,
            CheckpointState::Compact => 2,
        });
    }
}

impl Decode for CheckpointState {
    fn decode_from(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match u8::decode_from(reader)? {
            1 => Ok(CheckpointState::Full),
            2 => Ok(CheckpointState::Compact),
            tag => Err(DecodeError::UnknownTag { what: "checkpoint state", tag }),
        }
    }
}

impl CheckpointState {
    /// Bytes a checkpoint holds per parameter (besides its header).
    pub fn bytes_per_parameter(self) -> u64 {
        match self {
            CheckpointState::Full => 12,
            CheckpointState::Compact => 4,
        }
    }
}

/// How a job's work is checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerificationParams {
    /// A checkpoint is written every this many inner steps.
    pub checkpoint_interval: u32,
    /// Segments sampled per miner per round.
    pub segments_per_miner: u32,
    pub mode: VerificationMode,
    /// Full checkpoints unless the job says compact (a job spec written before the field existed
    /// reads as full).
    #[serde(default)]
    pub checkpoint_state: CheckpointState,
}
canonical_struct!(VerificationParams { checkpoint_interval, segments_per_miner, mode, checkpoint_state });

/// Everything a training job fixes when it is submitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub name: String,
    pub model: ModelConfig,
    pub init_seed: u64,
    /// Merkle root over the dataset's shard hashes.
    pub dataset_root: Hash,
    pub dataset_shards: u32,
    pub diloco: DilocoParams,
    pub aggregation: AggregationRule,
    pub verification: VerificationParams,
    pub reward_per_round: Amount,
    pub min_miner_stake: Amount,
    /// Blocks from a round's opening to its commit deadline.
    pub commit_blocks: u32,
    /// Blocks from the commit deadline to the end of verification.
    pub verify_blocks: u32,
}

impl Encode for JobSpec {
    fn encode_to(&self, out: &mut Vec<u8>) {
        encode_bytes(self.name.as_bytes(), out);
        self.model.encode_to(out);
        self.init_seed.encode_to(out);
        self.dataset_root.encode_to(out);
        self.dataset_shards.encode_to(out);
        self.diloco.encode_to(out);
        self.aggregation.encode_to(out);
        self.verification.encode_to(out);
        self.reward_per_round.encode_to(out);
        self.min_miner_stake.encode_to(out);
        self.commit_blocks.encode_to(out);
        self.verify_blocks.encode_to(out);
    }
}

impl Decode for JobSpec {
    fn decode_from(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            name: decode_string(reader, "job name", MAX_JOB_NAME_LEN)?,
            model: Decode::decode_from(reader)?,
            init_seed: Decode::decode_from(reader)?,
            dataset_root: Decode::decode_from(reader)?,
            dataset_shards: Decode::decode_from(reader)?,
            diloco: Decode::decode_from(reader)?,
            aggregation: Decode::decode_from(reader)?,
            verification: Decode::decode_from(reader)?,
            reward_per_round: Decode::decode_from(reader)?,
            min_miner_stake: Decode::decode_from(reader)?,
            commit_blocks: Decode::decode_from(reader)?,
            verify_blocks: Decode::decode_from(reader)?,
        })
    }
}

/// What a miner commits before a round's commit deadline (the payload of `CommitWork`): a hash
/// that binds the work it will reveal to its own address ([`WorkReveal::binding`]). Nothing in
/// it can be copied: another miner's reveal of the same work hashes to another binding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkCommitment {
    pub job: JobId,
    pub round: u32,
    pub binding: Hash,
}
canonical_struct!(WorkCommitment { job, round, binding });

/// What a miner reveals after the commit deadline (the payload of `RevealWork`): its work, which
/// must hash with its address to the binding it committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkReveal {
    pub job: JobId,
    pub round: u32,
    /// The trail blob's address: the hash of its whole canonical bytes (`Trail::hash`).
    pub trail: Hash,
    /// Hash of the final checkpoint θ_H.
    pub final_checkpoint: Hash,
    /// Hash of the encoded pseudo-gradient Δ = θ_r − θ_H (+ the residual below, for int8).
    pub delta_hash: Hash,
    /// With error feedback: the hash of the residual carried into this round's Δ (bf16 LE, blob
    /// domain): the `next_residual` of this miner's latest accepted work, or `Hash::ZERO` (none
    /// carried, and in other jobs).
    pub residual_hash: Hash,
    /// Inner steps the miner trained (`min_inner_steps..=inner_steps`): the trail holds one loss
    /// per step and its final checkpoint after the last; the Δ is weighted and the reward paid by
    /// them.
    pub steps: u32,
    /// In a streaming job (`fragments > 1`): the final checkpoint of this miner's accepted work
    /// of the previous round, which this round's start state continues (with the fragment that
    /// round synchronised taken from θ_r); `Hash::ZERO` for a start from θ_r with fresh moments,
    /// and always in other jobs.
    pub continues: Hash,
    /// With error feedback (int8, q4, q2, top-k): the hash of the residual this round's encoding
    /// leaves, `bf16(Δ_corrected − decode(Δ))` (bf16 LE, blob domain), which every checker of the
    /// work recomputes exactly; the only residual this miner may carry into a later round once
    /// the work is accepted. `Hash::ZERO` for a zero residual and in other jobs.
    pub next_residual: Hash,
}
canonical_struct!(WorkReveal {
    job,
    round,
    trail,
    final_checkpoint,
    delta_hash,
    residual_hash,
    steps,
    continues,
    next_residual
});

impl WorkReveal {
    /// The commitment to this work by `miner`: `H_binding(miner ‖ encode(self))`.
    pub fn binding(&self, miner: &Address) -> Hash {
        let mut bytes = miner.0.to_vec();
        self.encode_to(&mut bytes);
        Hash::digest(HashDomain::WorkBinding, &bytes)
    }
}

/// Why a checker found a segment invalid: every reason is the miner's doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InvalidReason {
    /// The served start checkpoint does not hash to the trail entry, or the trail's first
    /// checkpoint is not the round's canonical start.
    StartMismatch,
    /// Re-execution reached a different checkpoint hash (exact mode).
    CheckpointMismatch,
    /// Re-execution landed farther than the tolerance (tolerance mode).
    DistanceExceeded,
    /// The submitted Δ is not the encoding of θ_r − θ_final.
    DeltaMismatch,
    /// A Groth16 proof did not verify.
    ProofRejected,
    /// A served blob could not be decoded.
    MalformedBlob,
    /// The losses recorded for the segment's steps are not the ones re-execution computes.
    LossMismatch,
    /// The trail is not one of this round: wrong job, round, worker, interval, checkpoint steps
    /// or count, loss count, proofs, or final checkpoint.
    TrailMismatch,
    /// A checkpoint holds a value no honest training state has (NaN, infinity, a subnormal, a
    /// negative second moment).
    NonCanonicalState,
}
canonical_tag_enum!(InvalidReason, "invalid reason" {
    StartMismatch = 1,
    CheckpointMismatch = 2,
    DistanceExceeded = 3,
    DeltaMismatch = 4,
    ProofRejected = 5,
    MalformedBlob = 6,
    LossMismatch = 7,
    TrailMismatch = 8,
    NonCanonicalState = 9,
});

/// What a third party needs to re-check an `Invalid` verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvalidEvidence {
    pub reason: InvalidReason,
    /// The hash the trail (or commitment) claims.
    pub expected: Hash,
    /// The hash the checker reproduced.
    pub reproduced: Hash,
    /// Distance between claimed and reproduced weights or losses (0 in exact mode). Always
    /// finite: build evidence with [`InvalidEvidence::new`].
    pub distance: f32,
}
canonical_struct!(InvalidEvidence { reason, expected, reproduced, distance });

impl InvalidEvidence {
    /// Evidence whose distance is always encodable: NaN, infinities and values beyond `f32`'s
    /// range become `f32::MAX` (farther than any tolerance), negative values their magnitude.
    pub fn new(reason: InvalidReason, expected: Hash, reproduced: Hash, distance: f64) -> Self {
        let distance =
            if distance.is_nan() || distance.abs() >= f64::from(f32::MAX) { f32::MAX } else { distance.abs() as f32 };
        Self { reason, expected, reproduced, distance }
    }
}

/// Why a job cannot be worked or checked at all: the submitter's doing, not a miner's. A segment
/// whose checkers find this voids the job (escrow back to the submitter, nobody slashed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobFaultReason {
    /// No peer serves the job's dataset (or it does not match its root).
    DatasetUnavailable,
    /// The job's model cannot be built or does not fit its parameters.
    ModelUnusable,
    /// A groth16 job's keys are not served, do not parse, or do not fit the job.
    KeysUnusable,
    /// The job's spec cannot be trained as written.
    SpecUnusable,
}
canonical_tag_enum!(JobFaultReason, "job fault reason" {
    DatasetUnavailable = 1,
    ModelUnusable = 2,
    KeysUnusable = 3,
    SpecUnusable = 4,
});

/// A checker's finding for one segment. Every assigned checker sends one: silence is never
/// read as approval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "outcome")]
pub enum VerdictOutcome {
    Valid,
    /// The miner's data is wrong.
    Invalid(InvalidEvidence),
    /// The miner did not serve the blobs in time.
    Unavailable,
    /// The checker could not do its part (its disk, its network, a crash): no judgement.
    Abstain,
    /// The job itself cannot be checked (its dataset, model, keys or spec).
    JobFault {
        reason: JobFaultReason,
    },
}

impl Encode for VerdictOutcome {
    fn encode_to(&self, out: &mut Vec<u8>) {
        match self {
            VerdictOutcome::Valid => out.push(1),
            VerdictOutcome::Invalid(evidence) => {
                out.push(2);
                evidence.encode_to(out);
            }
            VerdictOutcome::Unavailable => out.push(3),
            VerdictOutcome::Abstain => out.push(4),
            VerdictOutcome::JobFault { reason } => {
                out.push(5);
                reason.encode_to(out);
            }
        }
    }
}

impl Decode for VerdictOutcome {
    fn decode_from(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match u8::decode_from(reader)? {
            1 => Ok(VerdictOutcome::Valid),
            2 => Ok(VerdictOutcome::Invalid(InvalidEvidence::decode_from(reader)?)),
            3 => Ok(VerdictOutcome::Unavailable),
            4 => Ok(VerdictOutcome::Abstain),
            5 => Ok(VerdictOutcome::JobFault { reason: JobFaultReason::decode_from(reader)? }),
            tag => Err(DecodeError::UnknownTag { what: "verdict outcome", tag }),
        }
    }
}

/// A validator's verdict on one segment of one miner's trail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub job: JobId,
    pub round: u32,
    pub miner: Address,
    pub segment: u32,
    pub outcome: VerdictOutcome,
}
canonical_struct!(Verdict { job, round, miner, segment, outcome });

/// The outer update a round commits: the new global model and momentum, and whose Δ went in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Aggregate {
    pub job: JobId,
    pub round: u32,
    pub model_hash: Hash,
    pub momentum_hash: Hash,
    /// Accepted miners, strictly ascending (so the set has one encoding).
    pub accepted: Vec<Address>,
}

impl Encode for Aggregate {
    fn encode_to(&self, out: &mut Vec<u8>) {
        self.job.encode_to(out);
        self.round.encode_to(out);
        self.model_hash.encode_to(out);
        self.momentum_hash.encode_to(out);
        encode_seq(&self.accepted, out);
    }
}

impl Decode for Aggregate {
    fn decode_from(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let aggregate = Self {
            job: Decode::decode_from(reader)?,
            round: Decode::decode_from(reader)?,
            model_hash: Decode::decode_from(reader)?,
            momentum_hash: Decode::decode_from(reader)?,
            accepted: decode_seq(reader, "accepted miners", MAX_MINERS_PER_ROUND, 20)?,
        };
        if !aggregate.accepted.windows(2).all(|pair| pair[0] < pair[1]) {
            return Err(DecodeError::InvalidValue { what: "accepted miners", reason: "not strictly ascending" });
        }
        Ok(aggregate)
    }
}

#[cfg(test)]
mod encoding_name_tests {
    use super::*;
    use crate::codec::decode;

    #[test]
    fn every_encoding_name_and_byte_form_reads_back_to_itself() {
        for encoding in DeltaEncoding::ALL {
            assert_eq!(encoding.name().parse::<DeltaEncoding>(), Ok(encoding), "{encoding}");
            assert_eq!(decode::<DeltaEncoding>(&encoding.to_bytes()), Ok(encoding), "{encoding}");
            let json = serde_json::to_value(encoding).unwrap();
            assert_eq!(json, serde_json::Value::String(encoding.name()));
            assert_eq!(serde_json::from_value::<DeltaEncoding>(json).unwrap(), encoding);
        }
        for keep in 1..=TOPK_CHUNK as u16 {
            let encoding = DeltaEncoding::TopK { keep, values: KeptValues::Q4 };
            assert_eq!(encoding.name().parse::<DeltaEncoding>(), Ok(encoding), "{encoding}");
        }
    }

    #[test]
    fn top_k_names_are_densities_rounded_to_a_count() {
        let parse = |text: &str| text.parse::<DeltaEncoding>();
        assert_eq!(parse("topk:0.03+q2"), Ok(DeltaEncoding::TopK { keep: 123, values: KeptValues::Q2 }));
        assert_eq!(parse("topk:0.015"), Ok(DeltaEncoding::TopK { keep: 61, values: KeptValues::F32 }));
        assert_eq!(parse("topk:1"), Ok(DeltaEncoding::TopK { keep: 4096, values: KeptValues::F32 }));
        assert_eq!(parse("topk:0.00001+int8"), Ok(DeltaEncoding::TopK { keep: 1, values: KeptValues::Int8 }));
        assert_eq!(DeltaEncoding::TopK { keep: 123, values: KeptValues::Q2 }.name(), "topk:0.03+q2");
        assert_eq!(DeltaEncoding::TopK { keep: 4096, values: KeptValues::F32 }.name(), "topk:1");
        for bad in [
            "topk:0",
            "topk:1.5",
            "topk:-0.1",
            "topk:nan",
            "topk:",
            "topk:0.03+f16",
            "topk:0.03+f32",
            "topk:0.03+",
            "q3",
            "TOPK:0.1",
        ] {
            let error = parse(bad).unwrap_err();
            assert!(error.to_string().contains("topk:0.03+q2"), "{bad}: {error}");
        }
    }

    #[test]
    fn out_of_range_keep_counts_and_precisions_do_not_decode() {
        for bytes in [vec![6, 0, 0, 5], vec![6, 1, 16, 5], vec![6, 123, 0, 2], vec![6, 123, 0], vec![7]] {
            assert!(decode::<DeltaEncoding>(&bytes).is_err(), "{bytes:?}");
        }
    }
}
