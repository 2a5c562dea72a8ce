//! The consensus codec round-trips every message kind, refuses malformed bytes without
//! panicking, and signatures bind to the chain, the message kind and every field.

use arc_malachitebft_app_channel::app::consensus::{LivenessMsg, ProposedValue, SignedConsensusMsg};
use arc_malachitebft_app_channel::app::streaming::{StreamContent, StreamId, StreamMessage};
use arc_malachitebft_app_channel::app::types::codec::Codec;
use arc_malachitebft_app_channel::app::types::core::{
    Context, ExtendedCommitCertificate, ExtendedCommitSignature, NilOrVal, PolkaCertificate, PolkaSignature, Round,
    RoundCertificate, RoundCertificateType, RoundSignature, SignedMessage, ValidatorProof, Validity, VoteType,
};
use arc_malachitebft_app_channel::app::types::PeerId;
use arc_malachitebft_app_channel::{Signer, Verifier};
use arc_malachitebft_sync::{RawDecidedValue, Request, Response, Status, ValueRequest, ValueResponse};
use bytes::Bytes;
use proptest::prelude::*;
use trellis_consensus::{
    BlockHeight, BlockId, BlockPart, ConsensusVote, TrellisCodec, TrellisContext, TrellisSigner, TrellisVerifier,
    Validator, ValidatorAddress, ValidatorSet,
};
use trellis_proto::{Hash, Keypair};

const CHAIN: &str = "wire-test";

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(future)
}

fn roundtrip<T>(value: &T) -> T
where
    TrellisCodec: Codec<T>,
    T: std::fmt::Debug + PartialEq,
{
    let bytes = TrellisCodec.encode(value).unwrap();
    let back: T = TrellisCodec.decode(bytes.clone()).unwrap();
    assert_eq!(&back, value);
    // One canonical form: re-encoding gives the same bytes.
    assert_eq!(TrellisCodec.encode(&back).unwrap(), bytes);
    // Any strict prefix and any trailing byte are refused.
    for cut in 0..bytes.len() {
        assert!(Codec::<T>::decode(&TrellisCodec, bytes.slice(..cut)).is_err(), "prefix of {} bytes decoded", cut);
    }
    let mut longer = bytes.to_vec();
    longer.push(0);
    assert!(Codec::<T>::decode(&TrellisCodec, Bytes::from(longer)).is_err());
    back
}

fn key(seed: u8) -> Keypair {
    Keypair::from_seed([seed; 32])
}

fn signed_vote(
    signer: &TrellisSigner,
    height: u64,
    round: u32,
    value: Option<[u8; 32]>,
) -> SignedMessage<TrellisContext, ConsensusVote> {
    let ctx = TrellisContext::new(CHAIN);
    let address = ValidatorAddress(signer.public_key().address());
    let value = value.map_or(NilOrVal::Nil, |v| NilOrVal::Val(BlockId(Hash(v))));
    let vote = ctx.new_precommit(BlockHeight(height), Round::new(round), value, address);
    block_on(signer.sign_vote(vote)).unwrap()
}

#[test]
fn every_engine_message_roundtrips() {
    let signer = TrellisSigner::new(CHAIN, key(1));
    let ctx = TrellisContext::new(CHAIN);
    let address = ValidatorAddress(signer.public_key().address());
    let vote = signed_vote(&signer, 7, 2, Some([3; 32]));
    roundtrip(&SignedConsensusMsg::<TrellisContext>::Vote(vote.clone()));
    let nil_vote = signed_vote(&signer, 7, 0, None);
    roundtrip(&LivenessMsg::<TrellisContext>::Vote(nil_vote));

    let proposal = ctx.new_proposal(BlockHeight(7), Round::new(2), BlockId(Hash([4; 32])), Round::Nil, address);
    let signed_proposal = block_on(signer.sign_proposal(proposal)).unwrap();
    roundtrip(&SignedConsensusMsg::<TrellisContext>::Proposal(signed_proposal));

    let polka = PolkaCertificate {
        height: BlockHeight(7),
        round: Round::new(2),
        value_id: BlockId(Hash([3; 32])),
        polka_signatures: vec![PolkaSignature::new(address, vote.signature)],
    };
    roundtrip(&polka);
    roundtrip(&LivenessMsg::<TrellisContext>::PolkaCertificate(polka));

    let mut part = BlockPart {
        height: BlockHeight(7),
        round: Round::new(2),
        valid_round: Round::new(1),
        proposer: address,
        block: Bytes::from_static(b"block bytes"),
        signature: trellis_proto::Signature([0; 64]),
    };
    part.signature = signer.sign_part(&part);
    roundtrip(&part);
    let stream = StreamMessage::new(StreamId::new(Bytes::from_static(b"id")), 0, StreamContent::Data(part));
    roundtrip(&stream);
    roundtrip(&StreamMessage::<BlockPart>::new(StreamId::new(Bytes::from_static(b"id")), 1, StreamContent::Fin));

    let proof = block_on(signer.sign_validator_proof(signer.public_key().0.to_vec(), vec![0, 1, 2])).unwrap();
    roundtrip(&proof);

    let certificate = ExtendedCommitCertificate {
        height: BlockHeight(7),
        round: Round::new(2),
        value_id: BlockId(Hash([3; 32])),
        commit_signatures: vec![ExtendedCommitSignature::new(address, vote.signature, None)],
    };
    roundtrip(&certificate);
    roundtrip(&Request::<TrellisContext>::ValueRequest(ValueRequest::new(BlockHeight(3)..=BlockHeight(9))));
    let response = Response::<TrellisContext>::ValueResponse(ValueResponse::new(
        BlockHeight(7),
        vec![RawDecidedValue::new(Bytes::from_static(b"a block"), certificate)],
    ));
    roundtrip(&response);
    roundtrip(&ProposedValue::<TrellisContext> {
        height: BlockHeight(7),
        round: Round::new(2),
        valid_round: Round::Nil,
        proposer: address,
        value: BlockId(Hash([3; 32])),
        validity: Validity::Invalid,
    });
}

#[test]
fn a_reversed_sync_range_is_refused() {
    let mut bytes = vec![1u8];
    bytes.extend_from_slice(&9u64.to_le_bytes());
    bytes.extend_from_slice(&3u64.to_le_bytes());
    assert!(Codec::<Request<TrellisContext>>::decode(&TrellisCodec, Bytes::from(bytes)).is_err());
}

#[test]
fn signatures_bind_to_chain_kind_and_fields() {
    let signer = TrellisSigner::new(CHAIN, key(1));
    let verifier = TrellisVerifier::new(CHAIN);
    let other_chain = TrellisVerifier::new("other-chain");
    let consensus_key = Validator::new(signer.public_key(), 1).unwrap().consensus_key;
    let vote = signed_vote(&signer, 5, 0, Some([9; 32]));
    let ok = block_on(verifier.verify_signed_vote(&vote.message, &vote.signature, &consensus_key)).unwrap();
    assert!(ok.is_valid());
    let foreign = block_on(other_chain.verify_signed_vote(&vote.message, &vote.signature, &consensus_key)).unwrap();
    assert!(foreign.is_invalid());
    let mut changed = vote.message.clone();
    changed.round = Round::new(1);
    assert!(block_on(verifier.verify_signed_vote(&changed, &vote.signature, &consensus_key)).unwrap().is_invalid());
    // A vote signature is not a proposal signature for the same bytes' owner.
    let ctx = TrellisContext::new(CHAIN);
    let proposal =
        ctx.new_proposal(BlockHeight(5), Round::new(0), BlockId(Hash([9; 32])), Round::Nil, vote.message.validator);
    assert!(block_on(verifier.verify_signed_proposal(&proposal, &vote.signature, &consensus_key))
        .unwrap()
        .is_invalid());
    // The vote's signature is exactly the chain's vote signature, so evidence can be checked.
    let proto = trellis_proto::SignedVote {
        vote: vote.message.to_proto().unwrap(),
        signature: trellis_consensus::signing::from_consensus_signature(&vote.signature),
    };
    proto.verify(CHAIN, &signer.public_key()).unwrap();
    // Parts: the proposer's signature covers the block bytes.
    let mut part = BlockPart {
        height: BlockHeight(5),
        round: Round::new(0),
        valid_round: Round::Nil,
        proposer: vote.message.validator,
        block: Bytes::from_static(b"x"),
        signature: trellis_proto::Signature([0; 64]),
    };
    part.signature = signer.sign_part(&part);
    assert!(verifier.verify_part(&part, &signer.public_key()));
    part.block = Bytes::from_static(b"y");
    assert!(!verifier.verify_part(&part, &signer.public_key()));
}

#[test]
fn round_zero_proposers_follow_stake_and_later_rounds_walk_the_address_order() {
    let validators: Vec<Validator> =
        (1..=4).map(|s| Validator::new(key(s).public_key(), 10 * u64::from(s)).unwrap()).collect();
    let set = ValidatorSet::new(validators.into_iter().rev().collect());
    let addresses: Vec<_> = set.validators().iter().map(|v| v.address).collect();
    let mut sorted = addresses.clone();
    sorted.sort();
    assert_eq!(addresses, sorted);
    let at = |h, r| set.proposer(BlockHeight(h), Round::new(r)).unwrap().address;
    let index = |address| addresses.iter().position(|a| *a == address).unwrap();
    // Later rounds step along the address order, so n rounds visit every validator.
    for height in 1..50 {
        let first = index(at(height, 0));
        for round in 1..8u32 {
            assert_eq!(index(at(height, round)), (first + round as usize) % 4);
        }
        assert_eq!(at(height, 3), at(height, 3), "a pure function of (height, round)");
    }
    // Round 0 follows stake: over 40,000 heights each validator proposes its power's share.
    let heights = 40_000u64;
    let mut counts = [0u64; 4];
    for height in 1..=heights {
        counts[index(at(height, 0))] += 1;
    }
    for (validator, count) in set.validators().iter().zip(counts) {
        let expected = heights as f64 * validator.power as f64 / 100.0;
        let sd = (expected * (1.0 - validator.power as f64 / 100.0)).sqrt();
        assert!(
            (count as f64 - expected).abs() < 5.0 * sd,
            "power {} proposed {count} of {heights}, expected {expected:.0}",
            validator.power
        );
    }
}

/// A jailed validator keeps its vote but leaves the proposer draw: it is never the proposer of
/// any round, the others still propose by stake and in turn, a set with nobody barred draws as
/// before, and a set barring everyone still has a proposer.
#[test]
fn barred_validators_never_propose_and_the_others_share_every_round() {
    use std::collections::BTreeSet;
    let validators: Vec<Validator> =
        (1..=4).map(|s| Validator::new(key(s).public_key(), 10 * u64::from(s)).unwrap()).collect();
    let full = ValidatorSet::new(validators);
    let addresses: Vec<_> = full.validators().iter().map(|v| v.address).collect();
    let barred: BTreeSet<_> = [addresses[2]].into();
    let set = full.clone().barring_proposers(&barred);
    assert_eq!(set.validators(), full.validators(), "barring a proposer keeps its vote");
    assert!(!set.may_propose(&addresses[2]) && set.may_propose(&addresses[0]));
    let at = |set: &ValidatorSet, h, r| set.proposer(BlockHeight(h), Round::new(r)).unwrap().address;
    let others: Vec<_> = addresses.iter().copied().filter(|a| !barred.contains(a)).collect();
    let mut counts = [0u64; 4];
    for height in 1..=20_000u64 {
        let first = others.iter().position(|a| *a == at(&set, height, 0)).expect("an unbarred proposer");
        counts[addresses.iter().position(|a| *a == at(&set, height, 0)).unwrap()] += 1;
        for round in 1..7u32 {
            assert_eq!(at(&set, height, round), others[(first + round as usize) % 3], "height {height} round {round}");
        }
    }
    assert_eq!(counts[2], 0, "a barred validator proposed");
    // Round 0 still follows stake among the others.
    let power = |i: usize| full.validators()[i].power as f64;
    let unbarred_power: f64 = [0, 1, 3].iter().map(|&i| power(i)).sum();
    for index in [0, 1, 3] {
        let share = counts[index] as f64 / 20_000.0;
        assert!((share - power(index) / unbarred_power).abs() < 0.02, "power {}: share {share}", power(index));
    }
    let unbarred = full.clone().barring_proposers(&BTreeSet::new());
    for height in 1..200 {
        assert_eq!(at(&unbarred, height, 0), at(&full, height, 0));
    }
    let everyone: BTreeSet<_> = addresses.iter().copied().collect();
    let all_barred = full.clone().barring_proposers(&everyone);
    for height in 1..200 {
        assert_eq!(at(&all_barred, height, 1), at(&full, height, 1), "barring everyone bars nobody");
    }
}

/// Encodings of every message type the codec decodes, each after the selector byte that makes
/// the `decode_consensus` fuzz target read it as that type (the order of its `decode` arms).
fn fuzz_seeds() -> Vec<(&'static str, Vec<u8>)> {
    fn seed<T>(selector: u8, value: &T) -> Vec<u8>
    where
        TrellisCodec: Codec<T>,
    {
        [&[selector][..], &TrellisCodec.encode(value).unwrap()].concat()
    }
    let signer = TrellisSigner::new(CHAIN, key(1));
    let ctx = TrellisContext::new(CHAIN);
    let address = ValidatorAddress(signer.public_key().address());
    let vote = signed_vote(&signer, 7, 2, Some([3; 32]));
    let proposal = ctx.new_proposal(BlockHeight(7), Round::new(2), BlockId(Hash([4; 32])), Round::new(1), address);
    let proposal = block_on(signer.sign_proposal(proposal)).unwrap();
    let mut part = BlockPart {
        height: BlockHeight(7),
        round: Round::new(2),
        valid_round: Round::Nil,
        proposer: address,
        block: Bytes::from_static(b"block bytes"),
        signature: trellis_proto::Signature([0; 64]),
    };
    part.signature = signer.sign_part(&part);
    let polka = PolkaCertificate {
        height: BlockHeight(7),
        round: Round::new(2),
        value_id: BlockId(Hash([3; 32])),
        polka_signatures: vec![PolkaSignature::new(address, vote.signature)],
    };
    let skip = RoundCertificate {
        height: BlockHeight(7),
        round: Round::new(3),
        cert_type: RoundCertificateType::Skip,
        round_signatures: vec![RoundSignature {
            vote_type: VoteType::Prevote,
            value_id: NilOrVal::Nil,
            address,
            signature: vote.signature,
        }],
    };
    let certificate = ExtendedCommitCertificate {
        height: BlockHeight(7),
        round: Round::new(2),
        value_id: BlockId(Hash([3; 32])),
        commit_signatures: vec![ExtendedCommitSignature::new(
            address,
            vote.signature,
            Some(SignedMessage::new(Bytes::from_static(b"ext"), vote.signature)),
        )],
    };
    // An identity-multihash peer id: code 0, 32 bytes of digest.
    let peer_id = PeerId::from_bytes(&[&[0u8, 32][..], &[5; 32]].concat()).unwrap();
    let proof = block_on(signer.sign_validator_proof(signer.public_key().0.to_vec(), peer_id.to_bytes())).unwrap();
    vec![
        ("vote", seed(0, &SignedConsensusMsg::<TrellisContext>::Vote(vote.clone()))),
        ("proposal", seed(0, &SignedConsensusMsg::<TrellisContext>::Proposal(proposal))),
        ("liveness_vote", seed(1, &LivenessMsg::<TrellisContext>::Vote(vote))),
        ("liveness_polka", seed(1, &LivenessMsg::<TrellisContext>::PolkaCertificate(polka.clone()))),
        ("liveness_skip", seed(1, &LivenessMsg::<TrellisContext>::SkipRoundCertificate(skip))),
        (
            "stream_data",
            seed(
                2,
                &StreamMessage::new(StreamId::new(Bytes::from_static(b"id")), 0, StreamContent::Data(part.clone())),
            ),
        ),
        (
            "stream_fin",
            seed(2, &StreamMessage::<BlockPart>::new(StreamId::new(Bytes::from_static(b"id")), 1, StreamContent::Fin)),
        ),
        ("block_part", seed(3, &part)),
        ("validator_proof", seed(4, &proof)),
        (
            "sync_status",
            seed(
                5,
                &Status::<TrellisContext> { peer_id, tip_height: BlockHeight(9), history_min_height: BlockHeight(1) },
            ),
        ),
        (
            "sync_request",
            seed(6, &Request::<TrellisContext>::ValueRequest(ValueRequest::new(BlockHeight(3)..=BlockHeight(9)))),
        ),
        (
            "sync_response",
            seed(
                7,
                &Response::<TrellisContext>::ValueResponse(ValueResponse::new(
                    BlockHeight(7),
                    vec![RawDecidedValue::new(Bytes::from_static(b"a block"), certificate.clone())],
                )),
            ),
        ),
        (
            "wal_proposed_value",
            seed(
                8,
                &ProposedValue::<TrellisContext> {
                    height: BlockHeight(7),
                    round: Round::new(2),
                    valid_round: Round::Nil,
                    proposer: address,
                    value: BlockId(Hash([3; 32])),
                    validity: Validity::Valid,
                },
            ),
        ),
        ("wal_polka", seed(9, &polka)),
        ("commit_certificate", seed(10, &certificate)),
    ]
}

/// The fuzz target's seeds in `fuzz/seeds/decode_consensus/` are today's encodings, so a codec
/// change cannot leave the fuzzer starting from stale bytes. `TRELLIS_WRITE_FUZZ_SEEDS=1`
/// rewrites them.
#[test]
fn fuzz_seeds_are_current_encodings() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/decode_consensus");
    let write = std::env::var_os("TRELLIS_WRITE_FUZZ_SEEDS").is_some();
    for (name, bytes) in fuzz_seeds() {
        let path = dir.join(name);
        if write {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        } else {
            let stored = std::fs::read(&path).unwrap_or_default();
            assert!(
                stored == bytes,
                "{} is stale: run TRELLIS_WRITE_FUZZ_SEEDS=1 cargo test -p trellis-consensus --test wire",
                path.display()
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let b = Bytes::from(bytes);
        let _ = Codec::<SignedConsensusMsg<TrellisContext>>::decode(&TrellisCodec, b.clone());
        let _ = Codec::<LivenessMsg<TrellisContext>>::decode(&TrellisCodec, b.clone());
        let _ = Codec::<StreamMessage<BlockPart>>::decode(&TrellisCodec, b.clone());
        let _ = Codec::<Response<TrellisContext>>::decode(&TrellisCodec, b.clone());
        let _ = Codec::<Request<TrellisContext>>::decode(&TrellisCodec, b.clone());
        let _ = Codec::<ProposedValue<TrellisContext>>::decode(&TrellisCodec, b.clone());
        let _ = Codec::<PolkaCertificate<TrellisContext>>::decode(&TrellisCodec, b.clone());
        let _ = Codec::<BlockPart>::decode(&TrellisCodec, b.clone());
        let _ = Codec::<Status<TrellisContext>>::decode(&TrellisCodec, b.clone());
        let _ = Codec::<ValidatorProof<TrellisContext>>::decode(&TrellisCodec, b.clone());
        let _ = Codec::<ExtendedCommitCertificate<TrellisContext>>::decode(&TrellisCodec, b);
    }
}
