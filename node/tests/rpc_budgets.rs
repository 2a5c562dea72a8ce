//! RPC budgets: on the old server one token bucket served every client and every peer's gossip,
//! and subscriptions were unlimited, so one busy client (or a gossip storm) refused everyone and
//! one WebSocket could open subscriptions until memory ran out. Now each client address has its
//! own budget, peers' `mempool_gossip` calls draw on one of their own, and a connection holds at
//! most `rpc.max_subscriptions_per_connection` subscriptions. One `trellis run` on 127.0.0.1;
//! the second client connects from 127.0.0.2 (the loopback network answers for all of 127/8).

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trellis_node::devnet::DevnetSpec;
use trellis_node::rpc::api::TrellisRpcClient as _;

mod harness;
use harness::Cluster;

/// One JSON-RPC call over a fresh HTTP connection from `source`; the response (empty when the
/// node does not accept the connection, e.g. before it started).
async fn call_from(source: &str, rpc: &str, method: &str, params: &str) -> String {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let Ok(mut stream) = socket.connect(rpc.parse().unwrap()).await else { return String::new() };
    let body = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"{method}","params":{params}}}"#);
    let request = format!(
        "POST / HTTP/1.1\r\nHost: {rpc}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response)).await;
    response
}

#[test]
fn each_client_has_its_own_budget_gossip_has_another_and_subscriptions_are_capped() {
    let port = 26_000 + (std::process::id() % 100) as u16 * 20;
    let mut cluster = Cluster::create("rpc-budgets", &DevnetSpec::new(1, port, "rpc-budgets", 300));
    let home = cluster.info.nodes[0].home.clone();
    let config_path = home.join("config").join("node.toml");
    let config = std::fs::read_to_string(&config_path).unwrap();
    let config = config
        .replace("rate_limit_per_second = 200", "rate_limit_per_second = 10")
        .replace("gossip_rate_limit_per_second = 1000", "gossip_rate_limit_per_second = 50")
        .replace("max_subscriptions_per_connection = 32", "max_subscriptions_per_connection = 3");
    assert!(
        config.contains("rate_limit_per_second = 10") && config.contains("max_subscriptions_per_connection = 3"),
        "{config}"
    );
    std::fs::write(&config_path, config).unwrap();
    cluster.start_all();
    let rpc = cluster.url(0).trim_start_matches("http://").to_string();
    cluster.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !call_from("127.0.0.1", &rpc, "chain_getHead", "[]").await.contains("\"height\"") {
            assert!(Instant::now() < deadline, "the node did not answer");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        // The first client spends its budget (10 a second) ... with 40 requests sent at once, so
        // that they arrive within the same second however slowly a loaded machine answers each.
        let burst = (0..40).map(|_| call_from("127.0.0.1", &rpc, "chain_getHead", "[]"));
        let limited = futures::future::join_all(burst).await.iter().filter(|r| r.contains("-32005")).count();
        assert!(limited > 0, "40 quick requests from one client were never limited");
        // ... which leaves another client's whole ...
        let other = call_from("127.0.0.2", &rpc, "chain_getHead", "[]").await;
        assert!(other.contains("\"height\""), "another client was refused: {other}");
        // ... and the first client's gossip budget.
        let gossip = call_from("127.0.0.1", &rpc, "mempool_gossip", "[[]]").await;
        assert!(gossip.contains("\"admitted\":0"), "gossip shared the public budget: {gossip}");

        tokio::time::sleep(Duration::from_millis(1_200)).await;
        let ws =
            jsonrpsee::ws_client::WsClientBuilder::default().build(format!("ws://{rpc}")).await.expect("websocket");
        let mut open = Vec::new();
        for _ in 0..3 {
            open.push(ws.subscribe_heads().await.expect("within the cap"));
        }
        let fourth = ws.subscribe_heads().await;
        assert!(fourth.is_err(), "a fourth subscription on one connection was accepted");
    });
}
