//! A double vote or double proposal reported by the consensus engine, and two block parts one
//! proposer signed for one round, become equivocation reports that the chain accepts and that
//! slash the double signer.

use arc_malachitebft_app_channel::app::consensus::MisbehaviorEvidence;
use arc_malachitebft_app_channel::app::types::core::{Context, NilOrVal, Round, SignedMessage};
use arc_malachitebft_app_channel::Signer;
use bytes::Bytes;
use trellis_consensus::{
    BlockHeight, BlockId, BlockPart, ConsensusVote, Proposal, TrellisContext, TrellisSigner, Validator,
    ValidatorAddress, ValidatorSet,
};
use trellis_contracts::{BlockCtx, Chain, Event, Genesis, MemoryKv, Params, SlashReason};
use trellis_node::engine::consensus_app::{evidence_transactions, PartWitness};
use trellis_proto::{Hash, Keypair, SignedTx, TxKind};

const CHAIN: &str = "evidence-test";

fn precommit(key: &Keypair, value: u8) -> SignedMessage<TrellisContext, ConsensusVote> {
    let ctx = TrellisContext::new(CHAIN);
    let vote = ctx.new_precommit(
        BlockHeight(5),
        Round::new(0),
        NilOrVal::Val(BlockId(Hash([value; 32]))),
        ValidatorAddress(key.address()),
    );
    let signer = TrellisSigner::new(CHAIN, Keypair::from_seed(key.seed()));
    tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(signer.sign_vote(vote)).unwrap()
}

#[test]
fn a_double_vote_from_the_engine_becomes_a_slashing_transaction() {
    let keys: Vec<Keypair> = (1..=4).map(|s| Keypair::from_seed([s; 32])).collect();
    let reporter = &keys[0];
    let offender = &keys[2];
    let set = ValidatorSet::new(keys.iter().map(|k| Validator::new(k.public_key(), 20_000).unwrap()).collect());

    let mut votes = arc_malachitebft_core_votekeeper::EvidenceMap::new();
    votes.add(precommit(offender, 1), precommit(offender, 2));
    // Not evidence: the same vote twice, and a double vote by someone outside the set.
    let outsider = Keypair::from_seed([9; 32]);
    votes.add(precommit(&outsider, 1), precommit(&outsider, 2));
    let evidence = MisbehaviorEvidence { proposals: arc_malachitebft_core_driver::EvidenceMap::new(), votes };

    let txs = evidence_transactions(CHAIN, &set, &evidence, reporter, 7);
    assert_eq!(txs.len(), 1, "only the validator's double vote is reported");
    let tx = &txs[0];
    assert_eq!(tx.tx.nonce, 7);
    let TxKind::ReportEquivocation(reported) = &tx.tx.kind else { panic!("not an equivocation report") };
    assert_eq!(reported.validator, offender.public_key());
    reported.verify(CHAIN).expect("evidence verifies on its own");

    chain_slashes_once(&keys, reporter, tx, offender);
}

/// Applies `tx` (a report by `reporter`, a member of `keys`) on a fresh chain whose validators
/// are `keys`: it slashes `offender` for equivocation, and the same report again is refused.
fn chain_slashes_once(keys: &[Keypair], reporter: &Keypair, tx: &SignedTx, offender: &Keypair) {
    let genesis = Genesis {
        chain_id: CHAIN.into(),
        accounts: keys.iter().map(|k| (k.address(), trellis_proto::Amount(1_000_000))).collect(),
        validators: keys.iter().map(|k| (k.public_key(), trellis_proto::Amount(20_000))).collect(),
        miners: Vec::new(),
        params: Params::default(),
    };
    let mut kv = MemoryKv::new();
    let chain = Chain::init_genesis(&mut kv, &genesis).unwrap();
    let tx = trellis_proto::Transaction { nonce: 0, ..tx.tx.clone() }.sign(CHAIN, reporter);
    let ctx = BlockCtx {
        height: trellis_proto::Height(6),
        time_ms: 6_000,
        randomness: Hash::ZERO,
        proposer: reporter.address(),
    };
    let events = chain.apply_tx(&mut kv, &tx, &ctx).expect("the chain accepts the report");
    assert!(
        events.iter().any(
            |e| matches!(e, Event::Slashed { who, reason: SlashReason::Equivocation, .. } if *who == offender.address())
        ),
        "{events:?}"
    );
    // Reporting the same offence again is refused.
    let again = trellis_proto::Transaction { nonce: 1, ..tx.tx.clone() }.sign(CHAIN, reporter);
    assert!(chain.apply_tx(&mut kv, &again, &ctx).is_err());
}

fn proposal(key: &Keypair, round: u32, value: u8) -> SignedMessage<TrellisContext, Proposal> {
    proposal_locked(key, round, value, Round::Nil)
}

fn proposal_locked(key: &Keypair, round: u32, value: u8, pol_round: Round) -> SignedMessage<TrellisContext, Proposal> {
    let ctx = TrellisContext::new(CHAIN);
    let proposal = ctx.new_proposal(
        BlockHeight(5),
        Round::new(round),
        BlockId(Hash([value; 32])),
        pol_round,
        ValidatorAddress(key.address()),
    );
    let signer = TrellisSigner::new(CHAIN, Keypair::from_seed(key.seed()));
    tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(signer.sign_proposal(proposal)).unwrap()
}

#[test]
fn a_double_proposal_from_the_engine_becomes_one_slashing_transaction_per_round() {
    let keys: Vec<Keypair> = (1..=4).map(|s| Keypair::from_seed([s; 32])).collect();
    let (reporter, offender) = (&keys[0], &keys[1]);
    let set = ValidatorSet::new(keys.iter().map(|k| Validator::new(k.public_key(), 20_000).unwrap()).collect());

    let mut proposals = arc_malachitebft_core_driver::EvidenceMap::new();
    proposals.add(proposal(offender, 0, 1), proposal(offender, 0, 2));
    // The same round again (a third block): the chain slashes a round once, so it is not reported.
    proposals.add(proposal(offender, 0, 1), proposal(offender, 0, 3));
    let outsider = Keypair::from_seed([9; 32]);
    proposals.add(proposal(&outsider, 0, 1), proposal(&outsider, 0, 2));
    // One block with two proof-of-lock rounds: the engine keeps the pair, the chain would not
    // count it (one block, not two), so it is not reported.
    proposals.add(proposal_locked(&keys[2], 1, 4, Round::Nil), proposal_locked(&keys[2], 1, 4, Round::new(0)));
    let evidence = MisbehaviorEvidence { proposals, votes: arc_malachitebft_core_votekeeper::EvidenceMap::new() };

    let txs = evidence_transactions(CHAIN, &set, &evidence, reporter, 3);
    assert_eq!(txs.len(), 1, "one report for the validator's double proposal: {txs:?}");
    assert_eq!(txs[0].tx.nonce, 3);
    let TxKind::ReportDoubleProposal(reported) = &txs[0].tx.kind else { panic!("not a double-proposal report") };
    assert_eq!(reported.proposer, offender.public_key());
    assert_eq!(reported.slot(), (trellis_proto::Height(5), 0));
    reported.verify(CHAIN).expect("evidence verifies on its own");
    chain_slashes_once(&keys, reporter, &txs[0], offender);
}

fn part(key: &Keypair, round: u32, valid_round: Round, block: &[u8]) -> BlockPart {
    let mut part = BlockPart {
        height: BlockHeight(5),
        round: Round::new(round),
        valid_round,
        proposer: ValidatorAddress(key.address()),
        block: Bytes::copy_from_slice(block),
        signature: trellis_proto::Signature([0; 64]),
    };
    part.signature = TrellisSigner::new(CHAIN, Keypair::from_seed(key.seed())).sign_part(&part);
    part
}

#[test]
fn a_proposer_signing_two_blocks_for_one_round_is_reported_once_and_slashed() {
    let keys: Vec<Keypair> = (1..=4).map(|s| Keypair::from_seed([s; 32])).collect();
    let (reporter, offender) = (&keys[0], &keys[1]);
    let mut witness = PartWitness::default();
    let key = offender.public_key();

    assert!(witness.observe(CHAIN, &part(offender, 0, Round::Nil, b"block A"), key).is_none(), "a first part");
    assert!(witness.observe(CHAIN, &part(offender, 0, Round::Nil, b"block A"), key).is_none(), "the same part again");
    // The same block re-signed with a valid round (an honest re-proposal) is one block.
    assert!(witness.observe(CHAIN, &part(offender, 0, Round::new(0), b"block A"), key).is_none());
    // Another round's first part.
    assert!(witness.observe(CHAIN, &part(offender, 1, Round::Nil, b"block C"), key).is_none());

    let evidence = witness
        .observe(CHAIN, &part(offender, 0, Round::Nil, b"block B"), key)
        .expect("a second block for round 0 is a double proposal");
    evidence.verify(CHAIN).expect("the evidence verifies without the blocks");
    assert_eq!(evidence.slot(), (trellis_proto::Height(5), 0));
    // A flood: the third, fourth... blocks of the round are not reported again.
    for n in 0..5u8 {
        assert!(witness.observe(CHAIN, &part(offender, 0, Round::Nil, &[b'x', n]), key).is_none());
    }
    let tx = trellis_proto::Transaction {
        sender: reporter.public_key(),
        nonce: 0,
        fee: trellis_proto::Amount(1),
        kind: TxKind::ReportDoubleProposal(Box::new(evidence)),
    }
    .sign(CHAIN, reporter);
    chain_slashes_once(&keys, reporter, &tx, offender);
}
