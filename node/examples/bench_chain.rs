//! Chain benchmark: committed transfers per second and finality latency with N validators on
//! loopback, and the time a node 1,000 blocks behind takes to catch up.
//!
//! ```text
//! cargo build --release -p trellis-node --example bench_chain
//! target/release/examples/bench_chain [--txs 20000] [--senders 128] [--validators 4] [--catchup 1000]
//! ```
//! It starts real `trellis run` processes (the `trellis` binary next to this example), under
//! a temporary directory, and stops them at the end.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jsonrpsee::core::client::ClientT;
use jsonrpsee::core::params::BatchRequestBuilder;
use jsonrpsee::http_client::{HttpClient, HttpClientBuilder};
use jsonrpsee::rpc_params;
use serde_json::Value;
use trellis_node::devnet::{create_with, spawn_node, stop_node, DevnetSpec};
use trellis_node::rpc::api::TrellisRpcClient as _;
use trellis_proto::{Amount, Encode, Hash, Keypair, Transaction, TxKind};

struct Options {
    txs: usize,
    senders: usize,
    validators: usize,
    catchup: u64,
    binary: PathBuf,
}

fn options() -> Options {
    let mut o = Options {
        txs: 20_000,
        senders: 128,
        validators: 4,
        catchup: 1000,
        binary: std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().join("trellis"),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let value = pair.get(1).cloned().unwrap_or_default();
        match pair[0].as_str() {
            "--txs" => o.txs = value.parse().expect("--txs N"),
            "--senders" => o.senders = value.parse().expect("--senders N"),
            "--validators" => o.validators = value.parse().expect("--validators N"),
            "--catchup" => o.catchup = value.parse().expect("--catchup BLOCKS"),
            "--bin" => o.binary = PathBuf::from(value),
            other => panic!("unknown option {other}"),
        }
    }
    assert!(o.binary.exists(), "no trellis binary at {} (build it, or pass --bin)", o.binary.display());
    o
}

struct Net {
    root: PathBuf,
    rpc: Vec<String>,
    homes: Vec<PathBuf>,
    children: Vec<Option<Child>>,
}

impl Drop for Net {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn start(name: &str, spec: &DevnetSpec, binary: &Path) -> Net {
    let root = std::env::temp_dir().join(format!("trellis-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let info = create_with(&root, spec).expect("devnet");
    let children = info.nodes.iter().map(|n| Some(spawn_node(binary, &n.home).expect("spawn"))).collect();
    Net {
        root,
        rpc: info.nodes.iter().map(|n| n.rpc.clone()).collect(),
        homes: info.nodes.iter().map(|n| n.home.clone()).collect(),
        children,
    }
}

fn client(url: &str) -> HttpClient {
    HttpClientBuilder::default().request_timeout(Duration::from_secs(30)).max_request_size(64 << 20).build(url).unwrap()
}

async fn height(client: &HttpClient) -> Option<u64> {
    client.head().await.ok().map(|head| head.height)
}

async fn wait_height(client: &HttpClient, target: u64, within: Duration) -> Duration {
    let started = Instant::now();
    while height(client).await.unwrap_or(0) < target {
        assert!(started.elapsed() < within, "height {target} not reached in {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Watches node 0's blocks and records when each transaction is first seen committed.
fn watch_commits(
    url: String,
    committed: Arc<Mutex<HashMap<Hash, Instant>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let client = client(&url);
            let mut seen = height(&client).await.unwrap_or(0);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let head = height(&client).await.unwrap_or(seen);
                for h in seen + 1..=head {
                    let block = client.block(h).await.unwrap();
                    let now = Instant::now();
                    let mut map = committed.lock().unwrap();
                    for tx in block.txs {
                        map.entry(tx.hash).or_insert(now);
                    }
                }
                seen = head;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
    })
}

fn transfers(chain: &str, senders: &[Keypair], per_sender: u64, first_nonce: u64) -> Vec<trellis_proto::SignedTx> {
    let to = Keypair::from_seed([0xEE; 32]).address();
    let mut txs = Vec::new();
    for nonce in first_nonce..first_nonce + per_sender {
        for key in senders {
            txs.push(
                Transaction {
                    sender: key.public_key(),
                    nonce,
                    fee: Amount(10),
                    kind: TxKind::Transfer { to, amount: Amount(1) },
                }
                .sign(chain, key),
            );
        }
    }
    txs
}

/// Gossips failing transactions (senders with no funds, fee `u64::MAX`) to every node until
/// `running` turns false; returns how many were sent and how many the nodes admitted.
fn spawn_flood(
    chain: &str,
    urls: Vec<String>,
    running: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<(u64, u64)> {
    let to = Keypair::from_seed([0xEF; 32]).address();
    let batches: Vec<Vec<String>> = (0..40u64)
        .map(|i| {
            let mut seed = [0xF1u8; 32];
            seed[..8].copy_from_slice(&i.to_le_bytes());
            let key = Keypair::from_seed(seed);
            (0..256)
                .map(|nonce| {
                    let kind = TxKind::Transfer { to, amount: Amount(1) };
                    hex::encode(
                        Transaction { sender: key.public_key(), nonce, fee: Amount(u64::MAX), kind }
                            .sign(chain, &key)
                            .to_bytes(),
                    )
                })
                .collect()
        })
        .collect();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let clients: Vec<HttpClient> = urls.iter().map(|u| client(u)).collect();
            let (mut sent, mut admitted) = (0u64, 0u64);
            'flood: loop {
                for (i, batch) in batches.iter().enumerate() {
                    if !running.load(std::sync::atomic::Ordering::SeqCst) {
                        break 'flood;
                    }
                    let answer = clients[i % clients.len()].gossip(batch.clone()).await;
                    sent += batch.len() as u64;
                    admitted += answer.map_or(0, |a| a.admitted as u64);
                }
            }
            (sent, admitted)
        })
    })
}

/// Submits `txs` in batches, round-robin over the nodes, at most `rate` per second (0: as
/// fast as possible); returns each transaction's submission time.
async fn submit(clients: &[HttpClient], txs: &[trellis_proto::SignedTx], rate: f64) -> HashMap<Hash, Instant> {
    let batch_size = if rate > 0.0 { ((rate / 20.0).ceil() as usize).max(1) } else { 500 };
    let started = Instant::now();
    let mut sent = HashMap::new();
    for (i, chunk) in txs.chunks(batch_size).enumerate() {
        if rate > 0.0 {
            let due = started + Duration::from_secs_f64((i * batch_size) as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let mut batch = BatchRequestBuilder::new();
        for tx in chunk {
            batch.insert("tx_submit", rpc_params![hex::encode(tx.to_bytes())]).unwrap();
        }
        let now = Instant::now();
        let response = clients[i % clients.len()].batch_request::<Value>(batch).await.expect("batch submit");
        let failures: Vec<String> =
            response.into_iter().filter_map(|r| r.err().map(|e| e.message().to_string())).collect();
        assert!(failures.is_empty(), "{} of {} refused, first: {}", failures.len(), chunk.len(), failures[0]);
        for tx in chunk {
            sent.insert(tx.hash(), now);
        }
    }
    sent
}

async fn wait_all(committed: &Arc<Mutex<HashMap<Hash, Instant>>>, sent: &HashMap<Hash, Instant>, within: Duration) {
    let started = Instant::now();
    loop {
        let done = {
            let map = committed.lock().unwrap();
            sent.keys().filter(|h| map.contains_key(h)).count()
        };
        if done == sent.len() {
            return;
        }
        assert!(started.elapsed() < within, "only {done} of {} committed in {within:?}", sent.len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn latencies(committed: &HashMap<Hash, Instant>, sent: &HashMap<Hash, Instant>) -> Vec<f64> {
    let mut out: Vec<f64> = sent.iter().map(|(h, t)| committed[h].duration_since(*t).as_secs_f64()).collect();
    out.sort_by(|a, b| a.partial_cmp(b).unwrap());
    out
}

fn main() {
    let o = options();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let chain = "bench-chain";
    let senders: Vec<Keypair> = (0..o.senders)
        .map(|i| {
            let mut seed = [7u8; 32];
            seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
            Keypair::from_seed(seed)
        })
        .collect();
    let per_sender = o.txs.div_ceil(o.senders) as u64;
    assert!(per_sender <= 250, "at most 250 transactions per sender fit the mempool; use more --senders");

    println!(
        "# throughput and finality: {} validators, {} transfers from {} senders",
        o.validators,
        per_sender as usize * o.senders,
        o.senders
    );
    let mut spec = DevnetSpec::new(o.validators, 31_000, chain, 200);
    spec.extra_accounts = senders.iter().map(|k| (k.address(), trellis_proto::Amount(1_000_000_000))).collect();
    spec.rpc_rate_limit = 1_000_000;
    let net = start("tps", &spec, &o.binary);
    let clients: Vec<HttpClient> = net.rpc.iter().map(|u| client(u)).collect();
    rt.block_on(wait_height(&clients[0], 2, Duration::from_secs(60)));
    let committed = Arc::new(Mutex::new(HashMap::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = watch_commits(net.rpc[0].clone(), committed.clone(), stop.clone());

    // Saturation: everything at once.
    let load = transfers(chain, &senders, per_sender, 0);
    let started = Instant::now();
    let sent = rt.block_on(submit(&clients, &load, 0.0));
    let submitted_in = started.elapsed().as_secs_f64();
    rt.block_on(wait_all(&committed, &sent, Duration::from_secs(300)));
    let last = sent.keys().map(|h| committed.lock().unwrap()[h]).max().unwrap();
    let span = last.duration_since(started).as_secs_f64();
    let lat = latencies(&committed.lock().unwrap(), &sent);
    println!(
        "saturation: {} tx submitted in {submitted_in:.2} s, all committed after {span:.2} s -> {:.0} tx/s",
        load.len(),
        load.len() as f64 / span
    );
    println!("saturation latency: p50 {:.3} s, p99 {:.3} s", percentile(&lat, 0.5), percentile(&lat, 0.99));

    // Steady load well under capacity: finality latency as a user sees it.
    let rate = 200.0;
    let steady = transfers(chain, &senders[..20], 40, per_sender);
    let sent = rt.block_on(submit(&clients, &steady, rate));
    rt.block_on(wait_all(&committed, &sent, Duration::from_secs(120)));
    let lat = latencies(&committed.lock().unwrap(), &sent);
    println!(
        "steady {rate} tx/s ({} tx): latency p50 {:.3} s, p99 {:.3} s",
        steady.len(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );

    // The same steady load while a flood of transactions that cannot pay (40 empty accounts ×
    // 256 nonces at the highest fee) is gossiped to every node as fast as they answer.
    let flooding = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flood = spawn_flood(chain, net.rpc.clone(), flooding.clone());
    let steady = transfers(chain, &senders[20..40], 40, per_sender);
    let sent = rt.block_on(submit(&clients, &steady, rate));
    rt.block_on(wait_all(&committed, &sent, Duration::from_secs(120)));
    flooding.store(false, std::sync::atomic::Ordering::SeqCst);
    let (flood_sent, flood_admitted) = flood.join().unwrap();
    let lat = latencies(&committed.lock().unwrap(), &sent);
    println!(
        "steady {rate} tx/s under a flood ({flood_sent} failing high-fee transactions gossiped, {flood_admitted} admitted): latency p50 {:.3} s, p99 {:.3} s",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    watcher.join().unwrap();
    drop(net);

    if o.catchup > 0 {
        println!("# catch-up: a follower {} blocks behind {} validators", o.catchup, o.validators);
        // The node that falls behind is a follower (not a validator), so the others keep their
        // full speed while it is down: a stopped validator would cost a propose timeout every
        // time its turn came.
        let mut spec = DevnetSpec::new(o.validators, 31_500, chain, 20);
        spec.rpc_rate_limit = 1_000_000;
        spec.followers = 1;
        let mut net = start("catchup", &spec, &o.binary);
        let clients: Vec<HttpClient> = net.rpc.iter().map(|u| client(u)).collect();
        rt.block_on(wait_height(&clients[0], 2, Duration::from_secs(60)));
        let last = o.validators;
        if let Some(mut child) = net.children[last].take() {
            stop_node(&mut child, Duration::from_secs(10));
        }
        let behind_at = rt.block_on(height(&clients[last])).unwrap_or(0).max(rt.block_on(height(&clients[0])).unwrap());
        let produce_started = Instant::now();
        rt.block_on(wait_height(&clients[0], behind_at + o.catchup, Duration::from_secs(900)));
        let produce = produce_started.elapsed().as_secs_f64();
        let target = rt.block_on(height(&clients[0])).unwrap();
        println!(
            "the {} validators produced {} blocks in {produce:.1} s ({:.1} blocks/s)",
            o.validators,
            o.catchup,
            o.catchup as f64 / produce
        );
        let restart = Instant::now();
        net.children[last] = Some(spawn_node(&o.binary, &net.homes[last]).expect("respawn"));
        let took = rt.block_on(wait_height(&clients[last], target, Duration::from_secs(900)));
        let total = restart.elapsed().as_secs_f64();
        println!("catch-up: {} blocks behind, reached height {target} {:.1} s after restart ({:.1} s after its RPC answered) -> {:.0} blocks/s", target - behind_at, total, took.as_secs_f64(), (target - behind_at) as f64 / total);
    }
}
