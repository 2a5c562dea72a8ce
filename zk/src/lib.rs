//! `trellis-zk`: succinct proofs (Groth16 on BN254, arkworks) that `c` fixed-point SGD steps
//! of a small model were computed correctly.
//!
//! A validator checks such a proof in milliseconds instead of re-executing the steps. The
//! crate has three layers:
//!
//! - the **reference trainer** ([`fixed`], [`model`]): softmax regression and a one-hidden-
//!   layer ReLU MLP trained by SGD in exactly specified Q15.16 integer arithmetic;
//! - the **circuit** ([`circuit`], over [`commit`]'s Poseidon commitments): an R1CS whose
//!   witness is the reference trainer's computation, step by step, with range checks for
//!   every truncation and ReLU; its public inputs are commitments to the weights before and
//!   after, to the batches, and the step count;
//! - the **proof system API** ([`groth16`], [`snarkjs`], [`io`]): `setup`, `prove`, `verify`,
//!   canonical byte encodings, snarkjs-compatible JSON, and file helpers that make
//!   `trellis zk setup|prove|verify` thin wrappers;
//! - **a job's side** ([`job`]): f32 ↔ Q15.16, examples from byte windows, θ_0.
//!
//! Guarantees: the reference trainer and the circuit agree on every step (tested on seeded
//! random models and data); decoders of untrusted bytes or JSON return errors, never panic;
//! no floating point is used in a training step. What a proof does *not* say (that the data
//! is the job's data, that the initial weights are the round's) is for the caller to link
//! through the commitments; see `docs/zk.md`.
//!
//! ```no_run
//! use trellis_zk::{setup, prove, verify, ModelSpec, Weights, Batch};
//! let spec: ModelSpec = "softmax:4x3,batch=2".parse()?;
//! let (pk, vk) = setup(&spec, 1, &mut rand_core::OsRng)?;
//! let weights = Weights::random(&spec, 1);
//! let proven = prove(&pk, &weights, &[Batch::random(&spec, 2)])?;
//! verify(&vk, &proven.public_inputs, &proven.proof)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod circuit;
pub mod commit;
pub mod error;
pub mod fixed;
mod gadgets;
pub mod groth16;
pub mod io;
pub mod job;
pub mod model;
pub mod snarkjs;

pub use circuit::{check_witness, circuit_size, CircuitSize, PublicInputs, TrainingCircuit, MAX_STEPS};
pub use commit::{commit_batches, commit_weights, Commitment};
pub use error::ZkError;
pub use groth16::{
    prove, prove_with_rng, setup, verify, PreparedVerifier, ProvenSteps, ZkProof, ZkProvingKey, ZkVerifyingKey,
};
pub use model::{sgd_step, train, Architecture, Batch, Example, ModelSpec, SpecError, TrainError, Weights};
