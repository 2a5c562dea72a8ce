//! `trellis-trainer`: the engine the protocol verifies. A GPT-style decoder on tch, DiLoCo's
//! inner (AdamW) loop and a DiLoCo driver (its outer step is `trellis_protocol::outer`), a
//! deterministic data schedule, pseudo-gradient encodings, and canonical, hashed checkpoints that form Proof-of-Learning trails.
//!
//! Guarantee (the determinism contract, `docs/protocol.md`): the same job spec, starting
//! weights, optimizer state and step range give the same checkpoint bytes on the same backend
//! class. Everything random is drawn from counter-based generators keyed by the job seed
//! ([`data::draw`], [`model::init_normals`]), never from libtorch's global generator.
//!
//! [`job`] holds the training rules a job's spec fixes (inner optimizer, batch schedule, a
//! round's canonical start state), which miners and checkers share.
//!
//! This crate knows nothing about chain state; it must never read a clock into any hashed value.

pub mod checkpoint;
pub mod compact;
pub mod data;
pub mod device;
pub mod diloco;
pub mod encoding;
pub mod job;
pub mod model;
pub mod model_io;
pub mod optim;
pub mod worker;
