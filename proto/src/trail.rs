//! A miner's Proof-of-Learning trail for one round: which job, round and worker slot it is for,
//! the hash of every checkpoint with its optimizer step, the loss of every step, and (groth16
//! jobs) the blob hash of one proof per segment.
//!
//! The trail is a blob addressed by [`Trail::hash`], the hash of its whole canonical encoding in
//! its own domain, and that hash is what the miner reveals on chain. So nothing a checker reads
//! from a trail is outside what the miner signed: a peer that serves other bytes serves a
//! different blob, which the blob exchange refuses.
//!
//! Layout (the codec's rules: integers little-endian, sequences with a `u32` length):
//!
//! ```text
//! u64 job ‖ u32 round ‖ u32 worker ‖ u32 checkpoint_interval
//! u32 n ‖ n × { u64 step ‖ 32-byte checkpoint hash }
//! u32 m ‖ m × f32 loss           (finite: the codec refuses NaN and infinities)
//! u32 p ‖ p × 32-byte proof blob hash
//! 32-byte final_moments           (zero unless the job's Δ is its final checkpoint's drift)
//! ```
//!
//! What a trail must look like for a given round (checkpoint positions, counts) is a protocol
//! rule, checked by `trellis-protocol`; this module only fixes the bytes.

use serde::{Deserialize, Serialize};

use crate::canonical_struct;
use crate::codec::{decode, decode_seq, encode_seq, Decode, DecodeError, Encode, Reader};
use crate::hash::{Hash, HashDomain};
use crate::job::JobId;

/// Most inner steps a job may have: a trail holds one loss per step and one checkpoint per
/// segment, so this bounds the size of every trail a checker reads.
pub const MAX_TRAIL_STEPS: u32 = 1 << 20;

/// One trail entry: the hash of the checkpoint after `step` optimizer steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrailEntry {
    pub step: u64,
    pub hash: Hash,
}
canonical_struct!(TrailEntry { step, hash });

/// A worker's trail for one round of one job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trail {
    pub job: JobId,
    pub round: u32,
    /// The worker's slot in the round (its index in the batch schedule).
    pub worker: u32,
    pub checkpoint_interval: u32,
    /// Checkpoints at the round's start, every `checkpoint_interval` steps, and at its end.
    pub checkpoints: Vec<TrailEntry>,
    /// The training loss of every step, in order.
    pub losses: Vec<f32>,
    /// Blob hashes of one Groth16 proof per segment (`groth16` jobs; empty otherwise).
    pub proofs: Vec<Hash>,
    /// In a job whose Δ is the negated drift of the final compact checkpoint
    /// (`trellis_protocol::trail::delta_is_drift`): the hash of that checkpoint's part that is not
    /// its weights (header and moments), from which and the Δ a checker recomputes the final
    /// checkpoint's hash without downloading it. Zero in every other job.
    pub final_moments: Hash,
}

impl Trail {
    /// The trail's address: the hash of its whole canonical encoding.
    pub fn hash(&self) -> Hash {
        Hash::of(HashDomain::Trail, self)
    }

    /// The address of trail bytes, decodable or not (a miner answers for what it committed).
    pub fn hash_bytes(bytes: &[u8]) -> Hash {
        Hash::digest(HashDomain::Trail, bytes)
    }

    /// Decodes a trail received from a peer.
    pub fn from_bytes(bytes: &[u8]) -> Result<Trail, DecodeError> {
        decode(bytes)
    }

    /// The checkpoint hashes in order.
    pub fn hashes(&self) -> Vec<Hash> {
        self.checkpoints.iter().map(|e| e.hash).collect()
    }
}

impl Encode for Trail {
    fn encode_to(&self, out: &mut Vec<u8>) {
        self.job.encode_to(out);
        self.round.encode_to(out);
        self.worker.encode_to(out);
        self.checkpoint_interval.encode_to(out);
        encode_seq(&self.checkpoints, out);
        encode_seq(&self.losses, out);
        encode_seq(&self.proofs, out);
        self.final_moments.encode_to(out);
    }
}

impl Decode for Trail {
    fn decode_from(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let max = MAX_TRAIL_STEPS as usize;
        Ok(Self {
            job: Decode::decode_from(reader)?,
            round: Decode::decode_from(reader)?,
            worker: Decode::decode_from(reader)?,
            checkpoint_interval: Decode::decode_from(reader)?,
            checkpoints: decode_seq(reader, "trail checkpoints", max + 1, 40)?,
            losses: decode_seq(reader, "trail losses", max, 4)?,
            proofs: decode_seq(reader, "trail proofs", max, 32)?,
            final_moments: Decode::decode_from(reader)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Trail {
        Trail {
            job: JobId(4),
            round: 2,
            worker: 1,
            checkpoint_interval: 4,
            checkpoints: (0..3).map(|i| TrailEntry { step: 40 + 4 * i, hash: Hash([i as u8; 32]) }).collect(),
            losses: vec![3.5, 3.25, 3.0, 2.75, 2.5, 2.25, 2.0, 1.75],
            proofs: Vec::new(),
            final_moments: Hash::ZERO,
        }
    }

    #[test]
    fn a_trail_round_trips_and_its_hash_covers_every_byte() {
        let trail = sample();
        let bytes = trail.to_bytes();
        assert_eq!(Trail::from_bytes(&bytes).unwrap(), trail);
        assert_eq!(trail.hash(), Trail::hash_bytes(&bytes));
        // Any field a checker reads changes the address.
        let mut losses = trail.clone();
        losses.losses[3] = 2.5;
        let mut steps = trail.clone();
        steps.checkpoints[1].step += 1;
        let mut worker = trail.clone();
        worker.worker = 0;
        for other in [losses, steps, worker] {
            assert_ne!(other.hash(), trail.hash());
        }
    }

    #[test]
    fn non_finite_losses_and_forged_lengths_do_not_decode() {
        let mut bytes = sample().to_bytes();
        // The first loss sits after the header (20 bytes), the checkpoints (4 + 3 × 40) and the
        // losses' length (4).
        let at = 20 + 4 + 3 * 40 + 4;
        bytes[at..at + 4].copy_from_slice(&f32::NAN.to_bits().to_le_bytes());
        assert_eq!(Trail::from_bytes(&bytes), Err(DecodeError::NonFiniteFloat("f32")));
        let mut forged = sample().to_bytes();
        forged[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(Trail::from_bytes(&forged), Err(DecodeError::LengthTooLarge { .. })));
    }
}
