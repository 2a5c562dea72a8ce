//! Property tests: every value round-trips through the canonical encoding, and untrusted
//! bytes (truncated, extended, mutated or random) are rejected with an error, never a panic.

mod common;

use proptest::collection::vec;
use proptest::prelude::*;
use trellis_proto::*;

fn arb_hash() -> impl Strategy<Value = Hash> {
    any::<[u8; 32]>().prop_map(Hash)
}

fn arb_address() -> impl Strategy<Value = Address> {
    any::<[u8; 20]>().prop_map(Address)
}

fn arb_amount() -> impl Strategy<Value = Amount> {
    any::<u64>().prop_map(Amount)
}

fn arb_f32() -> impl Strategy<Value = f32> {
    // Any finite float, negative zero and subnormals included.
    any::<u32>().prop_map(f32::from_bits).prop_filter("finite", |x| x.is_finite())
}

fn arb_role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Validator), Just(Role::Miner)]
}

fn arb_job_spec() -> impl Strategy<Value = JobSpec> {
    let model = (any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>()).prop_map(
        |(vocab_size, context_length, width, layers, heads)| ModelConfig {
            vocab_size,
            context_length,
            width,
            layers,
            heads,
        },
    );
    let diloco = (
        (any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>()),
        (arb_f32(), arb_f32(), arb_f32(), arb_f32(), arb_f32()),
        (any::<u32>(), prop_oneof![Just(OuterOptimizer::Nesterov), Just(OuterOptimizer::Average)]),
        (arb_f32(), arb_f32(), any::<u32>()),
        (
            prop::sample::select(DeltaEncoding::ALL.to_vec()),
            prop_oneof![Just(InnerOptimizer::Adamw), Just(InnerOptimizer::Muon)],
            any::<u32>(),
            any::<u32>(),
        ),
    )
        .prop_map(
            |(
                (w, h, b, s),
                (lr, b1, b2, wd, clip),
                (warm, outer),
                (olr, om, rounds),
                (encoding, inner, min, fragments),
            )| {
                DilocoParams {
                    workers_per_round: w,
                    inner_steps: h,
                    batch_size: b,
                    sequence_length: s,
                    learning_rate: lr,
                    beta1: b1,
                    beta2: b2,
                    weight_decay: wd,
                    grad_clip: clip,
                    warmup_steps: warm,
                    outer_optimizer: outer,
                    outer_learning_rate: olr,
                    outer_momentum: om,
                    rounds,
                    encoding,
                    inner_optimizer: inner,
                    min_inner_steps: min,
                    fragments,
                }
            },
        );
    let aggregation = prop_oneof![
        Just(AggregationRule::Mean),
        any::<u32>().prop_map(|trim| AggregationRule::TrimmedMean { trim }),
        (arb_f32(), any::<u32>()).prop_map(|(tau, iterations)| AggregationRule::CenteredClip { tau, iterations }),
    ];
    let mode = prop_oneof![
        Just(VerificationMode::Exact),
        arb_f32().prop_map(|max_distance| VerificationMode::Tolerance { max_distance }),
        ("[a-z0-9:x,=.]{0,40}", arb_hash(), arb_hash()).prop_map(|(model, proving_key, verifying_key)| {
            VerificationMode::Groth16 { model, proving_key, verifying_key }
        }),
    ];
    (
        "[a-z0-9 éü-]{0,20}",
        model,
        (any::<u64>(), arb_hash(), any::<u32>()),
        diloco,
        aggregation,
        (any::<u32>(), any::<u32>(), mode, any::<bool>()),
        (arb_amount(), arb_amount(), any::<u32>(), any::<u32>()),
    )
        .prop_map(
            |(
                name,
                model,
                (init_seed, dataset_root, dataset_shards),
                diloco,
                aggregation,
                (c, s, mode, compact),
                (reward, stake, cb, vb),
            )| {
                JobSpec {
                    name,
                    model,
                    init_seed,
                    dataset_root,
                    dataset_shards,
                    diloco,
                    aggregation,
                    verification: VerificationParams {
                        checkpoint_interval: c,
                        segments_per_miner: s,
                        mode,
                        checkpoint_state: if compact { CheckpointState::Compact } else { CheckpointState::Full },
                    },
                    reward_per_round: reward,
                    min_miner_stake: stake,
                    commit_blocks: cb,
                    verify_blocks: vb,
                }
            },
        )
}

fn arb_outcome() -> impl Strategy<Value = VerdictOutcome> {
    let reason = prop_oneof![
        Just(InvalidReason::StartMismatch),
        Just(InvalidReason::CheckpointMismatch),
        Just(InvalidReason::DistanceExceeded),
        Just(InvalidReason::DeltaMismatch),
        Just(InvalidReason::ProofRejected),
        Just(InvalidReason::MalformedBlob),
        Just(InvalidReason::LossMismatch),
        Just(InvalidReason::TrailMismatch),
        Just(InvalidReason::NonCanonicalState),
    ];
    let job_fault = prop_oneof![
        Just(JobFaultReason::DatasetUnavailable),
        Just(JobFaultReason::ModelUnusable),
        Just(JobFaultReason::KeysUnusable),
        Just(JobFaultReason::SpecUnusable),
    ];
    prop_oneof![
        Just(VerdictOutcome::Valid),
        Just(VerdictOutcome::Unavailable),
        Just(VerdictOutcome::Abstain),
        job_fault.prop_map(|reason| VerdictOutcome::JobFault { reason }),
        (reason, arb_hash(), arb_hash(), arb_f32()).prop_map(|(reason, expected, reproduced, distance)| {
            VerdictOutcome::Invalid(InvalidEvidence { reason, expected, reproduced, distance })
        }),
    ]
}

fn arb_vote() -> impl Strategy<Value = SignedVote> {
    (
        any::<u64>(),
        any::<u32>(),
        any::<bool>(),
        proptest::option::of(arb_hash()),
        arb_address(),
        any::<[u8; 32]>(),
        any::<[u8; 32]>(),
    )
        .prop_map(|(h, round, pre, value, validator, s1, s2)| {
            let mut signature = [0u8; 64];
            signature[..32].copy_from_slice(&s1);
            signature[32..].copy_from_slice(&s2);
            SignedVote {
                vote: Vote {
                    height: Height(h),
                    round,
                    vote_type: if pre { VoteType::Prevote } else { VoteType::Precommit },
                    value,
                    validator,
                },
                signature: Signature(signature),
            }
        })
}

fn arb_claim() -> impl Strategy<Value = SignedProposalClaim> {
    (
        any::<bool>(),
        any::<u64>(),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<u32>()),
        arb_address(),
        arb_hash(),
        any::<[u8; 32]>(),
    )
        .prop_map(|(engine, h, round, other_round, proposer, block, s)| {
            let height = Height(h);
            let claim = if engine {
                ProposalClaim::Proposal(ProposalHeader {
                    height,
                    round,
                    value: block,
                    pol_round: other_round,
                    proposer,
                })
            } else {
                ProposalClaim::Part(PartHeader { height, round, valid_round: other_round, proposer, block })
            };
            let mut signature = [0u8; 64];
            signature[..32].copy_from_slice(&s);
            SignedProposalClaim { claim, signature: Signature(signature) }
        })
}

fn arb_kind() -> impl Strategy<Value = TxKind> {
    prop_oneof![
        (arb_address(), arb_amount()).prop_map(|(to, amount)| TxKind::Transfer { to, amount }),
        (arb_role(), arb_amount()).prop_map(|(role, amount)| TxKind::Bond { role, amount }),
        (arb_role(), arb_amount()).prop_map(|(role, amount)| TxKind::Unbond { role, amount }),
        (arb_job_spec(), arb_amount()).prop_map(|(spec, escrow)| TxKind::SubmitJob { spec, escrow }),
        any::<u64>().prop_map(|j| TxKind::JoinJob { job: JobId(j) }),
        (arb_hash(), any::<u32>()).prop_map(|(tip, layers)| TxKind::CommitBeacon { tip, layers }),
        (any::<u64>(), any::<u32>(), arb_hash()).prop_map(|(j, round, binding)| TxKind::CommitWork(WorkCommitment {
            job: JobId(j),
            round,
            binding
        })),
        (
            any::<u64>(),
            any::<u32>(),
            arb_hash(),
            arb_hash(),
            arb_hash(),
            arb_hash(),
            any::<u32>(),
            (arb_hash(), arb_hash())
        )
            .prop_map(
                |(j, round, trail, final_checkpoint, delta_hash, residual_hash, steps, (continues, next_residual))| {
                    TxKind::RevealWork(WorkReveal {
                        job: JobId(j),
                        round,
                        trail,
                        final_checkpoint,
                        delta_hash,
                        residual_hash,
                        steps,
                        continues,
                        next_residual,
                    })
                }
            ),
        (any::<u64>(), any::<u32>(), arb_address(), any::<u32>(), arb_outcome()).prop_map(
            |(j, round, miner, segment, outcome)| {
                TxKind::Verdict(Verdict { job: JobId(j), round, miner, segment, outcome })
            }
        ),
        (any::<u64>(), any::<u32>(), arb_hash(), arb_hash(), proptest::collection::btree_set(arb_address(), 0..8))
            .prop_map(|(j, round, model_hash, momentum_hash, accepted)| {
                TxKind::CommitAggregate(Aggregate {
                    job: JobId(j),
                    round,
                    model_hash,
                    momentum_hash,
                    accepted: accepted.into_iter().collect(),
                })
            }),
        any::<u64>().prop_map(|j| TxKind::CancelJob { job: JobId(j) }),
        (any::<[u8; 32]>(), arb_vote(), arb_vote()).prop_map(|(k, first, second)| {
            TxKind::ReportEquivocation(EquivocationEvidence { validator: PublicKey(k), first, second })
        }),
        (any::<[u8; 32]>(), arb_claim(), arb_claim()).prop_map(|(k, first, second)| {
            TxKind::ReportDoubleProposal(Box::new(DoubleProposalEvidence { proposer: PublicKey(k), first, second }))
        }),
    ]
}

fn arb_signed_tx() -> impl Strategy<Value = SignedTx> {
    (any::<u8>(), any::<u64>(), arb_amount(), arb_kind()).prop_map(|(seed, nonce, fee, kind)| {
        let key = Keypair::from_seed([seed; 32]);
        Transaction { sender: key.public_key(), nonce, fee, kind }.sign(common::CHAIN, &key)
    })
}

fn arb_block() -> impl Strategy<Value = Block> {
    (vec(arb_signed_tx(), 0..6), any::<u64>(), any::<u64>(), arb_hash(), arb_hash(), arb_address(), arb_hash())
        .prop_map(|(txs, height, time_ms, parent, state_root, proposer, beacon_reveal)| Block {
            header: BlockHeader {
                chain_id: common::CHAIN.into(),
                height: Height(height),
                time_ms,
                parent,
                tx_root: Block::compute_tx_root(&txs),
                state_root,
                proposer,
                beacon_reveal,
            },
            txs,
        })
}

/// Every strict prefix fails and the value plus one byte fails.
fn assert_exact_framing<T: Decode + std::fmt::Debug>(bytes: &[u8]) {
    for cut in 0..bytes.len() {
        assert!(decode::<T>(&bytes[..cut]).is_err(), "prefix of {cut} bytes decoded");
    }
    let mut longer = bytes.to_vec();
    longer.push(0);
    assert!(matches!(decode::<T>(&longer), Err(DecodeError::TrailingBytes { count: 1 })));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn signed_txs_round_trip_and_verify(tx in arb_signed_tx()) {
        let bytes = tx.to_bytes();
        let back = SignedTx::from_wire(&bytes).unwrap();
        prop_assert_eq!(&back, &tx);
        prop_assert_eq!(back.to_bytes(), bytes.clone());
        prop_assert_eq!(back.hash(), tx.hash());
        back.verify(common::CHAIN).unwrap();
        assert_exact_framing::<SignedTx>(&bytes);
    }

    #[test]
    fn blocks_round_trip_and_verify(block in arb_block()) {
        let bytes = block.to_bytes();
        let back = Block::from_wire(&bytes).unwrap();
        prop_assert_eq!(&back, &block);
        prop_assert_eq!(back.to_bytes(), bytes);
        back.verify_body().unwrap();
    }

    #[test]
    fn job_specs_round_trip(spec in arb_job_spec()) {
        let bytes = spec.to_bytes();
        let back: JobSpec = decode(&bytes).unwrap();
        // Compare bytes, not floats: -0.0 == 0.0 would hide a sign lost in decoding.
        prop_assert_eq!(back.to_bytes(), bytes);
    }

    // A checker's distance can be anything its arithmetic produced (NaN, infinities, values
    // beyond f32): the evidence built from it always encodes and decodes back to itself.
    #[test]
    fn verdict_evidence_from_any_distance_round_trips(
        distance in prop_oneof![any::<f64>(), Just(f64::NAN), Just(f64::INFINITY), Just(f64::NEG_INFINITY), Just(1e300), Just(-0.0)],
        expected in arb_hash(),
        segment in any::<u32>(),
    ) {
        let evidence = InvalidEvidence::new(InvalidReason::DistanceExceeded, expected, Hash::ZERO, distance);
        prop_assert!(evidence.distance.is_finite() && evidence.distance >= 0.0);
        let verdict = Verdict { job: JobId(1), round: 2, miner: Address([3; 20]), segment, outcome: VerdictOutcome::Invalid(evidence) };
        let back: Verdict = decode(&verdict.to_bytes()).unwrap();
        prop_assert_eq!(back.to_bytes(), verdict.to_bytes());
    }

    #[test]
    fn trails_round_trip_and_are_addressed_by_their_bytes(
        job in any::<u64>(),
        round in any::<u32>(),
        worker in any::<u32>(),
        interval in any::<u32>(),
        checkpoints in vec((any::<u64>(), arb_hash()), 0..8),
        losses in vec(arb_f32(), 0..16),
        proofs in vec(arb_hash(), 0..4),
        final_moments in arb_hash(),
    ) {
        let trail = Trail {
            job: JobId(job),
            round,
            worker,
            checkpoint_interval: interval,
            checkpoints: checkpoints.into_iter().map(|(step, hash)| TrailEntry { step, hash }).collect(),
            losses,
            proofs,
            final_moments,
        };
        let bytes = trail.to_bytes();
        let back = Trail::from_bytes(&bytes).unwrap();
        prop_assert_eq!(back.to_bytes(), bytes.clone());
        prop_assert_eq!(trail.hash(), Trail::hash_bytes(&bytes));
    }

    #[test]
    fn random_bytes_never_panic(bytes in vec(any::<u8>(), 0..512)) {
        // Anything that does decode must re-encode to the same bytes (canonical).
        if let Ok(tx) = SignedTx::from_wire(&bytes) {
            prop_assert_eq!(tx.to_bytes(), bytes.clone());
        }
        if let Ok(block) = Block::from_wire(&bytes) {
            prop_assert_eq!(block.to_bytes(), bytes.clone());
        }
        let _ = decode::<JobSpec>(&bytes);
        let _ = decode::<MerkleProof>(&bytes);
        if let Ok(trail) = Trail::from_bytes(&bytes) {
            prop_assert_eq!(trail.to_bytes(), bytes.clone());
        }
    }

    #[test]
    fn mutated_txs_fail_to_decode_or_verify(tx in arb_signed_tx(), index in any::<prop::sample::Index>(), flip in 1u8..=255) {
        let mut bytes = tx.to_bytes();
        let i = index.index(bytes.len());
        bytes[i] ^= flip;
        if let Ok(mutated) = SignedTx::from_wire(&bytes) {
            // It decoded: then it is a different transaction, and its signature must fail.
            prop_assert_ne!(&mutated, &tx);
            prop_assert!(mutated.verify(common::CHAIN).is_err());
        }
    }
}

#[test]
fn oversized_wire_inputs_are_rejected_before_decoding() {
    let huge = vec![0u8; tx::MAX_TX_BYTES + 1];
    assert!(matches!(SignedTx::from_wire(&huge), Err(DecodeError::LengthTooLarge { what: "transaction", .. })));
    let huge = vec![0u8; block::MAX_BLOCK_BYTES + 1];
    assert!(matches!(Block::from_wire(&huge), Err(DecodeError::LengthTooLarge { what: "block", .. })));
}

#[test]
fn unknown_tags_are_typed_errors() {
    let mut bytes = common::one_tx_of_each_kind()[0].to_bytes();
    // The kind tag follows sender (32), nonce (8) and fee (8).
    bytes[48] = 0xee;
    assert_eq!(SignedTx::from_wire(&bytes), Err(DecodeError::UnknownTag { what: "transaction kind", tag: 0xee }));
}

#[test]
fn unsorted_accepted_miners_are_rejected() {
    let mut aggregate = common::aggregate();
    aggregate.accepted.reverse();
    assert!(matches!(decode::<Aggregate>(&aggregate.to_bytes()), Err(DecodeError::InvalidValue { .. })));
}

#[test]
fn block_with_a_forged_transaction_fails_verification() {
    let mut block = common::block();
    // Change a transaction after signing, and fix the tx root so only the signature is wrong.
    block.txs[2].tx.fee = Amount(999);
    block.header.tx_root = Block::compute_tx_root(&block.txs);
    assert!(matches!(block.verify_body(), Err(BlockError::Signature { index: 2, .. })));
    // A tx root that does not match the body.
    let mut block = common::block();
    block.header.tx_root = Hash::ZERO;
    assert!(matches!(block.verify_body(), Err(BlockError::TxRootMismatch { .. })));
}

#[test]
fn equivocation_evidence_is_checked() {
    let evidence = common::equivocation();
    evidence.verify(common::CHAIN).unwrap();
    assert!(evidence.verify("another-chain").is_err());
    let mut same = evidence.clone();
    same.second = same.first.clone();
    assert_eq!(same.verify(common::CHAIN), Err(consensus::EvidenceError::SameValue));
    let mut other_slot = evidence.clone();
    other_slot.second.vote.round = 1;
    assert_eq!(other_slot.verify(common::CHAIN), Err(consensus::EvidenceError::DifferentSlot));
    let mut other_key = evidence;
    other_key.validator = common::key(6).public_key();
    assert_eq!(other_key.verify(common::CHAIN), Err(consensus::EvidenceError::WrongValidator));
}

#[test]
fn double_proposal_evidence_is_checked() {
    use consensus::DoubleProposalError;
    let evidence = common::double_proposal();
    evidence.verify(common::CHAIN).unwrap();
    assert_eq!(evidence.slot(), (Height(12), 3));
    assert!(evidence.verify("another-chain").is_err());

    let mut same = evidence.clone();
    same.second = same.first.clone();
    assert_eq!(same.verify(common::CHAIN), Err(DoubleProposalError::SameBlock));

    // The same block re-signed with another valid round is one block, not two.
    let signer = common::key(5);
    let mut resigned = evidence.clone();
    let ProposalClaim::Part(mut header) = resigned.first.claim.clone() else { unreachable!() };
    header.valid_round = Some(1);
    resigned.second = SignedProposalClaim {
        signature: signer.sign(common::CHAIN, SigningKind::ProposalPart, &header.to_bytes()),
        claim: ProposalClaim::Part(header),
    };
    assert_eq!(resigned.verify(common::CHAIN), Err(DoubleProposalError::SameBlock));

    // Another round, or the other kind of claim, is another slot.
    let mut other_round = evidence.clone();
    let ProposalClaim::Part(header) = &mut other_round.second.claim else { unreachable!() };
    header.round = Some(4);
    assert_eq!(other_round.verify(common::CHAIN), Err(DoubleProposalError::DifferentSlot));
    let mut no_round = evidence.clone();
    for claim in [&mut no_round.first.claim, &mut no_round.second.claim] {
        let ProposalClaim::Part(header) = claim else { unreachable!() };
        header.round = None;
    }
    assert_eq!(no_round.verify(common::CHAIN), Err(DoubleProposalError::DifferentSlot));
    let mut mixed = evidence.clone();
    let header = ProposalHeader {
        height: Height(12),
        round: Some(3),
        value: common::hash(22),
        pol_round: None,
        proposer: signer.address(),
    };
    mixed.second = SignedProposalClaim {
        signature: signer.sign(common::CHAIN, SigningKind::Proposal, &header.to_bytes()),
        claim: ProposalClaim::Proposal(header),
    };
    assert_eq!(mixed.verify(common::CHAIN), Err(DoubleProposalError::DifferentSlot));

    let mut other_key = evidence.clone();
    other_key.proposer = common::key(6).public_key();
    assert_eq!(other_key.verify(common::CHAIN), Err(DoubleProposalError::WrongProposer));

    // A part signature does not stand for an engine proposal with the same bytes.
    let mut wrong_kind = evidence;
    for signed in [&mut wrong_kind.first, &mut wrong_kind.second] {
        let ProposalClaim::Part(part) = &signed.claim else { unreachable!() };
        signed.claim = ProposalClaim::Proposal(ProposalHeader {
            height: part.height,
            round: part.round,
            value: part.block,
            pol_round: part.valid_round,
            proposer: part.proposer,
        });
    }
    assert!(matches!(wrong_kind.verify(common::CHAIN), Err(DoubleProposalError::Signature(_))));
}

#[test]
fn json_view_uses_hex_for_bytes() {
    let tx = &common::one_tx_of_each_kind()[0];
    let json = serde_json::to_value(tx).unwrap();
    assert_eq!(json["tx"]["kind"]["type"], "transfer");
    assert_eq!(json["tx"]["kind"]["to"], "02".repeat(20));
    let back: SignedTx = serde_json::from_value(json).unwrap();
    assert_eq!(&back, tx);
}
