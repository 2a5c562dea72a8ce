//! A double vote reported by the consensus engine becomes a `ReportEquivocation` transaction
//! that the chain accepts and that slashes the double signer.

use arc_malachitebft_app_channel::app::consensus::MisbehaviorEvidence;
use arc_malachitebft_app_channel::app::types::core::{Context, NilOrVal, Round, SignedMessage};
use arc_malachitebft_app_channel::Signer;
use trellis_consensus::{
    BlockHeight, BlockId, ConsensusVote, TrellisContext, TrellisSigner, Validator, ValidatorAddress, ValidatorSet,
};
use trellis_contracts::{BlockCtx, Chain, Event, Genesis, MemoryKv, Params, SlashReason};
use trellis_node::engine::consensus_app::evidence_transactions;
use trellis_proto::{Hash, Keypair, TxKind};

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

    // The chain accepts the report and slashes the offender's validator stake.
    let genesis = Genesis {
        chain_id: CHAIN.into(),
        accounts: keys.iter().map(|k| (k.address(), trellis_proto::Amount(1_000_000))).collect(),
        validators: keys.iter().map(|k| (k.public_key(), trellis_proto::Amount(20_000))).collect(),
        miners: Vec::new(),
        params: Params::default(),
    };
    let mut kv = MemoryKv::new();
    let chain = Chain::init_genesis(&mut kv, &genesis).unwrap();
    let mut tx = tx.clone();
    tx.tx.nonce = 0;
    let tx = trellis_proto::Transaction { ..tx.tx }.sign(CHAIN, reporter);
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
    // Reporting the same double vote again is refused.
    let again = trellis_proto::Transaction { nonce: 1, ..tx.tx.clone() }.sign(CHAIN, reporter);
    assert!(chain.apply_tx(&mut kv, &again, &ctx).is_err());
}
