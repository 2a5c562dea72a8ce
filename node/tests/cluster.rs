//! Real `trellis run` processes on 127.0.0.1: four validators agree, commit transfers, survive a
//! crash, halt without a quorum and resume; bad RPC input is refused with reasons.
//!
//! Every phase is bounded in time and every process is killed by pid when the test ends.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use jsonrpsee::core::client::{ClientT, SubscriptionClientT};
use jsonrpsee::http_client::{HttpClient, HttpClientBuilder};
use jsonrpsee::rpc_params;
use serde_json::Value;
use trellis_node::devnet::{create, spawn_node, stop_node, DevnetInfo};
use trellis_node::home::Home;
use trellis_proto::{Amount, Encode, Transaction, TxKind};

const BIN: &str = env!("CARGO_BIN_EXE_trellis");

/// The processes of a cluster; killed on drop so a failing test leaves nothing running.
struct Cluster {
    info: DevnetInfo,
    children: Vec<Option<Child>>,
    root: PathBuf,
    rt: tokio::runtime::Runtime,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.root);
        } else {
            eprintln!("node logs kept under {}", self.root.display());
        }
    }
}

fn base_port(seed: u16) -> u16 {
    // Spread test runs over the port space by pid, below the kernel's ephemeral range (32768
    // and up), where an outgoing connection could already hold the port.
    20_000 + ((std::process::id() as u16).wrapping_mul(7) % 200) * 50 + seed
}

impl Cluster {
    fn start(name: &str, validators: usize, port_seed: u16) -> Cluster {
        let root = std::env::temp_dir().join(format!("trellis-cluster-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let info = create(&root, validators, base_port(port_seed), "cluster-test", 300).expect("create devnet");
        let children = info.nodes.iter().map(|n| Some(spawn_node(Path::new(BIN), &n.home).expect("spawn"))).collect();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        Cluster { info, children, root, rt }
    }

    fn client(&self, node: usize) -> HttpClient {
        HttpClientBuilder::default().request_timeout(Duration::from_secs(5)).build(&self.info.nodes[node].rpc).unwrap()
    }

    fn call(&self, node: usize, method: &str, params: jsonrpsee::core::params::ArrayParams) -> Result<Value, String> {
        let client = self.client(node);
        self.rt.block_on(async { client.request::<Value, _>(method, params).await.map_err(|e| e.to_string()) })
    }

    fn height(&self, node: usize) -> Option<u64> {
        self.call(node, "chain_getHead", rpc_params![]).ok().and_then(|h| h["height"].as_u64())
    }

    fn block_hash(&self, node: usize, height: u64) -> Option<String> {
        self.call(node, "chain_getBlock", rpc_params![height]).ok().and_then(|b| b["hash"].as_str().map(String::from))
    }

    fn state_root(&self, node: usize, height: u64) -> Option<String> {
        self.call(node, "chain_getBlock", rpc_params![height])
            .ok()
            .and_then(|b| b["header"]["state_root"].as_str().map(String::from))
    }

    /// Waits until every listed node is at `height` or above.
    fn wait_for_height(&self, nodes: &[usize], height: u64, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let heights: Vec<Option<u64>> = nodes.iter().map(|&n| self.height(n)).collect();
            if heights.iter().all(|h| h.is_some_and(|h| h >= height)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nodes {nodes:?} did not reach height {height} in {within:?}: {heights:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn kill(&mut self, node: usize) {
        if let Some(mut child) = self.children[node].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn restart(&mut self, node: usize) {
        assert!(self.children[node].is_none(), "node{node} is running");
        self.children[node] = Some(spawn_node(Path::new(BIN), &self.info.nodes[node].home).expect("respawn"));
    }

    /// Checks that every pair of nodes has the same block hash at each height both hold.
    fn assert_agree(&self, nodes: &[usize], up_to: u64) {
        for height in 1..=up_to {
            let hashes: Vec<Option<String>> = nodes.iter().map(|&n| self.block_hash(n, height)).collect();
            let first = hashes[0].clone().unwrap_or_else(|| panic!("node{} has no block {height}", nodes[0]));
            for (i, hash) in hashes.iter().enumerate() {
                assert_eq!(hash.as_deref(), Some(first.as_str()), "node{} disagrees at height {height}", nodes[i]);
            }
        }
    }
}

#[test]
fn four_validators_commit_survive_a_crash_halt_without_quorum_and_resume() {
    let mut cluster = Cluster::start("life", 4, 0);
    let all = [0, 1, 2, 3];
    cluster.wait_for_height(&all, 3, Duration::from_secs(60));

    // A transfer submitted to node 0 is committed and visible on every node.
    let sender = Home::new(&cluster.info.nodes[0].home).load_key().unwrap();
    let recipient = trellis_proto::Keypair::from_seed([42; 32]).address();
    // A validator's key has sent its beacon commitment already: take the nonce the node gives.
    let nonce = cluster.call(0, "state_getAccount", rpc_params![sender.address().to_string()]).unwrap()
        ["pending_nonce"]
        .as_u64()
        .unwrap();
    let tx = Transaction {
        sender: sender.public_key(),
        nonce,
        fee: Amount(10),
        kind: TxKind::Transfer { to: recipient, amount: Amount(12_345) },
    }
    .sign("cluster-test", &sender);
    let submitted = cluster.call(0, "tx_submit", rpc_params![hex::encode(tx.to_bytes())]).expect("submit");
    let hash = submitted["hash"].as_str().unwrap().to_string();
    assert_eq!(hash, tx.hash().to_string());
    let deadline = Instant::now() + Duration::from_secs(30);
    let committed_at = loop {
        let status = cluster.call(0, "tx_get", rpc_params![hash.clone()]).unwrap();
        if status["status"] == "committed" {
            break status["height"].as_u64().unwrap();
        }
        assert!(Instant::now() < deadline, "transfer not committed in 30 s: {status}");
        std::thread::sleep(Duration::from_millis(200));
    };
    cluster.wait_for_height(&all, committed_at, Duration::from_secs(20));
    for node in all {
        let account = cluster.call(node, "state_getAccount", rpc_params![recipient.to_string()]).unwrap();
        assert_eq!(account["balance"], 12_345, "node{node} sees {account}");
        let status = cluster.call(node, "tx_get", rpc_params![hash.clone()]).unwrap();
        assert_eq!(status["height"].as_u64(), Some(committed_at));
    }
    // Validators committed beacon onions on their own, and their blocks reveal layers of them.
    let head = cluster.call(0, "chain_getHead", rpc_params![]).unwrap()["height"].as_u64().unwrap();
    let revealing = (1..=head)
        .filter(|h| {
            let block = cluster.call(0, "chain_getBlock", rpc_params![*h]).unwrap();
            block["header"]["beacon_reveal"].as_str().is_some_and(|r| r.chars().any(|c| c != '0'))
        })
        .count();
    assert!(revealing > 0, "none of {head} blocks carries a beacon reveal");
    // The same nonce again is refused with a reason.
    let replay = cluster.call(1, "tx_submit", rpc_params![hex::encode(tx.to_bytes())]).unwrap_err();
    assert!(replay.contains("nonce"), "{replay}");
    // A transfer of more than the sender holds is included, pays its fee (contracts'
    // `block.rs::a_transaction_whose_action_fails_is_included_and_pays_its_fee`), and says why.
    let account = cluster.call(0, "state_getAccount", rpc_params![sender.address().to_string()]).unwrap();
    let nonce = account["pending_nonce"].as_u64().unwrap();
    let too_much = Transaction {
        sender: sender.public_key(),
        nonce,
        fee: Amount(10),
        kind: TxKind::Transfer { to: recipient, amount: Amount(u64::MAX / 2) },
    }
    .sign("cluster-test", &sender);
    let hash = cluster
        .call(0, "tx_submit", rpc_params![hex::encode(too_much.to_bytes())])
        .expect("admitted: the fee is payable")["hash"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let status = cluster.call(0, "tx_get", rpc_params![hash.clone()]).unwrap();
        if status["status"] != "pending" {
            break status;
        }
        assert!(Instant::now() < deadline, "the failing transfer was not included in 30 s: {status}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(status["status"], "failed", "{status}");
    assert!(status["reason"].as_str().unwrap().contains("insufficient balance"), "{status}");
    let after = cluster.call(0, "state_getAccount", rpc_params![sender.address().to_string()]).unwrap();
    assert!(after["nonce"].as_u64().unwrap() > nonce, "the failed transfer used its nonce: {after}");

    // One validator killed: the other three go on.
    cluster.kill(3);
    let before = cluster.height(0).unwrap();
    cluster.wait_for_height(&[0, 1, 2], before + 3, Duration::from_secs(60));
    // Restarted: it catches up and holds the same blocks and state roots.
    cluster.restart(3);
    let target = cluster.height(0).unwrap();
    cluster.wait_for_height(&[3], target, Duration::from_secs(60));
    cluster.assert_agree(&all, target);
    for height in [committed_at, target] {
        let roots: Vec<Option<String>> = all.iter().map(|&n| cluster.state_root(n, height)).collect();
        assert!(roots.iter().all(|r| r.is_some() && *r == roots[0]), "state roots at {height}: {roots:?}");
    }

    // Two of four killed: no quorum, so no progress (at most the block already in flight).
    cluster.kill(2);
    cluster.kill(3);
    std::thread::sleep(Duration::from_secs(2));
    let stalled = cluster.height(0).unwrap();
    std::thread::sleep(Duration::from_secs(5));
    let after = cluster.height(0).unwrap();
    assert!(after <= stalled + 1, "progress without a quorum: {stalled} -> {after}");
    let other = cluster.height(1).unwrap();
    assert!(other <= stalled + 1, "node1 progressed without a quorum: {stalled} -> {other}");
    cluster.assert_agree(&[0, 1], after.min(other));

    // They come back: progress resumes, and all four agree on every block.
    cluster.restart(2);
    cluster.restart(3);
    cluster.wait_for_height(&all, after + 3, Duration::from_secs(90));
    let end = all.iter().map(|&n| cluster.height(n).unwrap()).min().unwrap();
    cluster.assert_agree(&all, end);
    // Three restarts, two of them in a height where the node had voted: the engine's WAL kept
    // each from signing twice, so no double vote was reported and nobody was jailed or slashed.
    for node in &cluster.info.nodes {
        let account = cluster.call(0, "state_getAccount", rpc_params![node.address.clone()]).unwrap();
        assert_eq!(account["validator_stake"]["jailed"], false, "{account}");
        assert_eq!(account["validator_stake"]["bonded"], trellis_node::home::GENESIS_BOND, "{account}");
    }
}

#[test]
fn bad_rpc_input_gets_reasons_and_the_node_keeps_running() {
    let cluster = Cluster::start("bad-input", 1, 25);
    cluster.wait_for_height(&[0], 1, Duration::from_secs(60));
    let not_hex = cluster.call(0, "tx_submit", rpc_params!["zz"]).unwrap_err();
    assert!(not_hex.contains("not hex"), "{not_hex}");
    let garbage = cluster.call(0, "tx_submit", rpc_params!["00112233"]).unwrap_err();
    assert!(garbage.contains("not a signed transaction"), "{garbage}");
    let wrong_type = cluster.call(0, "chain_getBlock", rpc_params!["seven"]).unwrap_err();
    assert!(wrong_type.contains("Invalid params") || wrong_type.contains("invalid"), "{wrong_type}");
    let missing = cluster.call(0, "chain_getBlock", rpc_params![1_000_000u64]).unwrap_err();
    assert!(missing.contains("no block"), "{missing}");
    let bad_address = cluster.call(0, "state_getAccount", rpc_params!["xyz"]).unwrap_err();
    assert!(bad_address.contains("not an address"), "{bad_address}");
    let unknown = cluster.call(0, "no_such_method", rpc_params![]).unwrap_err();
    assert!(unknown.to_lowercase().contains("method not found"), "{unknown}");

    // Raw HTTP: malformed JSON and an oversized body.
    let rpc = cluster.info.nodes[0].rpc.trim_start_matches("http://").to_string();
    let post = |body: &[u8]| -> String {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&rpc).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let head = format!("POST / HTTP/1.1\r\nHost: {rpc}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
        stream.write_all(head.as_bytes()).unwrap();
        let _ = stream.write_all(body);
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response
    };
    let malformed = post(b"{\"jsonrpc\":\"2.0\",\"method\":");
    assert!(malformed.contains("Parse error") || malformed.contains("-32700"), "{malformed}");
    let oversized = post(&vec![b' '; 2 << 20]);
    assert!(oversized.starts_with("HTTP/1.1 413"), "{}", &oversized[..oversized.len().min(200)]);

    // Still alive and still committing; heads arrive over a WebSocket subscription in order.
    let height = cluster.height(0).expect("node answers after bad input");
    cluster.wait_for_height(&[0], height + 2, Duration::from_secs(30));
    let ws_url = cluster.info.nodes[0].rpc.replace("http://", "ws://");
    cluster.rt.block_on(async {
        let ws = jsonrpsee::ws_client::WsClientBuilder::default().build(&ws_url).await.expect("websocket");
        let mut heads: jsonrpsee::core::client::Subscription<Value> =
            ws.subscribe("chain_subscribeHeads", rpc_params![], "chain_unsubscribeHeads").await.expect("subscribe");
        let first =
            tokio::time::timeout(Duration::from_secs(10), heads.next()).await.expect("a head").unwrap().unwrap();
        let second =
            tokio::time::timeout(Duration::from_secs(10), heads.next()).await.expect("a head").unwrap().unwrap();
        assert_eq!(second["height"].as_u64().unwrap(), first["height"].as_u64().unwrap() + 1, "{first} then {second}");
        let events: Result<jsonrpsee::core::client::Subscription<Value>, _> =
            ws.subscribe("job_subscribeEvents", rpc_params![0u64], "job_unsubscribeEvents").await;
        assert!(events.is_ok(), "job event subscription refused: {:?}", events.err());
    });
}

#[test]
fn a_stopped_node_restarts_from_disk_with_nothing_lost() {
    let mut cluster = Cluster::start("restart", 1, 40);
    cluster.wait_for_height(&[0], 4, Duration::from_secs(60));
    let home = cluster.info.nodes[0].home.clone();
    // SIGTERM mid-run, then restart: every block it reported is still there.
    let height = cluster.height(0).unwrap();
    let hash = cluster.block_hash(0, height).unwrap();
    if let Some(mut child) = cluster.children[0].take() {
        stop_node(&mut child, Duration::from_secs(10));
    }
    assert!(home.join("data/chain").exists());
    cluster.restart(0);
    cluster.wait_for_height(&[0], height + 2, Duration::from_secs(60));
    assert_eq!(cluster.block_hash(0, height), Some(hash));
}

#[test]
fn an_unbonded_validator_leaves_the_set_at_the_epoch_boundary() {
    let cluster = Cluster::start("epoch", 4, 60);
    let all = [0, 1, 2, 3];
    cluster.wait_for_height(&all, 2, Duration::from_secs(60));
    let leaving = Home::new(&cluster.info.nodes[3].home).load_key().unwrap();
    let account = cluster.call(0, "state_getAccount", rpc_params![leaving.address().to_string()]).unwrap();
    let bonded = account["validator_stake"]["bonded"].as_u64().unwrap();
    let tx = Transaction {
        sender: leaving.public_key(),
        nonce: cluster.call(3, "state_getAccount", rpc_params![leaving.address().to_string()]).unwrap()
            ["pending_nonce"]
            .as_u64()
            .unwrap(),
        fee: Amount(10),
        kind: TxKind::Unbond { role: trellis_proto::Role::Validator, amount: Amount(bonded) },
    }
    .sign("cluster-test", &leaving);
    cluster.call(3, "tx_submit", rpc_params![hex::encode(tx.to_bytes())]).expect("unbond accepted");
    let epoch = trellis_contracts::Params::default().epoch_blocks;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let set = cluster.call(0, "state_getValidators", rpc_params![]).unwrap();
        let addresses: Vec<String> =
            set["validators"].as_array().unwrap().iter().map(|v| v["address"].as_str().unwrap().to_string()).collect();
        if addresses.len() == 3 {
            assert!(!addresses.contains(&leaving.address().to_string()));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "validator set still {addresses:?} after {} epochs",
            90 * 1000 / (300 * epoch)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // The three remaining validators keep committing, and the fourth keeps following.
    let height = cluster.height(0).unwrap();
    cluster.wait_for_height(&all, height + 3, Duration::from_secs(60));
    cluster.assert_agree(&all, height + 3);
}
