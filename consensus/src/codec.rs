//! The wire and WAL encoding of every message the engine exchanges or persists.
//!
//! One canonical layout per type, built from `trellis-proto`'s codec: fixed-width little-endian
//! integers, `u32` length prefixes checked before allocation, one-byte tags for enums, no
//! trailing bytes. Decoding bytes from a peer never panics and never allocates more than the
//! bytes it was given justify.

use std::ops::RangeInclusive;

use arc_malachitebft_app_channel::app::consensus::{LivenessMsg, ProposedValue, SignedConsensusMsg};
use arc_malachitebft_app_channel::app::streaming::{StreamContent, StreamId, StreamMessage};
use arc_malachitebft_app_channel::app::types::codec::{Codec, HasEncodedLen};
use arc_malachitebft_app_channel::app::types::core::{
    ExtendedCommitCertificate, ExtendedCommitSignature, NilOrVal, PolkaCertificate, PolkaSignature, Round,
    RoundCertificate, RoundCertificateType, RoundSignature, SignedMessage, ValidatorProof, Validity, VoteType,
};
use arc_malachitebft_app_channel::app::types::PeerId;
use arc_malachitebft_signing_ed25519 as ed;
use arc_malachitebft_sync::{RawDecidedValue, Request, Response, Status, ValueRequest, ValueResponse};
use bytes::Bytes;
use trellis_proto::block::MAX_BLOCK_BYTES;
use trellis_proto::codec::{decode_bytes, encode_bytes, Decode, DecodeError, Encode, Reader};
use trellis_proto::{Hash, Signature};

use crate::types::{
    round_from_option, round_to_option, BlockHeight, BlockId, BlockPart, ConsensusVote, Proposal, TrellisContext,
    ValidatorAddress,
};

/// Most signatures in one certificate: more than any validator set the chain allows.
pub const MAX_CERTIFICATE_SIGNATURES: usize = 4096;
/// Most decided values in one sync response.
pub const MAX_SYNC_VALUES: usize = 1024;
/// Longest stream id, peer id, key or vote extension accepted, in bytes.
const MAX_SMALL_BYTES: usize = 256;
/// Bytes of one encoded signature with its address, the smallest item of a certificate.
const MIN_SIGNATURE_ITEM: usize = 20 + 64;

/// Why bytes from a peer or the WAL could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("invalid peer id in sync status")]
    PeerId,
    #[error("sync request range is empty or reversed")]
    EmptyRange,
}

/// Canonical encoding of an engine type (our own trait, so it can cover Malachite's types).
pub trait Wire: Sized {
    fn put(&self, out: &mut Vec<u8>);
    fn get(reader: &mut Reader<'_>) -> Result<Self, CodecError>;
}

fn get<T: Decode>(reader: &mut Reader<'_>) -> Result<T, CodecError> {
    Ok(T::decode_from(reader)?)
}

fn bad_tag(what: &'static str, tag: u8) -> CodecError {
    CodecError::Decode(DecodeError::UnknownTag { what, tag })
}

fn put_seq<T: Wire>(items: &[T], out: &mut Vec<u8>) {
    trellis_proto::codec::encode_len(items.len(), out);
    for item in items {
        item.put(out);
    }
}

fn get_seq<T: Wire>(
    reader: &mut Reader<'_>,
    what: &'static str,
    max: usize,
    min_item_bytes: usize,
) -> Result<Vec<T>, CodecError> {
    let len = reader.read_len(what, max, min_item_bytes)?;
    let mut items = Vec::with_capacity(len);
    for _ in 0..len {
        items.push(T::get(reader)?);
    }
    Ok(items)
}

fn get_bytes(reader: &mut Reader<'_>, what: &'static str, max: usize) -> Result<Bytes, CodecError> {
    Ok(Bytes::from(decode_bytes(reader, what, max)?))
}

impl Wire for BlockHeight {
    fn put(&self, out: &mut Vec<u8>) {
        self.0.encode_to(out);
    }
    fn get(reader: &mut Reader<'_>) -> Result<Self, CodecError> {
        Ok(BlockHeight(get(reader)?))
    }
}

impl Wire for Round {
    fn put(&self, out: &mut Vec<u8>) {
        round_to_option(*self).encode_to(out);
    }
    fn get(reader: &mut Reader<'_>) -> Result<Self, CodecError> {
        Ok(round_from_option(get(reader)?))
    }
}

impl Wire for ValidatorAddress {
    fn put(&self, out: &mut Vec<u8>) {
        self.0.encode_to(out);
    }
    fn get(reader: &mut Reader<'_>) -> Result<Self, CodecError> {
        Ok(ValidatorAddress(get(reader)?))
    }
}

impl Wire for BlockId {
    fn put(&self, out: &mut Vec<u8>) {
        self.0.encode_to(out);
    }
    fn get(reader: &mut Reader<'_>) -> Result<Self, CodecError> {
        Ok(BlockId(get::<Hash>(reader)?))
    }
}

impl Wire for NilOrVal<BlockId> {
    fn put(&self, out: &mut Vec<u8>) {
        match self {
            NilOrVal::Nil => out.push(0),
            NilOrVal::Val(id) => {
                out.push(1);
                id.put(out);
            }
        }
    }
    fn get(reader: &mut Reader<'_>) -> Result<Self, CodecError> {
        match get::<u8>(reader)? {
            0 => Ok(NilOrVal::Nil),
            1 => Ok(NilOrVal::Val(BlockId::get(reader)?)),
            tag => Err(bad_tag("nil-or-value", tag)),
        }
    }
}

impl Wire for VoteType {
    fn put(&self, out: &mut Vec<u8>) {
        out.push(match self {
            VoteType::Prevote => 1,
            VoteType::Precommit => 2,
        });
    }
    fn get(reader: &mut Reader<'_>) -> Result<Self, CodecError> {
        match get::<u8>(reader)? {
            1 => Ok(VoteType::Prevote),
            2 => Ok(VoteType::Precommit),
            tag => Err(bad_tag("vote type", tag)),
        }
    }
}

impl Wire for ed::Signature {
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_bytes());
    }
    fn get(reader: &mut Reader<'_>) -> Result<Self, CodecError> {
        Ok(ed::Signature::from_bytes(reader.take_array()?))
    }
}

impl Wire for Bytes {
    fn put(&self, out: &mut Vec<u8>) {
        encode_bytes(self, out);
    }
    fn get(reader: &mut Reader<'_>) -> Result<Self, CodecError> {
        get_bytes(reader, "vote extension", MAX_SMALL_BYTES)
    }
}

impl<M: Wire> Wire for SignedMessage<TrellisContext, M> {
    fn put(&self, out: &mut Vec<u8>) {
        self.message.put(out);
        self.signature.put(out);
    }
    fn get(reader: &mut Reader<'_>) -> Result<Self, CodecError> {
        let message = M::get(reader)?;
        Ok(SignedMessage::new(message, ed::Signature::get(reader)?))
    }
}

impl<T: Wire> Wire for Option<T> {
    fn put(&self, out: &mut Vec<u8>) {
        match self {
            None => out.push(0),
            Some(value) => {
                out.push(1);
                value.put(out);
            }
        }
    }
    fn get(reader: &mut Reader<'_>) -> Result<Self, CodecError> {
        match get::<u8>(reader)? {
            0 => Ok(None),
            1 => Ok(Some(T::get(reader)?)),
            tag => Err(bad_tag("option", tag)),
        }
    }
}

impl Wire for ConsensusVote {
    fn put(&self, out: &mut Vec<u8>) {
        self.height.put(out);
        self.round.put(out);
        self.vote_type.put(out);
        self.value.put(out);
        self.validator.put(out);
        self.extension.put(out);
    }
    fn get(reader: &mut Reader<'_>) -> Result<Self, CodecError> {
        Ok(ConsensusVote {
            height: Wire::get(reader)?,
            round: Wire::get(reader)?,
            vote_type: Wire::get(reader)?,
            value: Wire::get(reader)?,
            validator: Wire::get(reader)?,
            extension: Wire::get(reader)?,
        })
    }
}

impl Wire for Proposal {
    fn put(&self, out: &mut Vec<u8>) {
        self.height.put(out);
        self.round.put(out);
        self.value.put(out);
        self.pol_round.put(out);
        self.proposer.put(out);
    }
    fn get(reader: &mut Reader<'_>) -> Result<Self, CodecError> {
        Ok(Proposal {
            height: Wire::get(reader)?,
            round: Wire::get(reader)?,
            value: Wire::get(reader)?,
            pol_round: Wire::get(reader)?,
            proposer: Wire::get(reader)?,
        })
    }
}

impl Wire for BlockPart {
    fn put(&self, out: &mut Vec<u8>) {
        self.height.put(out);
        self.round.put(out);
        self.valid_round.put(out);
        self.proposer.put(out);
        encode_bytes(&self.block, out);
        self.signature.encode_to(out);
    }
    fn get(reader: &mut Reader<'_>) -> Result<Self, CodecError> {
        Ok(BlockPart {
            height: Wire::get(reader)?,
            round: Wire::get(reader)?,
            valid_round: Wire::get(reader)?,
            proposer: Wire::get(reader)?,
            block: get_bytes(reader, "proposed block", MAX_BLOCK_BYTES)?,
            signature: get::<Signature>(reader)?,
        })
    }
}

impl Wire for SignedConsensusMsg<TrellisContext> {
    fn put(&self, out: &mut Vec<u8>) {
        match self {
            SignedConsensusMsg::Vote(vote) => {
                out.push(1);
                vote.put(out);
            }
            SignedConsensusMsg::Proposal(proposal) => {
                out.push(2);
                proposal.put(out);
            }
        }
    }
    fn get(reader: &mut Reader<'_>) -> Result<Self, CodecError> {
        match get::<u8>(reader)? {
            1 => Ok(SignedConsensusMsg::Vote(Wire::get(reader)?)),
            2 => Ok(SignedConsensusMsg::Proposal(Wire::get(reader)?)),
            tag => Err(bad_tag("consensus message", tag)),
        }
    }
}

impl Wire for PolkaSignature<TrellisContext> {
    fn put(&self, out: &mut Vec<u8>) {
        self.address.put(out);
        self.signature.put(out);
    }
    fn get(reader: &mut Reader<'_>) -> Result<Self, CodecError> {
        Ok(PolkaSignature::new(Wire::get(reader)?, Wire::get(reader)?))
    }
}

impl Wire for PolkaCertificate<TrellisContext> {
    fn put(&self, out: &mut Vec<u8>) {
        self.height.put(out);
        self.round.put(out);
        self.value_id.put(out);
        put_seq(&self.polka_signatures, out);
    }
    fn get(reader: &mut Reader<'_>) -> Result<Self, CodecError> {
        Ok(PolkaCertificate {
            height: Wire::get(reader)?,
            round: Wire::get(reader)?,
            value_id: Wire::get(reader)?,
            polka_signatures: get_seq(reader, "polka signatures", MAX_CERTIFICATE_SIGNATURES, MIN_SIGNATURE_ITEM)?,
        })
    }
}

impl Wire for RoundSignature<TrellisContext> {
    fn put(&self, out: &mut Vec<u8>) {
        self.vote_type.put(out);
        self.value_id.put(out);
        self.address.put(out);
        self.signature.put(out);
    }
    fn get(reader: &mut Reader<'_>) -> Result<Self, CodecError> {
        Ok(RoundSignature {
            vote_type: Wire::get(reader)?,
            value_id: Wire::get(reader)?,
            address: Wire::get(reader)?,
            signature: Wire::get(reader)?,
        })
    }
}

impl Wire for RoundCertificate<TrellisContext> {
    fn put(&self, out: &mut Vec<u8>) {
        self.height.put(out);
        self.round.put(out);
        out.push(match self.cert_type {
            RoundCertificateType::Skip => 1,
            RoundCertificateType::Precommit => 2,
        });
        put_seq(&self.round_signatures, out);
    }
    fn get(reader: &mut Reader<'_>) -> Result<Self, CodecError> {
        let height = Wire::get(reader)?;
        let round = Wire::get(reader)?;
        let cert_type = match get::<u8>(reader)? {
            1 => RoundCertificateType::Skip,
            2 => RoundCertificateType::Precommit,
            tag => return Err(bad_tag("round certificate type", tag)),
        };
        Ok(RoundCertificate {
            height,
            round,
            cert_type,
            round_signatures: get_seq(reader, "round signatures", MAX_CERTIFICATE_SIGNATURES, MIN_SIGNATURE_ITEM)?,
        })
    }
}

impl Wire for LivenessMsg<TrellisContext> {
    fn put(&self, out: &mut Vec<u8>) {
        match self {
            LivenessMsg::Vote(vote) => {
                out.push(1);
                vote.put(out);
            }
            LivenessMsg::PolkaCertificate(certificate) => {
                out.push(2);
                certificate.put(out);
            }
            LivenessMsg::SkipRoundCertificate(certificate) => {
                out.push(3);
                certificate.put(out);
            }
        }
    }
    fn get(reader: &mut Reader<'_>) -> Result<Self, CodecError> {
        match get::<u8>(reader)? {
            1 => Ok(LivenessMsg::Vote(Wire::get(reader)?)),
            2 => Ok(LivenessMsg::PolkaCertificate(Wire::get(reader)?)),
            3 => Ok(LivenessMsg::SkipRoundCertificate(Wire::get(reader)?)),
            tag => Err(bad_tag("liveness message", tag)),
        }
    }
}

impl Wire for StreamMessage<BlockPart> {
    fn put(&self, out: &mut Vec<u8>) {
        encode_bytes(&self.stream_id.to_bytes(), out);
        self.sequence.encode_to(out);
        match &self.content {
            StreamContent::Data(part) => {
                out.push(1);
                part.put(out);
            }
            StreamContent::Fin => out.push(2),
        }
    }
    fn get(reader: &mut Reader<'_>) -> Result<Self, CodecError> {
        let stream_id = StreamId::new(get_bytes(reader, "stream id", MAX_SMALL_BYTES)?);
        let sequence = get::<u64>(reader)?;
        let content = match get::<u8>(reader)? {
            1 => StreamContent::Data(BlockPart::get(reader)?),
            2 => StreamContent::Fin,
            tag => return Err(bad_tag("stream content", tag)),
        };
        Ok(StreamMessage::new(stream_id, sequence, content))
    }
}

impl Wire for ValidatorProof<TrellisContext> {
    fn put(&self, out: &mut Vec<u8>) {
        encode_bytes(&self.public_key, out);
        encode_bytes(&self.peer_id, out);
        self.signature.put(out);
    }
    fn get(reader: &mut Reader<'_>) -> Result<Self, CodecError> {
        let public_key = decode_bytes(reader, "validator public key", MAX_SMALL_BYTES)?;
        let peer_id = decode_bytes(reader, "validator peer id", MAX_SMALL_BYTES)?;
        Ok(ValidatorProof::new(public_key, peer_id, Wire::get(reader)?))
    }
}

impl Wire for PeerId {
    fn put(&self, out: &mut Vec<u8>) {
        encode_bytes(&self.to_bytes(), out);
    }
    fn get(reader: &mut Reader<'_>) -> Result<Self, CodecError> {
        let bytes = decode_bytes(reader, "peer id", MAX_SMALL_BYTES)?;
        PeerId::from_bytes(&bytes).map_err(|_| CodecError::PeerId)
    }
}

impl Wire for Status<TrellisContext> {
    fn put(&self, out: &mut Vec<u8>) {
        self.peer_id.put(out);
        self.tip_height.put(out);
        self.history_min_height.put(out);
    }
    fn get(reader: &mut Reader<'_>) -> Result<Self, CodecError> {
        Ok(Status {
            peer_id: Wire::get(reader)?,
            tip_height: Wire::get(reader)?,
            history_min_height: Wire::get(reader)?,
        })
    }
}

impl Wire for Request<TrellisContext> {
    fn put(&self, out: &mut Vec<u8>) {
        match self {
            Request::ValueRequest(request) => {
                out.push(1);
                request.range.start().put(out);
                request.range.end().put(out);
            }
        }
    }
    fn get(reader: &mut Reader<'_>) -> Result<Self, CodecError> {
        match get::<u8>(reader)? {
            1 => {
                let start = BlockHeight::get(reader)?;
                let end = BlockHeight::get(reader)?;
                if end < start {
                    return Err(CodecError::EmptyRange);
                }
                let range: RangeInclusive<BlockHeight> = start..=end;
                Ok(Request::ValueRequest(ValueRequest::new(range)))
            }
            tag => Err(bad_tag("sync request", tag)),
        }
    }
}

impl Wire for ExtendedCommitSignature<TrellisContext> {
    fn put(&self, out: &mut Vec<u8>) {
        self.address.put(out);
        self.signature.put(out);
        self.extension.put(out);
    }
    fn get(reader: &mut Reader<'_>) -> Result<Self, CodecError> {
        Ok(ExtendedCommitSignature::new(Wire::get(reader)?, Wire::get(reader)?, Wire::get(reader)?))
    }
}

impl Wire for ExtendedCommitCertificate<TrellisContext> {
    fn put(&self, out: &mut Vec<u8>) {
        self.height.put(out);
        self.round.put(out);
        self.value_id.put(out);
        put_seq(&self.commit_signatures, out);
    }
    fn get(reader: &mut Reader<'_>) -> Result<Self, CodecError> {
        Ok(ExtendedCommitCertificate {
            height: Wire::get(reader)?,
            round: Wire::get(reader)?,
            value_id: Wire::get(reader)?,
            commit_signatures: get_seq(reader, "commit signatures", MAX_CERTIFICATE_SIGNATURES, MIN_SIGNATURE_ITEM)?,
        })
    }
}

impl Wire for RawDecidedValue<TrellisContext> {
    fn put(&self, out: &mut Vec<u8>) {
        encode_bytes(&self.value_bytes, out);
        self.certificate.put(out);
    }
    fn get(reader: &mut Reader<'_>) -> Result<Self, CodecError> {
        let value_bytes = get_bytes(reader, "decided block", MAX_BLOCK_BYTES)?;
        Ok(RawDecidedValue::new(value_bytes, Wire::get(reader)?))
    }
}

impl Wire for Response<TrellisContext> {
    fn put(&self, out: &mut Vec<u8>) {
        match self {
            Response::ValueResponse(response) => {
                out.push(1);
                response.start_height.put(out);
                put_seq(&response.values, out);
            }
        }
    }
    fn get(reader: &mut Reader<'_>) -> Result<Self, CodecError> {
        match get::<u8>(reader)? {
            1 => {
                let start_height = BlockHeight::get(reader)?;
                let values = get_seq(reader, "synced values", MAX_SYNC_VALUES, 4 + 8 + 5 + 32 + 4)?;
                Ok(Response::ValueResponse(ValueResponse::new(start_height, values)))
            }
            tag => Err(bad_tag("sync response", tag)),
        }
    }
}

impl Wire for Validity {
    fn put(&self, out: &mut Vec<u8>) {
        out.push(u8::from(self.is_valid()));
    }
    fn get(reader: &mut Reader<'_>) -> Result<Self, CodecError> {
        Ok(Validity::from_bool(get::<bool>(reader)?))
    }
}

impl Wire for ProposedValue<TrellisContext> {
    fn put(&self, out: &mut Vec<u8>) {
        self.height.put(out);
        self.round.put(out);
        self.valid_round.put(out);
        self.proposer.put(out);
        self.value.put(out);
        self.validity.put(out);
    }
    fn get(reader: &mut Reader<'_>) -> Result<Self, CodecError> {
        Ok(ProposedValue {
            height: Wire::get(reader)?,
            round: Wire::get(reader)?,
            valid_round: Wire::get(reader)?,
            proposer: Wire::get(reader)?,
            value: Wire::get(reader)?,
            validity: Wire::get(reader)?,
        })
    }
}

/// The codec the engine uses for the network, value sync and the WAL.
#[derive(Clone, Copy, Debug, Default)]
pub struct TrellisCodec;

impl TrellisCodec {
    fn to_vec<T: Wire>(msg: &T) -> Vec<u8> {
        let mut out = Vec::new();
        msg.put(&mut out);
        out
    }
}

impl<T: Wire + Send + Sync + 'static> Codec<T> for TrellisCodec {
    type Error = CodecError;

    fn decode(&self, bytes: Bytes) -> Result<T, CodecError> {
        let mut reader = Reader::new(&bytes);
        let value = T::get(&mut reader)?;
        reader.finish()?;
        Ok(value)
    }

    fn encode(&self, msg: &T) -> Result<Bytes, CodecError> {
        Ok(Bytes::from(Self::to_vec(msg)))
    }
}

impl HasEncodedLen<Response<TrellisContext>> for TrellisCodec {
    fn encoded_len(&self, msg: &Response<TrellisContext>) -> Result<usize, CodecError> {
        Ok(Self::to_vec(msg).len())
    }
}
