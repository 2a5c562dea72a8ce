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
use std::process::Child;
use std::time::{Duration, Instant};

use jsonrpsee::core::client::{ClientT, Subscription, SubscriptionClientT};
use jsonrpsee::http_client::{HttpClient, HttpClientBuilder};
use jsonrpsee::rpc_params;
use serde_json::Value;
use trellis_node::blobs::{data_hash, BlobStore};
use trellis_node::devnet::{create_with, spawn_node_as, DevnetInfo, DevnetSpec};
use trellis_node::home::{read_key, Home};
use trellis_proto::{Amount, Encode, Transaction, TxKind};
use trellis_trainer::data::{validation_windows, Dataset};

mod corpus;

const BIN: &str = env!("CARGO_BIN_EXE_trellis");
const ROUNDS: u64 = 3;

struct Net {
    info: DevnetInfo,
    children: Vec<Option<Child>>,
    root: PathBuf,
}

impl Drop for Net {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("node logs kept under {}", self.root.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

fn http(url: &str) -> HttpClient {
    HttpClientBuilder::default().request_timeout(Duration::from_secs(10)).build(url).unwrap()
}

async fn get(client: &HttpClient, method: &str, params: jsonrpsee::core::params::ArrayParams) -> Value {
    client.request(method, params).await.unwrap_or_else(|e| panic!("{method}: {e}"))
}

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

#[test]
fn a_nano_job_trains_for_three_rounds_on_a_seven_node_devnet() {
    let root = std::env::temp_dir().join(format!("trellis-training-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    // Below the kernel's ephemeral range (32768 and up), so no outgoing connection holds a port.
    let port = 22_000 + (std::process::id() % 100) as u16 * 100;
    let mut spec = DevnetSpec::new(4, port, "training-test", 250);
    spec.miners = 3;
    // The test reads every block back; the default per-client rate limit would refuse that.
    spec.rpc_rate_limit = 100_000;
    let info = create_with(&root, &spec).expect("devnet");
    let children =
        info.nodes.iter().map(|n| Some(spawn_node_as(Path::new(BIN), &n.home, &n.role).expect("spawn"))).collect();
    let mut net = Net { info, children, root: root.clone() };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let url = net.info.nodes[0].rpc.clone();
    let client = http(&url);

    // A bad spec is refused at submission, by the CLI before any funds move...
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

    // Wait for the chain, then watch every job event from the start.
    let deadline = Instant::now() + Duration::from_secs(60);
    while rt
        .block_on(client.request::<Value, _>("chain_getHead", rpc_params![]))
        .map_or(0, |h| h["height"].as_u64().unwrap_or(0))
        < 2
    {
        assert!(Instant::now() < deadline, "the chain did not start");
        std::thread::sleep(Duration::from_millis(200));
    }
    let ws_url = url.replace("http://", "ws://");
    let ws = rt.block_on(jsonrpsee::ws_client::WsClientBuilder::default().build(&ws_url)).unwrap();
    let mut events: Subscription<Value> =
        rt.block_on(ws.subscribe("job_subscribeEvents", rpc_params![], "job_unsubscribeEvents")).unwrap();

    // ...and by the node over RPC, with its reason.
    let submitter = read_key(&root.join("submitter.key")).unwrap();
    let store = BlobStore::open(&Home::new(&net.info.nodes[0].home).data().join("blobs")).unwrap();
    let (good_spec, escrow) = trellis_node::jobs::prepare(&job_file(&root, &corpus::path(), 20), &store).unwrap();
    let mut broken = good_spec.clone();
    broken.verification.checkpoint_interval = 0;
    let account = rt.block_on(get(&client, "state_getAccount", rpc_params![submitter.address().to_string()]));
    let nonce = account["pending_nonce"].as_u64().unwrap();
    let sign = |kind, nonce| {
        Transaction { sender: submitter.public_key(), nonce, fee: Amount(10), kind }.sign("training-test", &submitter)
    };
    let refused: Result<Value, _> = rt.block_on(client.request(
        "tx_submit",
        rpc_params![hex::encode(sign(TxKind::SubmitJob { spec: broken, escrow: Amount(escrow) }, nonce).to_bytes())],
    ));
    let message = refused.expect_err("a bad spec must be refused").to_string();
    assert!(message.contains("checkpoint_interval"), "{message}");

    let miners: Vec<String> = net.info.nodes.iter().filter(|n| n.role == "miner").map(|n| n.address.clone()).collect();
    let balance = |address: &str| {
        rt.block_on(get(&client, "state_getAccount", rpc_params![address]))["balance"].as_u64().unwrap()
    };
    let before: Vec<u64> = miners.iter().map(|m| balance(m)).collect();
    rt.block_on(get(
        &client,
        "tx_submit",
        rpc_params![hex::encode(
            sign(TxKind::SubmitJob { spec: good_spec.clone(), escrow: Amount(escrow) }, nonce).to_bytes()
        )],
    ));

    // Follow the job. When round 1 opens, kill the second miner and restart it at once (it must
    // finish the round); when round 2 opens, kill the third for good (the round must complete
    // without it).
    let deadline = Instant::now() + Duration::from_secs(300);
    let (mut restarted, mut killed) = (false, false);
    // A validator killed (SIGKILL) mid-round and restarted: (height, hash) of its head before.
    let mut validator_before_kill: Option<(u64, Value)> = None;
    let validator = 3;
    let node_of = |miner: &str| net.info.nodes.iter().position(|n| n.address == miner).unwrap();
    let (second, third) = (node_of(&miners[1]), node_of(&miners[2]));
    let job = loop {
        assert!(Instant::now() < deadline, "the job did not finish in time; logs under {}", root.display());
        let job: Value = rt.block_on(client.request("job_get", rpc_params![0u64])).unwrap_or(Value::Null);
        if job["status"] == "finished" {
            break job;
        }
        let current = job["current_round"].as_u64();
        if !restarted && current == Some(1) {
            let mut child = net.children[second].take().unwrap();
            child.kill().unwrap();
            child.wait().unwrap();
            net.children[second] = Some(spawn_node_as(Path::new(BIN), &net.info.nodes[second].home, "miner").unwrap());
            restarted = true;
            let own = http(&net.info.nodes[validator].rpc);
            let head = rt.block_on(get(&own, "chain_getHead", rpc_params![]));
            let mut child = net.children[validator].take().unwrap();
            child.kill().unwrap();
            child.wait().unwrap();
            net.children[validator] =
                Some(spawn_node_as(Path::new(BIN), &net.info.nodes[validator].home, "validator").unwrap());
            validator_before_kill = Some((head["height"].as_u64().unwrap(), head["hash"].clone()));
        }
        if !killed && current == Some(2) {
            let mut child = net.children[third].take().unwrap();
            child.kill().unwrap();
            child.wait().unwrap();
            killed = true;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(restarted && killed);
    // The killed validator lost nothing it had committed, and caught up (checked below).
    let (height, hash) = validator_before_kill.expect("the validator was killed mid-round");
    let own = http(&net.info.nodes[validator].rpc);
    assert_eq!(
        rt.block_on(get(&own, "chain_getBlock", rpc_params![height]))["hash"],
        hash,
        "validator {validator} lost block {height}"
    );
    assert_eq!(job["rounds_settled"].as_u64(), Some(ROUNDS), "{job}");

    // Every round committed an aggregate; every validator holds the same blocks and model.
    let head = rt.block_on(get(&client, "chain_getHead", rpc_params![]))["height"].as_u64().unwrap();
    let mut aggregates = Vec::new();
    let mut fees: BTreeMap<String, u64> = BTreeMap::new();
    for height in 1..=head {
        let block = rt.block_on(get(&client, "chain_getBlock", rpc_params![height]));
        for tx in block["txs"].as_array().unwrap() {
            let body = &tx["tx"]["tx"];
            let sender =
                body["sender"].as_str().unwrap().parse::<trellis_proto::PublicKey>().unwrap().address().to_string();
            *fees.entry(sender).or_default() += body["fee"].as_u64().unwrap();
            if body["kind"]["type"] == "commit_aggregate" {
                aggregates.push((height, block["hash"].clone(), body["kind"]["model_hash"].clone()));
            }
        }
    }
    assert_eq!(aggregates.len() as u64, ROUNDS, "one committed aggregate per round: {aggregates:?}");
    for node in net.info.nodes.iter().filter(|n| n.role == "validator") {
        let other = http(&node.rpc);
        let caught_up = Instant::now() + Duration::from_secs(20);
        while rt.block_on(get(&other, "chain_getHead", rpc_params![]))["height"].as_u64().unwrap() < head {
            assert!(Instant::now() < caught_up, "{} did not reach height {head}", node.rpc);
            std::thread::sleep(Duration::from_millis(100));
        }
        for (height, hash, _) in &aggregates {
            assert_eq!(
                &rt.block_on(get(&other, "chain_getBlock", rpc_params![*height]))["hash"],
                hash,
                "{} disagrees at {height}",
                node.rpc
            );
        }
        assert_eq!(rt.block_on(get(&other, "job_get", rpc_params![0u64]))["model_hash"], job["model_hash"]);
    }
    assert_eq!(aggregates.last().unwrap().2, job["model_hash"]);

    // The restarted miner finished round 1; the killed one was a worker of the last round,
    // which completed without it.
    let round1 = rt.block_on(get(&client, "job_getRound", rpc_params![0u64, 1u64]));
    // int8 error feedback: from round 1 on, every revealed work carries the residual it added.
    let zero = "0".repeat(64);
    for commit in round1["commits"].as_array().unwrap() {
        assert_ne!(commit["reveal"]["residual_hash"], zero.as_str(), "{commit}");
    }
    assert!(round1["accepted"].as_array().unwrap().iter().any(|a| a == miners[1].as_str()), "{round1}");
    let last = rt.block_on(get(&client, "job_getRound", rpc_params![0u64, ROUNDS - 1]));
    assert!(last["workers"].as_array().unwrap().iter().any(|w| w == miners[2].as_str()), "{last}");
    let accepted: Vec<&str> = last["accepted"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert_eq!(accepted.len(), 2, "{last}");
    assert!(!accepted.contains(&miners[2].as_str()));
    assert_eq!(last["phase"], "settled");

    // Miners' balances grew by exactly the rewards the chain reported, less their fees.
    let mut rewards: BTreeMap<String, u64> = BTreeMap::new();
    while let Ok(Some(Ok(event))) =
        rt.block_on(async { tokio::time::timeout(Duration::from_millis(500), events.next()).await })
    {
        let reward = &event["event"];
        if reward["event"] == "rewarded" && reward["as_miner"] == true {
            *rewards.entry(reward["who"].as_str().unwrap().to_string()).or_default() +=
                reward["amount"].as_u64().unwrap();
        }
    }
    for (miner, start) in miners.iter().zip(&before) {
        let earned = rewards.get(miner).copied().unwrap_or(0);
        assert!(earned > 0, "{miner} earned nothing: {rewards:?}");
        let fee = fees.get(miner).copied().unwrap_or(0);
        assert_eq!(balance(miner), start + earned - fee, "{miner}: rewards {earned}, fees {fee}");
    }

    // Once the job has ended, every running node collects its rounds' checkpoints.
    let deadline = Instant::now() + Duration::from_secs(15);
    for (node, child) in net.info.nodes.iter().zip(&net.children) {
        if child.is_none() {
            continue;
        }
        let dir = Home::new(&node.home).data().join("blobs").join("checkpoint");
        while std::fs::read_dir(&dir).unwrap().count() > 0 {
            assert!(Instant::now() < deadline, "{} still holds checkpoints of settled rounds", dir.display());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    // The exported model is the chain's, and it learned.
    let out = root.join("exported.safetensors");
    let peers: Vec<String> = net.info.nodes.iter().map(|n| n.blobs.clone()).collect();
    let hash = rt.block_on(trellis_node::jobs::export_model(0, &out, &peers, &url)).unwrap();
    assert_eq!(serde_json::to_value(hash).unwrap(), job["model_hash"]);
    let model = trellis_trainer::model_io::load(&out, tch::Device::Cpu).unwrap();
    assert_eq!(data_hash(&trellis_protocol::model::weights_to_bytes(&model.flat_weights())), hash);
    let dataset = Dataset::load(&corpus::path()).unwrap();
    let (inputs, targets) = validation_windows(&dataset, 64, 32);
    let initial = trellis_trainer::model::Gpt::new(&good_spec.model, good_spec.init_seed, tch::Device::Cpu).unwrap();
    let loss_before = trellis_trainer::worker::evaluate(&initial, &inputs, &targets, 64, 8);
    let loss_after = trellis_trainer::worker::evaluate(&model, &inputs, &targets, 64, 8);
    assert!(loss_after < loss_before, "validation loss {loss_before} → {loss_after}");

    // kill -9 of every node at once, then a restart: the chain resumes from disk, with every
    // block and the job's state as they were.
    let head = rt.block_on(get(&client, "chain_getHead", rpc_params![]));
    let head_height = head["height"].as_u64().unwrap();
    for child in net.children.iter_mut() {
        if let Some(child) = child.as_mut() {
            child.kill().unwrap();
        }
    }
    for child in net.children.iter_mut().flatten() {
        child.wait().unwrap();
    }
    for (i, node) in net.info.nodes.iter().enumerate() {
        net.children[i] = Some(spawn_node_as(Path::new(BIN), &node.home, &node.role).unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let now = rt
            .block_on(client.request::<Value, _>("chain_getHead", rpc_params![]))
            .map_or(0, |h| h["height"].as_u64().unwrap_or(0));
        if now >= head_height + 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the chain did not resume after every node was killed (at {now}, was {head_height})"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    for node in net.info.nodes.iter().filter(|n| n.role == "validator") {
        let other = http(&node.rpc);
        assert_eq!(
            rt.block_on(get(&other, "chain_getBlock", rpc_params![head_height]))["hash"],
            head["hash"],
            "{} after the restart",
            node.rpc
        );
        let job_after = rt.block_on(get(&other, "job_get", rpc_params![0u64]));
        assert_eq!(
            (&job_after["status"], &job_after["model_hash"]),
            (&job["status"], &job["model_hash"]),
            "{}",
            node.rpc
        );
    }
}
