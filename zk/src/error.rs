//! The one error type of the proof-system API, so a CLI or checker can match on causes.
//!
//! A proof that fails the pairing check is [`ZkError::Rejected`]; everything a caller could
//! not decode is [`ZkError::Decode`] (never a panic). Callers that judge miners treat both as
//! an invalid proof.

use std::path::PathBuf;

use ark_relations::gr1cs::SynthesisError;

use crate::model::{ShapeError, SpecError, TrainError};

/// Errors of setup, proving, verification, encodings and file IO.
#[derive(Debug, thiserror::Error)]
pub enum ZkError {
    /// The model spec text is invalid.
    #[error("model spec: {0}")]
    Spec(#[from] SpecError),
    /// Weights or batches do not fit the key's model.
    #[error(transparent)]
    Shape(#[from] ShapeError),
    /// The reference trainer failed (overflow), so there is nothing true to prove.
    #[error("training: {0}")]
    Training(#[from] TrainError),
    /// A key is for `expected` steps but `got` batches (one per step) were given.
    #[error("the proving key is for {expected} steps, but {got} batches were given (one batch per step)")]
    BatchCount {
        /// Steps the key proves.
        expected: u32,
        /// Batches given.
        got: usize,
    },
    /// The step count of a setup is outside `1..=MAX_STEPS`.
    #[error("steps per proof must be in 1..={max}, got {got}")]
    Steps {
        /// Steps asked for.
        got: u32,
        /// The limit.
        max: u32,
    },
    /// The public inputs name a different step count than the verifying key proves.
    #[error("the public inputs claim {got} steps, but the verifying key is for {expected}")]
    StepMismatch {
        /// Steps of the verifying key.
        expected: u32,
        /// Steps in the public inputs.
        got: u32,
    },
    /// Constraint generation or the Groth16 prover failed.
    #[error("circuit: {0}")]
    Synthesis(#[from] SynthesisError),
    /// A proof just made failed its own verification: the circuit and the reference trainer
    /// disagree on this input. A bug, never the caller's fault.
    #[error("internal error: the proof just made does not verify (circuit and reference trainer disagree); please report it with the model spec and inputs")]
    SelfCheckFailed,
    /// The proof is well-formed but does not verify for these public inputs and key.
    #[error("proof rejected: it does not verify against these public inputs and verifying key")]
    Rejected,
    /// Bytes or JSON that do not decode to what they claim to be.
    #[error("cannot decode {what}: {reason}")]
    Decode {
        /// What was being decoded, e.g. "proof".
        what: &'static str,
        /// Why it failed.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl ZkError {
    pub(crate) fn decode(what: &'static str, reason: impl ToString) -> Self {
        ZkError::Decode { what, reason: reason.to_string() }
    }
}
