//! `trellis-trainer`: the engine the protocol verifies. A GPT-style decoder on tch, DiLoCo's
//! inner (AdamW) and outer (Nesterov) loops, a deterministic data schedule, and canonical,
//! hashed checkpoints that form Proof-of-Learning trails.
//!
//! Guarantee (the determinism contract, `docs/protocol.md`): the same job spec, starting
//! weights, optimizer state and step range give the same checkpoint bytes on the same backend
//! class.

pub mod device;
