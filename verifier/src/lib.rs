//! `trellis-verifier`: checks Proof-of-Learning trails and combines pseudo-gradients robustly.
//!
//! - [`segment`]: re-execute a sampled trail segment from its start checkpoint and compare
//!   with the next trail entry (exact hash equality, or a distance under a tolerance), and
//!   check the last link (the submitted Δ encodes θ_r − θ_final).
//! - [`aggregate`]: mean, coordinate-wise trimmed mean and centred clipping, bit-deterministic
//!   for a fixed input order.
//! - [`signals`]: freeloader signals (copied or near-copied Δ).
//!
//! Verification is plain functions over `trellis-proto` types and a [`segment::BlobSource`].
//! It never panics on malformed blobs: every failure becomes a verdict with evidence (segment,
//! expected and reproduced hashes, distance) that a third party can re-check.

pub mod aggregate;
pub mod segment;
pub mod signals;
