//! `trellis-protocol`: the rules of a training job that are neither chain state nor numerics,
//! as pure functions that the node, the verifier and the simulator all call.
//!
//! - [`trail`]: where a round's checkpoints sit (checkpoint `i` at step `rH + min(i·c, H)`), and
//!   whether a trail is one of a given round, job and worker slot — all taken from the chain,
//!   never from the trail itself;
//! - [`judge`]: the verdict on a re-executed segment (its end checkpoint and every step's loss,
//!   exactly or within the job's tolerance), what a canonical training state may hold, and whose
//!   fault a failed check is ([`judge::Blame`]): the miner's (`Invalid`, `Unavailable`), the
//!   job's (the job is voided) or the checker's own (an explicit abstain);
//! - [`evidence`]: what an `Invalid` verdict's evidence must quote of the miner's revealed work
//!   and trail, checked by the chain and re-derived by every validator before it votes;
//! - [`aggregate`]: the robust rules that combine a round's accepted pseudo-gradients (mean,
//!   trimmed mean, centred clipping), bit-deterministic for a fixed input order;
//! - [`outer`]: DiLoCo's outer step and [`outer::outer_update`], the round's whole update
//!   (combine, then step θ_r and the momentum) that every validator recomputes before it votes;
//! - [`fragments`]: Streaming DiLoCo's fragments, which one a round synchronises, and which
//!   coordinates a miner's continued start state takes from θ_r;
//! - [`model`]: how a flat f32 vector (a global model, a Δ, a momentum buffer) is laid out in a
//!   blob;
//! - [`beacon`]: the chain's random beacon, a hash onion per validator mixed block by block,
//!   and the validator's side of it ([`beacon::Onion`]);
//! - [`behaviour`]: the one vocabulary of misbehaviour that devnets, end-to-end tests and the
//!   simulator stage;
//! - [`economics`]: the odds of escaping a check when faking some segments, and what faking is
//!   worth against working honestly.
//!
//! It does no I/O, reads no clock and draws no randomness; it depends on `trellis-proto` alone,
//! so the simulator can drive it without building the trainer (ADR 0003).

pub mod aggregate;
pub mod beacon;
pub mod behaviour;
pub mod economics;
pub mod evidence;
pub mod fragments;
pub mod judge;
pub mod model;
pub mod outer;
pub mod trail;

pub use judge::{Blame, Comparison};
pub use trail::{SegmentClaim, TrailFrame, TrailMismatch};
