//! `trellis-verifier`: checks Proof-of-Learning trails (segment re-execution, exact or
//! within a measured tolerance), combines pseudo-gradients robustly, and checks succinct
//! proofs for circuit-sized models.
//!
//! Verification is plain functions over `trellis-proto` types and a blob source; it never
//! panics on malformed blobs and every verdict carries evidence a third party can re-check.
//!
//! Status: the crate is reserved in the workspace; its checks are the verifier issue.
