//! The node's side of consensus: the Malachite application ([`consensus_app`]: propose, check,
//! commit, sync, report double votes), the validator's beacon reveals ([`beacon`]) and its
//! re-derivation of `Invalid` evidence before it votes ([`evidence_desk`]).

pub mod beacon;
pub mod consensus_app;
pub mod evidence_desk;
