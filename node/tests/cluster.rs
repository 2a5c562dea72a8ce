//! Real `trellis run` processes on 127.0.0.1: four validators agree, commit transfers, survive a
//! crash, halt without a quorum and resume; bad RPC input is refused with reasons.
//!
//! Every phase is bounded in time and every process is killed by pid when the test ends
//! (`harness::Cluster`).

use std::time::Duration;

use jsonrpsee::core::client::{ClientT, SubscriptionClientT};
use jsonrpsee::rpc_params;
use serde_json::Value;
use trellis_node::devnet::DevnetSpec;
use trellis_node::home::Home;
use trellis_node::rpc::api::{NewHead, TrellisRpcClient as _, TxStatus};
use trellis_proto::{Amount, Transaction, TxKind};

mod harness;
use harness::{base_port, Cluster};

/// A cluster of `validators` validators, blocks every 300 ms, its ports from `seed`.
fn cluster(name: &str, validators: usize, seed: u16) -> Cluster {
    Cluster::start(name, &DevnetSpec::new(validators, base_port(20_000, seed), "cluster-test", 300))
}

#[test]
fn four_validators_commit_survive_a_crash_halt_without_quorum_and_resume() {
    let mut cluster = cluster("life", 4, 0);
    let all = [0, 1, 2, 3];
    cluster.wait_for_height(&all, 3, Duration::from_secs(60));

    // A transfer submitted to node 0 is committed and visible on every node.
    let sender = Home::new(&cluster.info.nodes[0].home).load_key().unwrap();
    let recipient = trellis_proto::Keypair::from_seed([42; 32]).address();
    // A validator's key has sent its beacon commitment already: take the nonce the node gives.
    let nonce = cluster.account(0, &sender.address().to_string()).pending_nonce;
    let tx = Transaction {
        sender: sender.public_key(),
        nonce,
        fee: Amount(10),
        kind: TxKind::Transfer { to: recipient, amount: Amount(12_345) },
    }
    .sign("cluster-test", &sender);
    let hash = cluster.submit(0, &tx).expect("submit");
    assert_eq!(hash, tx.hash());
    let committed_at = match cluster.wait_for_inclusion(0, hash, Duration::from_secs(30)) {
        TxStatus::Committed { height, .. } => height,
        other => panic!("the transfer was not committed: {other:?}"),
    };
    cluster.wait_for_height(&all, committed_at, Duration::from_secs(20));
    for node in all {
        let account = cluster.account(node, &recipient.to_string());
        assert_eq!(account.balance, Amount(12_345), "node{node} sees {account:?}");
        let status = cluster.block_on(cluster.client(node).tx(hash.to_string())).unwrap();
        assert!(matches!(status, TxStatus::Committed { height, .. } if height == committed_at), "{status:?}");
    }
    // Validators committed beacon onions on their own, and their blocks reveal layers of them:
    // from a validator's next proposal after its onion is committed, which may come after the
    // transfer's block (blocks take a few hundred milliseconds here).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut looked = 0;
    loop {
        let head = cluster.height(0).unwrap();
        let revealed = ((looked + 1)..=head)
            .any(|h| cluster.block(0, h).is_some_and(|b| b.header.beacon_reveal != trellis_proto::Hash::ZERO));
        if revealed {
            break;
        }
        looked = head;
        assert!(std::time::Instant::now() < deadline, "none of {head} blocks carries a beacon reveal");
        std::thread::sleep(Duration::from_millis(250));
    }
    // The same nonce again is refused with a reason.
    let replay = cluster.submit(1, &tx).unwrap_err();
    assert!(replay.contains("nonce"), "{replay}");
    // A transfer of more than the sender holds is included, pays its fee (contracts'
    // `block.rs::a_transaction_whose_action_fails_is_included_and_pays_its_fee`), and says why.
    let nonce = cluster.account(0, &sender.address().to_string()).pending_nonce;
    let too_much = Transaction {
        sender: sender.public_key(),
        nonce,
        fee: Amount(10),
        kind: TxKind::Transfer { to: recipient, amount: Amount(u64::MAX / 2) },
    }
    .sign("cluster-test", &sender);
    let hash = cluster.submit(0, &too_much).expect("admitted: the fee is payable");
    match cluster.wait_for_inclusion(0, hash, Duration::from_secs(30)) {
        TxStatus::Failed { reason, .. } => assert!(reason.contains("insufficient balance"), "{reason}"),
        other => panic!("the transfer of too much did not fail: {other:?}"),
    }
    let after = cluster.account(0, &sender.address().to_string());
    assert!(after.nonce > nonce, "the failed transfer used its nonce: {after:?}");

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
        let roots: Vec<_> = all.iter().map(|&n| cluster.block(n, height).map(|b| b.header.state_root)).collect();
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
        let stake = cluster.account(0, &node.address).validator_stake.expect("a validator's stake");
        assert!(!stake.jailed, "{} was jailed", node.address);
        assert_eq!(stake.bonded, trellis_node::home::GENESIS_BOND, "{}", node.address);
    }
}

/// A raw JSON-RPC call with whatever parameters, for input no typed client would send.
fn raw_call(cluster: &Cluster, method: &str, params: jsonrpsee::core::params::ArrayParams) -> Result<Value, String> {
    let client = cluster.client(0);
    cluster.block_on(async { client.request::<Value, _>(method, params).await.map_err(|e| e.to_string()) })
}

#[test]
fn bad_rpc_input_gets_reasons_and_the_node_keeps_running() {
    let cluster = cluster("bad-input", 1, 25);
    cluster.wait_for_height(&[0], 1, Duration::from_secs(60));
    let not_hex = raw_call(&cluster, "tx_submit", rpc_params!["zz"]).unwrap_err();
    assert!(not_hex.contains("not hex"), "{not_hex}");
    let garbage = raw_call(&cluster, "tx_submit", rpc_params!["00112233"]).unwrap_err();
    assert!(garbage.contains("not a signed transaction"), "{garbage}");
    let wrong_type = raw_call(&cluster, "chain_getBlock", rpc_params!["seven"]).unwrap_err();
    assert!(wrong_type.contains("Invalid params") || wrong_type.contains("invalid"), "{wrong_type}");
    let missing = raw_call(&cluster, "chain_getBlock", rpc_params![1_000_000u64]).unwrap_err();
    assert!(missing.contains("no block"), "{missing}");
    let bad_address = raw_call(&cluster, "state_getAccount", rpc_params!["xyz"]).unwrap_err();
    assert!(bad_address.contains("not an address"), "{bad_address}");
    let unknown = raw_call(&cluster, "no_such_method", rpc_params![]).unwrap_err();
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
    cluster.block_on(async {
        let ws = jsonrpsee::ws_client::WsClientBuilder::default().build(&ws_url).await.expect("websocket");
        let mut heads = ws.subscribe_heads().await.expect("subscribe");
        let first: NewHead =
            tokio::time::timeout(Duration::from_secs(10), heads.next()).await.expect("a head").unwrap().unwrap();
        let second: NewHead =
            tokio::time::timeout(Duration::from_secs(10), heads.next()).await.expect("a head").unwrap().unwrap();
        assert_eq!(second.height, first.height + 1, "{first:?} then {second:?}");
        let events = ws.subscribe_job_events(Some(0)).await;
        assert!(events.is_ok(), "job event subscription refused: {:?}", events.err());
        // The wire names stay what docs/rpc.md says.
        let raw: Result<jsonrpsee::core::client::Subscription<Value>, _> =
            ws.subscribe("chain_subscribeHeads", rpc_params![], "chain_unsubscribeHeads").await;
        assert!(raw.is_ok(), "{:?}", raw.err());
    });
}

#[test]
fn a_stopped_node_restarts_from_disk_with_nothing_lost() {
    let mut cluster = cluster("restart", 1, 40);
    cluster.wait_for_height(&[0], 4, Duration::from_secs(60));
    let home = cluster.info.nodes[0].home.clone();
    // SIGTERM mid-run, then restart: every block it reported is still there.
    let height = cluster.height(0).unwrap();
    let hash = cluster.block(0, height).unwrap().hash;
    cluster.stop(0, Duration::from_secs(10));
    assert!(home.join("data/chain").exists());
    cluster.restart(0);
    cluster.wait_for_height(&[0], height + 2, Duration::from_secs(60));
    assert_eq!(cluster.block(0, height).map(|b| b.hash), Some(hash));
}

#[test]
fn an_unbonded_validator_leaves_the_set_at_the_epoch_boundary() {
    let cluster = cluster("epoch", 4, 60);
    let all = [0, 1, 2, 3];
    cluster.wait_for_height(&all, 2, Duration::from_secs(60));
    let leaving = Home::new(&cluster.info.nodes[3].home).load_key().unwrap();
    let bonded = cluster.account(0, &leaving.address().to_string()).validator_stake.expect("bonded").bonded;
    let tx = Transaction {
        sender: leaving.public_key(),
        nonce: cluster.account(3, &leaving.address().to_string()).pending_nonce,
        fee: Amount(10),
        kind: TxKind::Unbond { role: trellis_proto::Role::Validator, amount: bonded },
    }
    .sign("cluster-test", &leaving);
    cluster.submit(3, &tx).expect("unbond accepted");
    let epoch = trellis_contracts::Params::default().epoch_blocks;
    let remaining = cluster.wait_until(
        &format!("the validator set without the unbonded validator (epochs of {epoch} blocks)"),
        Duration::from_secs(90),
        |c| {
            let set = c.block_on(c.client(0).validators()).ok()?;
            (set.validators.len() == 3).then_some(set)
        },
    );
    assert!(remaining.validators.iter().all(|v| v.address != leaving.address()));
    // The three remaining validators keep committing, and the fourth keeps following.
    let height = cluster.height(0).unwrap();
    cluster.wait_for_height(&all, height + 3, Duration::from_secs(60));
    cluster.assert_agree(&all, height + 3);
}
