//! A network as operators on different machines would run it (real `trellis` processes on
//! 127.0.0.1, each with a home of its own): a node given only the genesis and one bootnode finds
//! every other node, follows the chain and gets its transactions committed by libp2p gossip; a
//! node of another chain under the same id is dropped by the network it dials into.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use trellis_node::devnet::DevnetSpec;
use trellis_node::home::{read_key, Home};
use trellis_node::rpc::api::TxStatus;
use trellis_proto::{Amount, Transaction, TxKind};

mod harness;
use harness::{base_port, Cluster, BIN};

fn trellis(args: &[&str]) -> String {
    let output = Command::new(BIN).args(args).output().expect("running trellis");
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(output.status.success(), "trellis {args:?} failed: {text}{}", String::from_utf8_lossy(&output.stderr));
    text
}

fn init(home: &Path, port: u16, extra: &[&str]) -> String {
    let port = port.to_string();
    let mut args = vec!["init", "--home", home.to_str().unwrap(), "--base-port", &port, "--moniker", "joiner"];
    args.extend_from_slice(extra);
    trellis(&args)
}

#[test]
fn a_node_joins_a_running_network_with_only_a_bootnode_and_a_stranger_is_dropped() {
    let base = base_port(20_000, 0);
    let mut cluster = Cluster::start("join", &DevnetSpec::new(3, base, "join-test", 300));
    cluster.wait_for_height(&[0, 1, 2], 2, Duration::from_secs(60));
    let node0 = cluster.info.nodes[0].clone();
    let bootnode = format!("{}/p2p/{}", node0.blobs, node0.peer_id);
    let genesis = Home::new(&node0.home).genesis();

    // The genesis workflow's check: the joiner's copy has the network's fingerprint.
    let shown = trellis(&["genesis", "show", "--genesis", genesis.to_str().unwrap()]);
    let fingerprint = shown.lines().find_map(|l| l.strip_prefix("fingerprint")).unwrap().trim().to_string();
    let home = cluster.root.join("joiner");
    let said = init(&home, base + 40, &["--genesis", genesis.to_str().unwrap(), "--bootnode", &bootnode]);
    assert!(said.contains(&fingerprint), "init prints the genesis fingerprint: {said}");
    let config = Home::new(&home).load_config().unwrap();
    assert!(config.p2p.persistent_peers.is_empty(), "nothing but the bootnode is configured");
    assert_eq!(config.p2p.bootnodes, vec![bootnode.clone()]);

    let joiner = cluster.add_node(&home, "full");
    // It follows the chain: the consensus network learned its peers from the peer network.
    let height = cluster.height(0).unwrap();
    cluster.wait_for_height(&[joiner], height + 2, Duration::from_secs(60));
    cluster.assert_agree(&[0, joiner], height);
    // It found every node, not just the bootnode.
    cluster.wait_until("the joiner connected to all three validators", Duration::from_secs(30), |c| {
        (c.metric(joiner, "trellis_peers_connected")? >= 3).then_some(())
    });
    assert!(cluster.metric(joiner, "trellis_consensus_peers_learned_total").unwrap() >= 3);

    // A transaction submitted to the joiner (not a validator) reaches a proposer by gossip.
    let submitter = read_key(&cluster.root.join("submitter.key")).unwrap();
    let recipient = trellis_proto::Keypair::from_seed([77; 32]).address();
    let nonce = cluster.account(joiner, &submitter.address().to_string()).pending_nonce;
    let tx = Transaction {
        sender: submitter.public_key(),
        nonce,
        fee: Amount(10),
        kind: TxKind::Transfer { to: recipient, amount: Amount(4_321) },
    }
    .sign("join-test", &submitter);
    let hash = cluster.submit(joiner, &tx).expect("the joiner admits the transfer");
    match cluster.wait_for_inclusion(0, hash, Duration::from_secs(30)) {
        TxStatus::Committed { .. } => {}
        other => panic!("the joiner's transfer was not committed: {other:?}"),
    }
    assert!(cluster.metric(joiner, "trellis_p2p_bytes_total{network=\"gossip\",direction=\"sent\"}").unwrap_or(0) > 0);

    // A node of another chain with the same id (its own genesis) dials the same bootnode: the
    // network drops it, and its chain and ours stay apart.
    let stranger_home = cluster.root.join("stranger");
    init(&stranger_home, base + 50, &["--chain-id", "join-test", "--bootnode", &bootnode]);
    let stranger = cluster.add_node(&stranger_home, "validator");
    cluster.wait_until("the bootnode banned the stranger", Duration::from_secs(30), |c| {
        (c.metric(0, "trellis_peers_banned")? >= 1).then_some(())
    });
    let now = cluster.height(0).unwrap();
    cluster.wait_for_height(&[0, 1, 2, joiner], now + 2, Duration::from_secs(30));
    let theirs = cluster.block(stranger, 1).map(|b| b.hash);
    assert_ne!(theirs, cluster.block(0, 1).map(|b| b.hash), "the stranger's chain is its own");
    assert_eq!(cluster.metric(stranger, "trellis_consensus_peers_learned_total"), Some(0));
}
