//! The one harness of the end-to-end tests: a devnet of real `trellis run` processes on
//! 127.0.0.1, started, killed, restarted and asked about its chain through the node's typed
//! RPC client (`trellis_node::rpc::api::TrellisRpcClient`).
//!
//! Every wait has a deadline and names what it waited for; every process is killed by pid when
//! the cluster is dropped (also when a test panics, whose node logs are then kept and named);
//! every cluster gets its own ports and folder, so test binaries can run at once.

// Each test binary uses part of the harness.
#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use jsonrpsee::core::client::Subscription;
use jsonrpsee::http_client::{HttpClient, HttpClientBuilder};
use jsonrpsee::ws_client::{WsClient, WsClientBuilder};
use trellis_contracts::state::{Job, RoundState};
use trellis_node::devnet::{create_with, spawn_devnet_node, stop_node, DevnetInfo, DevnetSpec};
use trellis_node::rpc::api::{AccountView, BlockView, HeadInfo, JobEvent, TrellisRpcClient, TxStatus};
use trellis_proto::{Encode, Hash, SignedTx};

pub const BIN: &str = env!("CARGO_BIN_EXE_trellis");

/// A port range of its own for each test binary run (by pid) and each cluster in it (`seed`),
/// below the kernel's ephemeral range (32768 and up), where an outgoing connection could
/// already hold the port.
pub fn base_port(range_start: u16, seed: u16) -> u16 {
    range_start + ((std::process::id() as u16).wrapping_mul(7) % 100) * 50 + seed
}

/// A running devnet; its processes die with it.
pub struct Cluster {
    pub info: DevnetInfo,
    children: Vec<Option<Child>>,
    pub root: PathBuf,
    rt: tokio::runtime::Runtime,
    /// Open WebSocket connections of subscriptions handed out, kept as long as the cluster.
    sockets: Vec<WsClient>,
}

impl Drop for Cluster {
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

impl Cluster {
    /// Creates the devnet `spec` describes under a fresh temporary folder named after `name`,
    /// and starts every node with its role.
    pub fn start(name: &str, spec: &DevnetSpec) -> Cluster {
        let mut cluster = Cluster::create(name, spec);
        cluster.start_all();
        cluster
    }

    /// Creates the devnet's homes without starting a node (to prepare a node's disk first).
    pub fn create(name: &str, spec: &DevnetSpec) -> Cluster {
        let root = std::env::temp_dir().join(format!("trellis-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let info = create_with(&root, spec).unwrap_or_else(|e| panic!("creating the {name} devnet: {e:#}"));
        let children = info.nodes.iter().map(|_| None).collect();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        Cluster { info, children, root, rt, sockets: Vec::new() }
    }

    /// Starts every node that is not running.
    pub fn start_all(&mut self) {
        for node in 0..self.info.nodes.len() {
            if self.children[node].is_none() {
                self.restart(node);
            }
        }
    }

    pub fn url(&self, node: usize) -> &str {
        &self.info.nodes[node].rpc
    }

    /// A typed client of `node`'s RPC.
    pub fn client(&self, node: usize) -> HttpClient {
        HttpClientBuilder::default().request_timeout(Duration::from_secs(10)).build(self.url(node)).unwrap()
    }

    /// Runs `future` (typically a call of [`Cluster::client`]) to its end.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.rt.block_on(future)
    }

    pub fn head(&self, node: usize) -> Option<HeadInfo> {
        self.block_on(self.client(node).head()).ok()
    }

    /// `node`'s committed height; `None` while it does not answer.
    pub fn height(&self, node: usize) -> Option<u64> {
        self.head(node).map(|h| h.height)
    }

    pub fn block(&self, node: usize, height: u64) -> Option<BlockView> {
        self.block_on(self.client(node).block(height)).ok()
    }

    pub fn account(&self, node: usize, address: &str) -> AccountView {
        self.block_on(self.client(node).account(address.to_string()))
            .unwrap_or_else(|e| panic!("node{node}: state_getAccount({address}): {e}"))
    }

    pub fn job(&self, node: usize, id: u64) -> Option<Job> {
        self.block_on(self.client(node).job(id)).ok()
    }

    pub fn round(&self, node: usize, job: u64, round: u32) -> RoundState {
        self.block_on(self.client(node).round(job, round))
            .unwrap_or_else(|e| panic!("node{node}: job_getRound({job}, {round}): {e}"))
    }

    /// Submits `tx` to `node`; the refusal's message when it is refused.
    pub fn submit(&self, node: usize, tx: &SignedTx) -> Result<Hash, String> {
        self.block_on(self.client(node).submit(hex::encode(tx.to_bytes()))).map(|s| s.hash).map_err(|e| e.to_string())
    }

    /// Waits until transaction `hash` is no longer pending on `node`: committed or failed.
    pub fn wait_for_inclusion(&self, node: usize, hash: Hash, within: Duration) -> TxStatus {
        self.wait_until(&format!("{hash} included"), within, |c| {
            match c.block_on(c.client(node).tx(hash.to_string())) {
                Ok(TxStatus::Pending) | Err(_) => None,
                Ok(status) => Some(status),
            }
        })
    }

    /// Every job event of `node` from now on (the connection lives as long as the cluster).
    pub fn job_events(&mut self, node: usize) -> Subscription<JobEvent> {
        let url = self.url(node).replace("http://", "ws://");
        let socket = self.block_on(WsClientBuilder::default().build(&url)).expect("a WebSocket to the node");
        let events = self.block_on(socket.subscribe_job_events(None)).expect("job_subscribeEvents");
        self.sockets.push(socket);
        events
    }

    /// The events `subscription` delivered until it was quiet for half a second.
    pub fn drain(&self, subscription: &mut Subscription<JobEvent>) -> Vec<JobEvent> {
        let mut events = Vec::new();
        while let Ok(Some(Ok(event))) =
            self.block_on(async { tokio::time::timeout(Duration::from_millis(500), subscription.next()).await })
        {
            events.push(event);
        }
        events
    }

    /// Polls `probe` every 200 ms until it gives a value; panics naming `what` after `within`.
    pub fn wait_until<T>(&self, what: &str, within: Duration, mut probe: impl FnMut(&Self) -> Option<T>) -> T {
        let deadline = Instant::now() + within;
        loop {
            if let Some(value) = probe(self) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {within:?}; node logs under {}",
                self.root.display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until every listed node is at `height` or above.
    pub fn wait_for_height(&self, nodes: &[usize], height: u64, within: Duration) {
        self.wait_until(&format!("nodes {nodes:?} at height {height}"), within, |c| {
            nodes.iter().all(|&n| c.height(n).is_some_and(|h| h >= height)).then_some(())
        });
    }

    /// Kills `node` (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self, node: usize) {
        if let Some(mut child) = self.children[node].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops `node` with SIGTERM (its graceful shutdown), and SIGKILL after `grace`.
    pub fn stop(&mut self, node: usize, grace: Duration) {
        if let Some(mut child) = self.children[node].take() {
            stop_node(&mut child, grace);
        }
    }

    /// Kills every running node at once (SIGKILL to each before waiting for any).
    pub fn kill_all(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
        }
        for node in 0..self.children.len() {
            self.kill(node);
        }
    }

    /// Starts `node` (again) from its home (its database, WAL and keys).
    pub fn restart(&mut self, node: usize) {
        assert!(self.children[node].is_none(), "node{node} is running");
        let home = &self.info.nodes[node];
        // With its behaviour, for an adversary (a build with the `adversary` feature).
        self.children[node] = Some(spawn_devnet_node(Path::new(BIN), home).expect("respawning a node"));
    }

    /// Starts a node from a home made outside the devnet (by `trellis init`) as one more member
    /// of the cluster, killed with it; returns its index.
    pub fn add_node(&mut self, home: &Path, role: &str) -> usize {
        let config = trellis_node::home::Home::new(home).load_config().expect("the added node's config");
        let key = trellis_node::home::Home::new(home).load_key().expect("the added node's key");
        self.info.nodes.push(trellis_node::devnet::DevnetNode {
            home: home.to_path_buf(),
            address: key.address().to_string(),
            rpc: format!("http://{}", config.rpc.listen),
            p2p: config.p2p.listen.clone(),
            metrics: format!("http://{}/metrics", config.metrics.listen),
            role: role.to_string(),
            blobs: config.p2p.peer_listen.clone(),
            peer_id: String::new(),
            behaviour: None,
            netns: None,
        });
        self.children.push(None);
        let node = self.children.len() - 1;
        self.restart(node);
        node
    }

    /// One metric of `node`'s `/metrics` (a row without labels), if the node answers.
    pub fn metric(&self, node: usize, name: &str) -> Option<u64> {
        let url = self.info.nodes[node].metrics.clone();
        let text = self.block_on(async move {
            let address = url.trim_start_matches("http://").trim_end_matches("/metrics").to_string();
            let mut stream = tokio::net::TcpStream::connect(&address).await.ok()?;
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.ok()?;
            let mut text = String::new();
            stream.read_to_string(&mut text).await.ok()?;
            Some(text)
        })?;
        text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    pub fn is_running(&self, node: usize) -> bool {
        self.children[node].is_some()
    }

    /// Checks that every listed node holds the same block hash at each height up to `up_to`.
    pub fn assert_agree(&self, nodes: &[usize], up_to: u64) {
        for height in 1..=up_to {
            let hashes: Vec<Option<Hash>> = nodes.iter().map(|&n| self.block(n, height).map(|b| b.hash)).collect();
            let first = hashes[0].unwrap_or_else(|| panic!("node{} has no block {height}", nodes[0]));
            for (i, hash) in hashes.iter().enumerate() {
                assert_eq!(*hash, Some(first), "node{} disagrees at height {height}", nodes[i]);
            }
        }
    }
}
