//! Training on chain, end to end, with real `trellis run` processes on 127.0.0.1: four
//! validators and three miners train a `nano` job for three rounds, with int8 pseudo-gradients
//! and error feedback (the `make devnet` job exercises f32). Every round commits an
//! aggregate all validators agree on; the loss falls; miners are paid exactly what the chain
//! reports; the exported model's hash is the chain's; a miner restarted mid-round finishes it;
//! a miner killed mid-round leaves the round to the others; a validator killed (SIGKILL) and
//! restarted mid-round loses no committed block and catches up; a bad job spec is refused at
//! submission with its reason; and after `kill -9` of every node at once, the restarted chain
//! resumes from disk with its blocks and the job's state intact.
//!
//! Every wait is bounded and every process is killed by pid when the test ends.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use trellis_contracts::state::{JobStatus, Phase};
use trellis_contracts::Event;
use trellis_node::devnet::DevnetSpec;
use trellis_node::home::{read_key, Home};
use trellis_node::storage::blobs::{data_hash, BlobStore};
use trellis_proto::{Address, Amount, Hash, Transaction, TxKind};
use trellis_trainer::data::{validation_windows, Dataset};

mod corpus;
mod harness;
use harness::{Cluster, BIN};

const ROUNDS: u32 = 3;

fn job_file(dir: &Path, dataset: &Path, inner_steps: u32) -> PathBuf {
    let text = format!(
        "name = \"e2e\"\nmodel = \"nano\"\ndataset = \"{}\"\nseed = 11\nescrow = 30001\nreward_per_round = 10000\n\
         commit_blocks = 120\nverify_blocks = 80\n\n[diloco]\nworkers_per_round = 3\ninner_steps = {inner_steps}\n\
         rounds = {ROUNDS}\nbatch_size = 8\nsequence_length = 64\nlearning_rate = 0.003\nwarmup_steps = 4\nencoding = \"int8\"\n\n\
         [verification]\ncheckpoint_interval = 5\nsegments_per_miner = 1\nmode = \"exact\"\n",
        dataset.display()
    );
    let path = dir.join(format!("job-{inner_steps}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Names a step of the story in the test's output, so a failure says which step it was in.
fn step(name: &str) {
    eprintln!("-- {name}");
}

#[test]
fn a_nano_job_trains_for_three_rounds_on_a_seven_node_devnet() {
    // Below the kernel's ephemeral range (32768 and up), so no outgoing connection holds a port.
    let port = 22_000 + (std::process::id() % 100) as u16 * 100;
    let mut spec = DevnetSpec::new(4, port, "training-test", 250);
    spec.miners = 3;
    // The test reads every block back; the default per-client rate limit would refuse that.
    spec.rpc_rate_limit = 100_000;
    let mut net = Cluster::start("training", &spec);
    let root = net.root.clone();
    let url = net.url(0).to_string();

    step("a bad spec is refused by the CLI before any funds move");
    let bad = job_file(&root, &corpus::path(), 0);
    let output = std::process::Command::new(BIN)
        .args(["job", "submit"])
        .arg(&bad)
        .arg("--key")
        .arg(root.join("submitter.key"))
        .arg("--blobs-home")
        .arg(&net.info.nodes[0].home)
        .args(["--rpc", &url])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("inner_steps must be in 1..="), "{stderr}");

    step("the chain starts; every job event is watched from then on");
    net.wait_for_height(&[0], 2, Duration::from_secs(60));
    let mut events = net.job_events(0);

    step("a bad spec is refused by the node over RPC, with its reason");
    let submitter = read_key(&root.join("submitter.key")).unwrap();
    let store = BlobStore::open(&Home::new(&net.info.nodes[0].home).data().join("blobs")).unwrap();
    let (good_spec, escrow) =
        trellis_node::commands::job::prepare(&job_file(&root, &corpus::path(), 20), &store).unwrap();
    let mut broken = good_spec.clone();
    broken.verification.checkpoint_interval = 0;
    let nonce = net.account(0, &submitter.address().to_string()).pending_nonce;
    let sign = |kind, nonce| {
        Transaction { sender: submitter.public_key(), nonce, fee: Amount(10), kind }.sign("training-test", &submitter)
    };
    let message = net
        .submit(0, &sign(TxKind::SubmitJob { spec: broken, escrow: Amount(escrow) }, nonce))
        .expect_err("a bad spec must be refused");
    assert!(message.contains("checkpoint_interval"), "{message}");

    step("the job is submitted");
    let miners: Vec<String> = net.info.nodes.iter().filter(|n| n.role == "miner").map(|n| n.address.clone()).collect();
    let balance = |net: &Cluster, address: &str| net.account(0, address).balance.0;
    let before: Vec<u64> = miners.iter().map(|m| balance(&net, m)).collect();
    net.submit(0, &sign(TxKind::SubmitJob { spec: good_spec.clone(), escrow: Amount(escrow) }, nonce))
        .expect("the job is admitted");

    step("round 1: a miner and a validator are killed and restarted; round 2: a miner is killed for good");
    // A validator killed (SIGKILL) mid-round and restarted: (height, hash) of its head before.
    let mut validator_before_kill: Option<(u64, Hash)> = None;
    let validator = 3;
    let node_of = |miner: &str| net.info.nodes.iter().position(|n| n.address == miner).unwrap();
    let (second, third) = (node_of(&miners[1]), node_of(&miners[2]));
    // Alone on two cores the job takes under three minutes; `make test` runs the adversary
    // devnets beside it (two at a time), which has slowed it past five (CI, 2026-12-03).
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    let mut killed = false;
    let job = loop {
        assert!(std::time::Instant::now() < deadline, "the job did not finish in time; logs under {}", root.display());
        let job = net.job(0, 0);
        if let Some(job) = job.as_ref().filter(|j| j.status == JobStatus::Finished) {
            break job.clone();
        }
        let current = job.map(|j| j.current_round);
        if validator_before_kill.is_none() && current == Some(1) {
            net.kill(second);
            net.restart(second);
            let head = net.head(validator).expect("the validator answers");
            net.kill(validator);
            net.restart(validator);
            validator_before_kill = Some((head.height, head.hash));
        }
        if !killed && current == Some(2) {
            net.kill(third);
            killed = true;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(killed, "round 2 was never seen open");

    step("the killed validator lost nothing it had committed");
    let (height, hash) = validator_before_kill.expect("the validator was killed mid-round");
    assert_eq!(net.block(validator, height).map(|b| b.hash), Some(hash), "validator {validator} lost block {height}");
    assert_eq!(job.rounds_settled, ROUNDS, "{job:?}");

    step("every round committed an aggregate; every validator holds the same blocks and model");
    let head = net.height(0).unwrap();
    let mut aggregates = Vec::new();
    let mut fees: BTreeMap<Address, u64> = BTreeMap::new();
    for height in 1..=head {
        let block = net.block(0, height).unwrap_or_else(|| panic!("node0 has no block {height}"));
        for tx in &block.txs {
            let body = &tx.tx.tx;
            *fees.entry(body.sender.address()).or_default() += body.fee.0;
            if let TxKind::CommitAggregate(aggregate) = &body.kind {
                aggregates.push((height, block.hash, aggregate.model_hash));
            }
        }
    }
    assert_eq!(aggregates.len() as u32, ROUNDS, "one committed aggregate per round: {aggregates:?}");
    let validators: Vec<usize> =
        net.info.nodes.iter().enumerate().filter(|(_, n)| n.role == "validator").map(|(i, _)| i).collect();
    net.wait_for_height(&validators, head, Duration::from_secs(20));
    for &node in &validators {
        for (height, hash, _) in &aggregates {
            assert_eq!(net.block(node, *height).map(|b| b.hash), Some(*hash), "node{node} disagrees at {height}");
        }
        assert_eq!(net.job(node, 0).map(|j| j.model_hash), Some(job.model_hash), "node{node}");
    }
    assert_eq!(aggregates.last().unwrap().2, job.model_hash);

    step("the restarted miner finished round 1; the last round completed without the killed one");
    let round1 = net.round(0, 0, 1);
    // int8 error feedback: from round 1 on, every revealed work carries the residual it added.
    for commit in &round1.commits {
        let reveal = commit.reveal.as_ref().unwrap_or_else(|| panic!("{commit:?} never revealed"));
        assert_ne!(reveal.residual_hash, Hash::ZERO, "{commit:?}");
    }
    let miner_addresses: Vec<Address> = miners.iter().map(|m| m.parse().unwrap()).collect();
    assert!(round1.accepted.contains(&miner_addresses[1]), "{round1:?}");
    let last = net.round(0, 0, ROUNDS - 1);
    assert!(last.workers.contains(&miner_addresses[2]), "{last:?}");
    assert_eq!(last.accepted.len(), 2, "{last:?}");
    assert!(!last.accepted.contains(&miner_addresses[2]));
    assert_eq!(last.phase, Phase::Settled);

    step("miners' balances grew by exactly the rewards the chain reported, less their fees");
    let mut rewards: BTreeMap<Address, u64> = BTreeMap::new();
    for event in net.drain(&mut events) {
        if let Event::Rewarded { who, amount, as_miner: true, .. } = event.event {
            *rewards.entry(who).or_default() += amount.0;
        }
    }
    for ((miner, address), start) in miners.iter().zip(&miner_addresses).zip(&before) {
        let earned = rewards.get(address).copied().unwrap_or(0);
        assert!(earned > 0, "{miner} earned nothing: {rewards:?}");
        let fee = fees.get(address).copied().unwrap_or(0);
        assert_eq!(balance(&net, miner), start + earned - fee, "{miner}: rewards {earned}, fees {fee}");
    }

    step("once the job has ended, every running node collects its rounds' checkpoints");
    let running: Vec<usize> = (0..net.info.nodes.len()).filter(|&n| net.is_running(n)).collect();
    for node in running {
        let dir = Home::new(&net.info.nodes[node].home).data().join("blobs").join("checkpoint");
        net.wait_until(
            &format!("{} emptied of settled rounds' checkpoints", dir.display()),
            Duration::from_secs(15),
            |_| (std::fs::read_dir(&dir).unwrap().count() == 0).then_some(()),
        );
    }

    step("the exported model is the chain's, and it learned");
    let out = root.join("exported.safetensors");
    let peers: Vec<String> = net.info.nodes.iter().map(|n| n.blobs.clone()).collect();
    let hash = net.block_on(trellis_node::commands::job::export_model(0, &out, &peers, &url)).unwrap();
    assert_eq!(hash, job.model_hash);
    let model = trellis_trainer::model_io::load(&out, tch::Device::Cpu).unwrap();
    assert_eq!(data_hash(&trellis_protocol::model::weights_to_bytes(&model.flat_weights())), hash);
    let dataset = Dataset::load(&corpus::path()).unwrap();
    let (inputs, targets) = validation_windows(&dataset, 64, 32);
    let initial = trellis_trainer::model::Gpt::new(&good_spec.model, good_spec.init_seed, tch::Device::Cpu).unwrap();
    let loss_before = trellis_trainer::worker::evaluate(&initial, &inputs, &targets, 64, 8);
    let loss_after = trellis_trainer::worker::evaluate(&model, &inputs, &targets, 64, 8);
    assert!(loss_after < loss_before, "validation loss {loss_before} → {loss_after}");

    step("kill -9 of every node at once: the restarted chain resumes from disk, blocks and job intact");
    let head = net.head(0).unwrap();
    net.kill_all();
    for node in 0..net.info.nodes.len() {
        net.restart(node);
    }
    net.wait_for_height(&[0], head.height + 3, Duration::from_secs(90));
    for &node in &validators {
        assert_eq!(net.block(node, head.height).map(|b| b.hash), Some(head.hash), "node{node} after the restart");
        let after = net.job(node, 0).expect("the job after the restart");
        assert_eq!((after.status, after.model_hash), (job.status, job.model_hash), "node{node}");
    }
}
