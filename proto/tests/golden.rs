//! Golden vectors: the exact bytes (as a blake3 fingerprint plus length) and the hash of one
//! fixed value of every encoded type. An accidental format change fails here; a deliberate one
//! updates these vectors in the same commit and says so.

mod common;

use common::*;
use trellis_proto::*;

/// (length, blake3 of the canonical bytes) — a compact stand-in for the full bytes.
fn fingerprint<T: Encode>(value: &T) -> (usize, String) {
    let bytes = value.to_bytes();
    (bytes.len(), blake3::hash(&bytes).to_hex().to_string())
}

fn assert_golden<T: Encode + Decode + PartialEq + std::fmt::Debug>(name: &str, value: &T, len: usize, digest: &str) {
    let bytes = value.to_bytes();
    assert_eq!(fingerprint(value), (len, digest.to_string()), "golden vector of {name} changed");
    let back: T = decode(&bytes).unwrap_or_else(|e| panic!("{name} does not decode: {e}"));
    assert_eq!(&back, value, "{name} does not round-trip");
}

#[test]
fn small_values_have_exact_bytes() {
    assert_eq!(hex::encode(Amount(0x0102).to_bytes()), "0201000000000000");
    assert_eq!(hex::encode(Height(1).to_bytes()), "0100000000000000");
    assert_eq!(hex::encode(JobId(7).to_bytes()), "0700000000000000");
    assert_eq!(hex::encode(Role::Miner.to_bytes()), "02");
    assert_eq!(hex::encode(DeltaEncoding::Int8.to_bytes()), "03");
    assert_eq!(hex::encode(DeltaEncoding::Q4.to_bytes()), "04");
    assert_eq!(hex::encode(DeltaEncoding::Q2.to_bytes()), "05");
    let sparse = DeltaEncoding::TopK { keep: 123, values: KeptValues::Q2 };
    assert_eq!(hex::encode(sparse.to_bytes()), "067b0005");
    assert_eq!(hex::encode(AggregationRule::TrimmedMean { trim: 1 }.to_bytes()), "0201000000");
    assert_eq!(hex::encode(VerificationMode::Tolerance { max_distance: 1.0 }.to_bytes()), "020000803f");
    assert_eq!(hex::encode(TxKind::JoinJob { job: JobId(3) }.to_bytes()), "050300000000000000",);
    // What a proposer signs for a block part (and double-proposal evidence carries): height,
    // round, valid round, proposer, the block's hash.
    let part = PartHeader {
        height: Height(2),
        round: Some(1),
        valid_round: None,
        proposer: address(0x11),
        block: Hash([0x22; 32]),
    };
    assert_eq!(
        hex::encode(part.to_bytes()),
        format!("0200000000000000010100000000{}{}", "11".repeat(20), "22".repeat(32)),
    );
    assert_eq!(
        hex::encode(TxKind::Transfer { to: address(0x11), amount: Amount(5) }.to_bytes()),
        format!("01{}0500000000000000", "11".repeat(20)),
    );
}

#[test]
fn key_and_address_derivation_is_fixed() {
    let k = key(1);
    assert_eq!(k.public_key().to_string(), GOLDEN_PUBLIC_KEY);
    assert_eq!(k.address().to_string(), GOLDEN_ADDRESS);
}

#[test]
fn signatures_are_fixed() {
    // ed25519 is deterministic: the same key and message always give the same signature.
    let sig = key(1).sign(CHAIN, SigningKind::Transaction, b"golden");
    assert_eq!(sig.to_string(), GOLDEN_SIGNATURE);
}

#[test]
fn structured_values_have_fixed_encodings() {
    let (len, digest) = GOLDEN_JOB_SPEC;
    assert_golden("JobSpec", &job_spec(), len, digest);
    let (len, digest) = GOLDEN_WORK_COMMITMENT;
    assert_golden("WorkCommitment", &work_commitment(), len, digest);
    let (len, digest) = GOLDEN_WORK_REVEAL;
    assert_golden("WorkReveal", &work_reveal(), len, digest);
    let (len, digest) = GOLDEN_TRAIL;
    assert_golden("Trail", &trail(), len, digest);
    let (len, digest) = GOLDEN_VERDICT;
    assert_golden("Verdict", &verdict_invalid(), len, digest);
    let (len, digest) = GOLDEN_VERDICT_JOB_FAULT;
    assert_golden("Verdict (job fault)", &verdict_job_fault(), len, digest);
    let (len, digest) = GOLDEN_AGGREGATE;
    assert_golden("Aggregate", &aggregate(), len, digest);
    let (len, digest) = GOLDEN_EQUIVOCATION;
    assert_golden("EquivocationEvidence", &equivocation(), len, digest);
    let (len, digest) = GOLDEN_DOUBLE_PROPOSAL;
    assert_golden("DoubleProposalEvidence", &double_proposal(), len, digest);
    let (len, digest) = GOLDEN_BLOCK_HEADER;
    assert_golden("BlockHeader", &block().header, len, digest);
    let (len, digest) = GOLDEN_BLOCK;
    assert_golden("Block", &block(), len, digest);
}

#[test]
fn every_transaction_kind_has_a_fixed_encoding_and_hash() {
    let txs = one_tx_of_each_kind();
    assert_eq!(txs.len(), GOLDEN_TXS.len());
    for (tx, (name, len, digest, tx_hash)) in txs.iter().zip(GOLDEN_TXS) {
        assert_eq!(tx.tx.kind.name(), *name);
        assert_golden(name, tx, *len, digest);
        assert_eq!(tx.hash().to_string(), *tx_hash, "hash of {name} changed");
        tx.verify(CHAIN).unwrap();
    }
}

#[test]
fn hashes_are_fixed() {
    assert_eq!(block().hash().to_string(), GOLDEN_BLOCK_HASH);
    assert_eq!(Hash::of(HashDomain::JobSpec, &job_spec()).to_string(), GOLDEN_JOB_SPEC_HASH);
    let tree = MerkleTree::from_data(&[b"a".as_slice(), b"b", b"c"]);
    assert_eq!(tree.root().to_string(), GOLDEN_MERKLE_ROOT_ABC);
    assert_eq!(merkle::empty_root().to_string(), GOLDEN_MERKLE_EMPTY);
    assert_eq!(trail().hash().to_string(), GOLDEN_TRAIL_HASH);
    assert_eq!(work_reveal().binding(&address(9)).to_string(), GOLDEN_WORK_BINDING);
}

#[test]
fn golden_block_verifies() {
    block().verify_body().unwrap();
}

// ---- The vectors. Generated once from the values above; see the module comment. ----
const GOLDEN_PUBLIC_KEY: &str = "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c";
const GOLDEN_ADDRESS: &str = "83561adb398fd87f8e7ed8331bff2fcb945733cc";
const GOLDEN_SIGNATURE: &str = "5adc9ef4f15f2eec3d801a6a8d11021d061a5e67d9abeb1d942ec2ab652a3083eb66c3269287846894f175841ccd8e2648033b1813ad792c17c2b55f4f502208";
const GOLDEN_JOB_SPEC: (usize, &str) = (195, "e9346a1fb4f149bee794b7ce080e107dfcddf9580f38d6c2a8a7e6e4920526fb");
const GOLDEN_WORK_COMMITMENT: (usize, &str) = (44, "9d7db193cff8f38f8bdc0076d150eb7a09b05b0cedef9d6192ba4af6592363cb");
const GOLDEN_VERDICT: (usize, &str) = (106, "17034b3f49781aa2ca7676284f2b92f1cb5998e3f6a53e15769a8849eb224326");
const GOLDEN_AGGREGATE: (usize, &str) = (120, "01def3cf30c204656637194f7fe8fa8c8f2b0108ad5f621e967d13775e356c55");
const GOLDEN_EQUIVOCATION: (usize, &str) = (292, "797e5280fa461d6e0cf8513c135d08d5cb841b4a4059381389752bd22e148653");
const GOLDEN_DOUBLE_PROPOSAL: (usize, &str) = (294, "a776061a20c0b789cbcd507d6fc8e1a7cd1cd9a7be23e4bba240b08dd2eced06");
const GOLDEN_BLOCK_HEADER: (usize, &str) = (182, "887b2f4e45f06479ce80040af2b0ee668974fb450e0eaa19d481d42b4e5f0c96");
const GOLDEN_BLOCK: (usize, &str) = (3321, "3bc88fcc6af1c0d1e0e0b70e1dcbacb664007fce59dff1703e74e373b0f5f753");
const GOLDEN_TXS: &[(&str, usize, &str, &str)] = &[
    (
        "transfer",
        141,
        "12ad43d4cbe1ffe156e9ce6eaa6b2e6248bb03066e7841ca7cac31ffba3a4864",
        "2719127f781aafc3c27a336ca440ce23b1ea4cd90b75f846e27ba30b02bac5c3",
    ),
    (
        "bond",
        122,
        "96819cc5a376b788813b8bbaba8560017ba8715723f9a80904c3ca4eae613ca8",
        "c87013ff9aff2abf0d33c8780a3d4a8f74eb5cb1c394973266238ea3ef3cf02a",
    ),
    (
        "unbond",
        122,
        "6d97b567629401e9fb0015cbee7fe4ebac67c02e07cedfb95b0466dbf83f659f",
        "21f25f559a67c30deb924249b587631fcb814b3289a4b423ea525d10a3949d13",
    ),
    (
        "submit_job",
        316,
        "3fb1a2ff87bf5c30ff99c6fc200cc91032c863927a98b9047a16931f864ea36b",
        "71c0c1cfae39aa511e505534d2694081d16873f5fc4d01d344b84dfd09aa6702",
    ),
    (
        "join_job",
        121,
        "2282d51abb70ea5c094b3818b8a69ac1664a81ae7cd1ea3f984de5e27ed14308",
        "c1d657a583303cd699fed63bef5c69b4fc85c0f02a4f3db9fd4313a2d64cfeba",
    ),
    (
        "commit_work",
        157,
        "b9e53bf4ef8b891ffb1f1ae1663af9786f7c44ce064661623fde05a7d54ab5db",
        "007ec91928d1d0b63bafb3d465379ce89f059ae6152c664758bbb747fac5a7e4",
    ),
    (
        "verdict",
        219,
        "18759520722d4f7ed5cfacdd00116897b2956da1e0a693d0e1c96aad79683631",
        "0a014e22b349816f4758aff99d622a2dbdec59343704317eaab87921c97b8c6d",
    ),
    (
        "commit_aggregate",
        233,
        "2fe641aab6afb0c0e54589d60076d43c718d319c49060917ed3575331678aa27",
        "21b0bed1cd55491e114bb59566efa34ad27cf70b9753162bbc5ac1240c530b09",
    ),
    (
        "cancel_job",
        121,
        "0eb579b6d82ee38ac0a426b968b0088de36b216433e40982bcb7333fcdca9f3b",
        "1a96745c950b320ac4df166564dfc4cbafc415231fb5dc8a02b84a058bee3368",
    ),
    (
        "report_equivocation",
        405,
        "cea0509cd40b29e10c6f43ef1d81e187178893bb9e50fafb9160b53c455dee03",
        "82fe05e43e397d5757a2fc562f81c232cbf914d1b28bd2ce7ecf4db1b744f8dd",
    ),
    (
        "reveal_work",
        321,
        "b7fb3651aadde0b7acbb0f71ef2f98db02713bebe6837e9cd87745f436cf06f3",
        "f98adf0096288bf7af25a9d8b5ff9d5c9b6543c628ba82d8f77ddbfca5126471",
    ),
    (
        "verdict",
        150,
        "93be08a7c6397a66ba4e03b3f8a77eb35eee42ef22b8e5ffa6b92a6bb085043f",
        "e682027c4e0187d668a87bd514c5b0e5b87eda754962cd29c2a7d83cd44fb2c6",
    ),
    (
        "verdict",
        151,
        "82c26d8b41139ecf169fae0ab9fb1c5df332e6466293290b0a2bc8505ea2d92c",
        "68a18e476726e996d42902e6abc4cb6a18a99015cb7bd7272b1df122e9f1f120",
    ),
    (
        "commit_beacon",
        149,
        "a825fc1fee20570191f0803a979a004573551f30915761f84f77940a7e24db7e",
        "447388d7d4db7536159d1f5961f2841823f34660f692afc17700e55d745d3311",
    ),
    (
        "report_double_proposal",
        407,
        "7f1e4b8fcd25ef5ccacb9907e3f90b4899661f78ac4ae683bace1e2b8b95cd04",
        "36265d3fbfa8e14d5066c781638ad32ada2011ace92b69aa6e5db75f9410c320",
    ),
];
const GOLDEN_BLOCK_HASH: &str = "ba9576d630640cf71cec2c530a7960997584f24ff13ccfc3fc45967a51028c42";
const GOLDEN_JOB_SPEC_HASH: &str = "db2c1ce6c69091a179ac06d0e8364a14a00cb062bb7fc20184c6e01d86d71f87";
const GOLDEN_MERKLE_ROOT_ABC: &str = "21d0104d72b28296b30fd3f2675b624d635f63924e9bfec5edaa9911a31d7f2a";
const GOLDEN_TRAIL_HASH: &str = "79630e845f02e9e99b52b6c4fc0586eab7655dd7da380e420f2a3a5a95ea20bb";
const GOLDEN_WORK_BINDING: &str = "e88b1213ff882712131e0deaa39e86c8c9e494ec7f15ef43d8a93ef2e25b56a6";
const GOLDEN_WORK_REVEAL: (usize, &str) = (208, "74d6c4090a562b05f82a9211a68facb491d9ce2f0d0497819406bc5c6e38beb8");
const GOLDEN_TRAIL: (usize, &str) = (280, "939f108d60aee8b03ba2a180774b4821ed1bf6f92927ea6d101a06d6f354eeb0");
const GOLDEN_VERDICT_JOB_FAULT: (usize, &str) =
    (38, "995653018c60b01a3abf8cbc0d12fe9d032dccdeb58e79fbc1f26d6da52b2021");
const GOLDEN_MERKLE_EMPTY: &str = "14ffdb1a57d34c9fb4fac3b2a8e4c473361d39d3b93b07b3bf734039db06a3d5";

/// The seeds of the `decode_tx`, `decode_block` and `decode_trail` fuzz targets
/// (`fuzz/seeds/TARGET/`) are today's encodings of the golden values: one transaction of each
/// kind, the golden block and the golden trail. `TRELLIS_WRITE_FUZZ_SEEDS=1` rewrites them.
#[test]
fn fuzz_seeds_are_current_encodings() {
    let mut seeds: Vec<(&str, String, Vec<u8>)> = one_tx_of_each_kind()
        .iter()
        .enumerate()
        .map(|(i, tx)| ("decode_tx", format!("{i:02}-{}", tx.tx.kind.name()), tx.to_bytes()))
        .collect();
    seeds.push(("decode_block", "golden".into(), block().to_bytes()));
    seeds.push(("decode_trail", "golden".into(), trail().to_bytes()));
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
    let write = std::env::var_os("TRELLIS_WRITE_FUZZ_SEEDS").is_some();
    for (target, name, bytes) in seeds {
        let path = root.join(target).join(&name);
        if write {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        } else {
            let stored = std::fs::read(&path).unwrap_or_default();
            assert!(
                stored == bytes,
                "{} is stale: run TRELLIS_WRITE_FUZZ_SEEDS=1 cargo test -p trellis-proto --test golden",
                path.display()
            );
        }
    }
}
