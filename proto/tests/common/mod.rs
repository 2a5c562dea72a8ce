//! Fixed example values of every encoded type, shared by the golden-vector tests and the
//! fuzz seeds. Changing any of them changes the golden vectors.
#![allow(dead_code)]

use trellis_proto::*;

pub const CHAIN: &str = "trellis-golden";

pub fn key(n: u8) -> Keypair {
    Keypair::from_seed([n; 32])
}

pub fn hash(n: u8) -> Hash {
    Hash([n; 32])
}

pub fn address(n: u8) -> Address {
    Address([n; 20])
}

pub fn job_spec() -> JobSpec {
    JobSpec {
        name: "shakespeare-micro".into(),
        model: ModelConfig { vocab_size: 256, context_length: 128, width: 128, layers: 4, heads: 4 },
        init_seed: 42,
        dataset_root: hash(0xd5),
        dataset_shards: 16,
        diloco: DilocoParams {
            workers_per_round: 4,
            inner_steps: 50,
            batch_size: 16,
            sequence_length: 128,
            learning_rate: 3e-3,
            beta1: 0.9,
            beta2: 0.95,
            weight_decay: 0.1,
            grad_clip: 1.0,
            warmup_steps: 10,
            outer_optimizer: OuterOptimizer::Nesterov,
            outer_learning_rate: 0.7,
            outer_momentum: 0.9,
            rounds: 10,
            encoding: DeltaEncoding::Int8,
            inner_optimizer: Default::default(),
            min_inner_steps: 20,
            fragments: 2,
        },
        aggregation: AggregationRule::CenteredClip { tau: 1.5, iterations: 3 },
        verification: VerificationParams {
            checkpoint_interval: 10,
            segments_per_miner: 2,
            mode: VerificationMode::Tolerance { max_distance: 1e-4 },
            checkpoint_state: Default::default(),
        },
        reward_per_round: Amount(1_000),
        min_miner_stake: Amount(5_000),
        commit_blocks: 30,
        verify_blocks: 20,
    }
}

pub fn work_reveal() -> WorkReveal {
    WorkReveal {
        job: JobId(7),
        round: 3,
        trail: hash(1),
        final_checkpoint: hash(2),
        delta_hash: hash(3),
        residual_hash: hash(4),
        steps: 40,
        continues: hash(5),
        next_residual: hash(6),
    }
}

pub fn work_commitment() -> WorkCommitment {
    WorkCommitment { job: JobId(7), round: 3, binding: work_reveal().binding(&address(9)) }
}

pub fn trail() -> Trail {
    Trail {
        job: JobId(7),
        round: 3,
        worker: 1,
        checkpoint_interval: 4,
        checkpoints: (0..3u8).map(|i| TrailEntry { step: 30 + 4 * u64::from(i), hash: hash(0x20 + i) }).collect(),
        losses: (0..8).map(|i| 3.0 - i as f32 * 0.125).collect(),
        proofs: vec![hash(0x30), hash(0x31)],
        final_moments: hash(0x32),
    }
}

pub fn verdict_job_fault() -> Verdict {
    Verdict {
        job: JobId(7),
        round: 3,
        miner: address(9),
        segment: 1,
        outcome: VerdictOutcome::JobFault { reason: JobFaultReason::KeysUnusable },
    }
}

pub fn verdict_invalid() -> Verdict {
    Verdict {
        job: JobId(7),
        round: 3,
        miner: address(9),
        segment: 4,
        outcome: VerdictOutcome::Invalid(InvalidEvidence {
            reason: InvalidReason::CheckpointMismatch,
            expected: hash(4),
            reproduced: hash(5),
            distance: 0.0,
        }),
    }
}

pub fn aggregate() -> Aggregate {
    Aggregate {
        job: JobId(7),
        round: 3,
        model_hash: hash(6),
        momentum_hash: hash(7),
        accepted: vec![address(1), address(2)],
    }
}

pub fn signed_vote(signer: &Keypair, value: Option<Hash>) -> SignedVote {
    let vote =
        Vote { height: Height(12), round: 0, vote_type: VoteType::Precommit, value, validator: signer.address() };
    let signature = signer.sign(CHAIN, SigningKind::Vote, &vote.to_bytes());
    SignedVote { vote, signature }
}

pub fn equivocation() -> EquivocationEvidence {
    let signer = key(5);
    EquivocationEvidence {
        validator: signer.public_key(),
        first: signed_vote(&signer, Some(hash(10))),
        second: signed_vote(&signer, Some(hash(11))),
    }
}

/// A block part header signed by `signer` for height 12, round 3.
pub fn signed_part(signer: &Keypair, block: Hash) -> SignedProposalClaim {
    let header =
        PartHeader { height: Height(12), round: Some(3), valid_round: None, proposer: signer.address(), block };
    let signature = signer.sign(CHAIN, SigningKind::ProposalPart, &header.to_bytes());
    SignedProposalClaim { claim: ProposalClaim::Part(header), signature }
}

pub fn double_proposal() -> DoubleProposalEvidence {
    let signer = key(5);
    DoubleProposalEvidence {
        proposer: signer.public_key(),
        first: signed_part(&signer, hash(20)),
        second: signed_part(&signer, hash(21)),
    }
}

/// One transaction of each kind, each signed by `key(1)` with increasing nonces.
pub fn one_tx_of_each_kind() -> Vec<SignedTx> {
    let kinds = vec![
        TxKind::Transfer { to: address(2), amount: Amount(250) },
        TxKind::Bond { role: Role::Validator, amount: Amount(10_000) },
        TxKind::Unbond { role: Role::Miner, amount: Amount(500) },
        TxKind::SubmitJob { spec: job_spec(), escrow: Amount(10_000) },
        TxKind::JoinJob { job: JobId(7) },
        TxKind::CommitWork(work_commitment()),
        TxKind::Verdict(verdict_invalid()),
        TxKind::CommitAggregate(aggregate()),
        TxKind::CancelJob { job: JobId(7) },
        TxKind::ReportEquivocation(equivocation()),
        TxKind::RevealWork(work_reveal()),
        TxKind::Verdict(Verdict { outcome: VerdictOutcome::Abstain, ..verdict_invalid() }),
        TxKind::Verdict(verdict_job_fault()),
        TxKind::CommitBeacon { tip: hash(0xcd), layers: 1 << 20 },
        TxKind::ReportDoubleProposal(Box::new(double_proposal())),
    ];
    let signer = key(1);
    kinds
        .into_iter()
        .enumerate()
        .map(|(nonce, kind)| {
            Transaction { sender: signer.public_key(), nonce: nonce as u64, fee: Amount(1), kind }.sign(CHAIN, &signer)
        })
        .collect()
}

pub fn block() -> Block {
    let txs = one_tx_of_each_kind();
    let header = BlockHeader {
        chain_id: CHAIN.into(),
        height: Height(12),
        time_ms: 1_790_000_000_000,
        parent: hash(0xaa),
        tx_root: Block::compute_tx_root(&txs),
        state_root: hash(0xbb),
        proposer: key(5).address(),
        beacon_reveal: hash(0xcc),
    };
    Block { header, txs }
}
