//! `trellis-consensus`: Trellis's types for the Malachite BFT engine.
//!
//! - [`types`]: the engine's `Context` — heights, validator addresses, the decided value (a block
//!   hash), proposals, votes, the one signed proposal part that carries a block, validator sets
//!   and proposer selection;
//! - [`signing`]: ed25519 signing and verification of every consensus message, bound to the chain
//!   id and a message kind; vote signatures cover the bytes of [`trellis_proto::Vote`], so double
//!   votes reported by the engine are evidence the chain can check;
//! - [`round_cap`]: how many distinct blocks of one round a validator executes (a flooding
//!   proposer's further blocks are dropped);
//! - [`codec`]: the one canonical byte form of every message the engine sends, syncs or writes to
//!   its WAL; decoding untrusted bytes is bounded and never panics.
//!
//! Pure: no I/O, no clock, no randomness.

pub mod codec;
pub mod round_cap;
pub mod signing;
pub mod types;

pub use codec::{CodecError, TrellisCodec};
pub use signing::{TrellisSigner, TrellisVerifier};
pub use types::{
    BlockHeight, BlockId, BlockPart, ConsensusVote, Proposal, TrellisContext, Validator, ValidatorAddress, ValidatorSet,
};
