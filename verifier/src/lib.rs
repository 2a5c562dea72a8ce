//! `trellis-verifier`: checks Proof-of-Learning trails by re-executing them.
//!
//! - [`segment`]: re-execute a sampled trail segment from its start checkpoint and compare
//!   with the next trail entry (exact hash equality, or a distance under a tolerance), and
//!   check the last link (the submitted Δ encodes θ_r − θ_final).
//! - [`signals`]: freeloader signals (copied or near-copied Δ);
//! - [`groth16`]: jobs checked by Groth16 proofs instead of re-execution: what their miners
//!   train and prove, and the checker's proof check.
//!
//! The robust aggregation rules and the outer step are rules every validator and the simulator
//! run, so they live in `trellis_protocol::{aggregate, outer}`.
//!
//! Verification is plain functions over `trellis-proto` types and a [`segment::BlobSource`].
//! It never panics on malformed blobs: every failure becomes a verdict with evidence (segment,
//! expected and reproduced hashes, distance) that a third party can re-check.

pub mod groth16;
pub mod segment;
pub mod signals;
