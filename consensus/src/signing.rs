//! Signing and verification of consensus messages with the validator's ed25519 key.
//!
//! Every preimage is [`trellis_proto::crypto::signing_preimage`]: bound to the chain id and to
//! one [`SigningKind`] per message purpose, so a signature for one purpose never verifies for
//! another. Verification uses the same strict ed25519 rules as transactions.

use arc_malachitebft_app_channel::app::types::core::{SignedMessage, ValidatorProof, VoteExtensionScope};
use arc_malachitebft_app_channel::{Signer, Verifier};
use arc_malachitebft_signing_ed25519 as ed;
use async_trait::async_trait;
use bytes::Bytes;
use trellis_proto::codec::Encode;
use trellis_proto::{Keypair, PublicKey, Signature, SigningKind};

use crate::types::{round_to_option, BlockPart, ConsensusVote, Proposal, TrellisContext};

use arc_malachitebft_signing::{Error as SigningError, VerificationResult};

pub fn to_consensus_signature(signature: &Signature) -> ed::Signature {
    ed::Signature::from_bytes(signature.0)
}

pub fn from_consensus_signature(signature: &ed::Signature) -> Signature {
    Signature(signature.to_bytes())
}

pub fn from_consensus_key(key: &ed::PublicKey) -> PublicKey {
    PublicKey(*key.as_bytes())
}

/// The bytes a vote extension signature covers: the scope, then the extension.
fn extension_bytes(scope: &VoteExtensionScope<TrellisContext>, extension: &Bytes) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + 5 + 32 + 20 + 4 + extension.len());
    scope.height.0.encode_to(&mut out);
    round_to_option(scope.round).encode_to(&mut out);
    scope.value_id.0.encode_to(&mut out);
    scope.validator_address.0.encode_to(&mut out);
    trellis_proto::codec::encode_bytes(extension, &mut out);
    out
}

/// Why a consensus message could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("a vote without a round cannot be signed")]
    NilRoundVote,
}

/// Signs consensus messages with a validator's key.
pub struct TrellisSigner {
    chain_id: String,
    key: Keypair,
}

impl TrellisSigner {
    pub fn new(chain_id: &str, key: Keypair) -> Self {
        Self { chain_id: chain_id.to_string(), key }
    }

    pub fn public_key(&self) -> PublicKey {
        self.key.public_key()
    }

    /// Signs a proposal part (the engine does not; see [`BlockPart`]).
    pub fn sign_part(&self, part: &BlockPart) -> Signature {
        self.key.sign(&self.chain_id, SigningKind::ProposalPart, &part.signing_bytes())
    }

    /// Signs a vote directly: used by the engine's signer and by tests that forge evidence.
    pub fn sign_vote_sync(&self, vote: &ConsensusVote) -> Result<Signature, SignError> {
        let proto = vote.to_proto().ok_or(SignError::NilRoundVote)?;
        Ok(self.key.sign(&self.chain_id, SigningKind::Vote, &proto.to_bytes()))
    }
}

fn signing_error(error: SignError) -> SigningError {
    SigningError::from_source(error)
}

#[async_trait]
impl Signer<TrellisContext> for TrellisSigner {
    async fn sign_vote(
        &self,
        vote: ConsensusVote,
    ) -> Result<SignedMessage<TrellisContext, ConsensusVote>, SigningError> {
        let signature = self.sign_vote_sync(&vote).map_err(signing_error)?;
        Ok(SignedMessage::new(vote, to_consensus_signature(&signature)))
    }

    async fn sign_proposal(&self, proposal: Proposal) -> Result<SignedMessage<TrellisContext, Proposal>, SigningError> {
        let signature = self.key.sign(&self.chain_id, SigningKind::Proposal, &proposal.signing_bytes());
        Ok(SignedMessage::new(proposal, to_consensus_signature(&signature)))
    }

    async fn sign_vote_extension(
        &self,
        scope: VoteExtensionScope<TrellisContext>,
        extension: Bytes,
    ) -> Result<SignedMessage<TrellisContext, Bytes>, SigningError> {
        let signature = self.key.sign(&self.chain_id, SigningKind::VoteExtension, &extension_bytes(&scope, &extension));
        Ok(SignedMessage::new(extension, to_consensus_signature(&signature)))
    }

    async fn sign_validator_proof(
        &self,
        public_key: Vec<u8>,
        peer_id: Vec<u8>,
    ) -> Result<ValidatorProof<TrellisContext>, SigningError> {
        let preimage = ValidatorProof::<TrellisContext>::signing_bytes(&public_key, &peer_id);
        let signature = self.key.sign(&self.chain_id, SigningKind::ValidatorProof, &preimage);
        Ok(ValidatorProof::new(public_key, peer_id, to_consensus_signature(&signature)))
    }
}

/// Verifies consensus signatures for one chain.
#[derive(Clone)]
pub struct TrellisVerifier {
    chain_id: String,
}

impl TrellisVerifier {
    pub fn new(chain_id: &str) -> Self {
        Self { chain_id: chain_id.to_string() }
    }

    fn check(
        &self,
        key: &PublicKey,
        kind: SigningKind,
        payload: &[u8],
        signature: &ed::Signature,
    ) -> VerificationResult {
        let valid = key.verify(&self.chain_id, kind, payload, &from_consensus_signature(signature)).is_ok();
        VerificationResult::from_bool(valid)
    }

    /// Checks a proposal part's signature against the expected proposer's key.
    pub fn verify_part(&self, part: &BlockPart, proposer: &PublicKey) -> bool {
        proposer.verify(&self.chain_id, SigningKind::ProposalPart, &part.signing_bytes(), &part.signature).is_ok()
    }
}

#[async_trait]
impl Verifier<TrellisContext> for TrellisVerifier {
    async fn verify_signed_vote(
        &self,
        vote: &ConsensusVote,
        signature: &ed::Signature,
        public_key: &ed::PublicKey,
    ) -> Result<VerificationResult, SigningError> {
        let Some(proto) = vote.to_proto() else {
            return Ok(VerificationResult::Invalid);
        };
        Ok(self.check(&from_consensus_key(public_key), SigningKind::Vote, &proto.to_bytes(), signature))
    }

    async fn verify_signed_proposal(
        &self,
        proposal: &Proposal,
        signature: &ed::Signature,
        public_key: &ed::PublicKey,
    ) -> Result<VerificationResult, SigningError> {
        Ok(self.check(&from_consensus_key(public_key), SigningKind::Proposal, &proposal.signing_bytes(), signature))
    }

    async fn verify_signed_vote_extension(
        &self,
        scope: &VoteExtensionScope<TrellisContext>,
        extension: &Bytes,
        signature: &ed::Signature,
        public_key: &ed::PublicKey,
    ) -> Result<VerificationResult, SigningError> {
        let payload = extension_bytes(scope, extension);
        Ok(self.check(&from_consensus_key(public_key), SigningKind::VoteExtension, &payload, signature))
    }

    async fn verify_validator_proof(
        &self,
        proof: &ValidatorProof<TrellisContext>,
    ) -> Result<VerificationResult, SigningError> {
        let Ok(key) = <[u8; 32]>::try_from(proof.public_key.as_slice()) else {
            return Ok(VerificationResult::Invalid);
        };
        Ok(self.check(&PublicKey(key), SigningKind::ValidatorProof, &proof.preimage(), &proof.signature))
    }
}
