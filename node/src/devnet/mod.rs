//! `trellis devnet`: N validators on loopback with a fresh genesis, as real `trellis run`
//! processes, until Ctrl-C (or SIGTERM), which stops them all.
//!
//! [`launch`] lays the nodes out and starts them (`HOME/node<i>/`, `HOME/devnet.json`;
//! `HOME/pids` holds the node processes' ids while it runs); with miners, [`job`] runs the demo
//! job and [`report`] tabulates it (per-round table, miners' fates, `rounds.json`,
//! `miners.json`, the loss curve).

pub mod job;
pub mod launch;
pub mod report;

pub use launch::{
    create, create_with, spawn_devnet_node, spawn_node, spawn_node_as, stop_node, DevnetInfo, DevnetNode, DevnetSpec,
    DEVNET_MINER_BOND, DEVNET_SUBMITTER_BALANCE,
};

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;

use crate::home::GENESIS_BALANCE;
use trellis_protocol::behaviour::Behaviour;

#[derive(Debug, Args)]
pub struct DevnetArgs {
    /// Number of validator processes.
    #[arg(long, default_value_t = 4)]
    pub validators: usize,
    /// Directory for the nodes' homes (wiped if it holds an earlier devnet).
    #[arg(long, default_value = "devnet")]
    pub home: PathBuf,
    /// First port; node i uses BASE+10i (RPC), +1 (p2p), +2 (metrics).
    #[arg(long, default_value_t = 26600)]
    pub base_port: u16,
    /// The devnet's chain id (signed into every transaction and vote).
    #[arg(long, default_value = "trellis-devnet")]
    pub chain_id: String,
    /// Shortest block interval, in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub block_time_ms: u64,
    /// Miner processes; with any, the devnet submits a demo job, shows each round, and stops
    /// when the job ends.
    #[arg(long, default_value_t = 0)]
    pub miners: usize,
    /// Text file or directory the demo job trains on [default: this repository's docs/ and sources].
    #[arg(long)]
    pub dataset: Option<PathBuf>,
    /// Rounds of the demo job.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Model of the demo job: a preset (nano, micro, small, gpt2), or a zk model such as
    /// `mlp:16x16x4,batch=4,lr=0.5` for a job in groth16 verification mode (docs/zk.md).
    #[arg(long, default_value = "nano")]
    pub model: String,
    /// Inner AdamW steps per round of the demo job.
    #[arg(long, default_value_t = 40)]
    pub inner_steps: u32,
    /// How the demo job's miners encode their Δ: f32, f16, int8, q4, q2 or
    /// topk:<density>[+int8|+q4|+q2] (all but f32 and f16 with error feedback; docs/protocol.md
    /// §2.8).
    #[arg(long, default_value = "f32")]
    pub encoding: String,
    /// The demo job's inner optimizer: adamw, or muon (MuLoCo; its compact checkpoints hold the
    /// matrices' momentum in bf16).
    #[arg(long, default_value = "adamw")]
    pub inner_optimizer: String,
    /// The fewest inner steps a miner of the demo job may commit [default: --inner-steps]; below
    /// it a slower miner commits what it trained once the others have committed
    /// (docs/protocol.md §4.3 "Stragglers"; `--adversary straggler` stages a 3× slower miner).
    #[arg(long)]
    pub min_inner_steps: Option<u32>,
    /// Streaming DiLoCo: the demo job's parameters in this many fragments, round r
    /// synchronising fragment r mod F (each fragment every F rounds; a round's Δ is 1/F of the
    /// model; docs/protocol.md §2.9). Needs --encoding f32 or f16 and no --min-inner-steps.
    #[arg(long, default_value_t = 1)]
    pub fragments: u32,
    /// The demo job's checkpoint interval c [default: the longest that keeps each validator's
    /// re-execution within 5% of a miner's training, c ≤ V·H/(40·K); a groth16 job's divides H].
    #[arg(long)]
    pub checkpoint_interval: Option<u32>,
    /// Each node's own IPv4 address, comma-separated, one per node in order (validators, then
    /// miners) [default: all on 127.0.0.1]. For the WAN testbed (scripts/wan-testbed.sh).
    #[arg(long, value_delimiter = ',')]
    pub node_ips: Vec<String>,
    /// Run node i inside the network namespace PREFIX{i} (which must exist). For the WAN testbed.
    #[arg(long)]
    pub netns_prefix: Option<String>,
    /// Cheating nodes, as KIND=COUNT (repeatable). Miners, besides the honest ones:
    /// poison-sign-flip, poison-noise, fake-trail, unit-gap, skip-work, copy, withhold,
    /// lying-peer, forged-start (a streaming job); and straggler, a miner 3× slower than it could
    /// be (not an attack). Validators, taken from the last of --validators: forge-aggregate,
    /// frame, double-propose. This build has the `adversary` feature.
    #[cfg(feature = "adversary")]
    #[arg(long = "adversary", value_name = "KIND=COUNT", value_parser = trellis_protocol::behaviour::parse_adversary)]
    pub adversaries: Vec<(Behaviour, usize)>,
}

impl DevnetArgs {
    /// The cheating miners asked for (none in a build without the `adversary` feature).
    pub fn adversaries(&self) -> Vec<(Behaviour, usize)> {
        #[cfg(feature = "adversary")]
        return self.adversaries.clone();
        #[cfg(not(feature = "adversary"))]
        Vec::new()
    }

    /// Every miner process: honest ones and adversaries.
    pub fn all_miners(&self) -> usize {
        self.miners + self.adversaries().iter().filter(|(b, _)| !b.is_validators()).map(|(_, n)| n).sum::<usize>()
    }
}

fn head_height(rpc: &str) -> Option<u64> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
    rt.block_on(async {
        use crate::rpc::api::TrellisRpcClient as _;
        let client = jsonrpsee::http_client::HttpClientBuilder::default()
            .request_timeout(Duration::from_secs(2))
            .build(rpc)
            .ok()?;
        client.head().await.ok().map(|head| head.height)
    })
}

/// `trellis devnet`: create, start, report, and stop everything on Ctrl-C.
pub fn devnet(args: DevnetArgs) -> anyhow::Result<()> {
    let mut spec = DevnetSpec::new(args.validators, args.base_port, &args.chain_id, args.block_time_ms);
    spec.miners = args.miners;
    spec.adversaries = args.adversaries();
    spec.hosts = args.node_ips.clone();
    spec.netns_prefix = args.netns_prefix.clone();
    // Check the demo job before starting anything.
    let demo = if args.all_miners() > 0 { Some(crate::devnet::job::DemoJob::prepare(&args)?) } else { None };
    let info = create_with(&args.home, &spec)?;
    let binary = std::env::current_exe().context("finding the trellis binary")?;
    let mut children = Vec::new();
    for node in &info.nodes {
        children.push(spawn_devnet_node(&binary, node)?);
    }
    // For whoever has to clean up after a devnet that could not (a test that timed out).
    let pids: Vec<String> = children.iter().map(|c| c.id().to_string()).collect();
    std::fs::write(args.home.join("pids"), pids.join("\n") + "\n")?;
    println!(
        "devnet '{}': {} validators, {} miners under {}",
        info.chain_id,
        args.validators,
        args.all_miners(),
        args.home.display()
    );
    for (i, node) in info.nodes.iter().enumerate() {
        let role = node.behaviour.map_or_else(|| node.role.clone(), |b| format!("miner ({b})"));
        println!(
            "  node{i} {role:9}  rpc {}  p2p {}  peers {}/p2p/{}  log {}/node.log",
            node.rpc,
            node.p2p,
            node.blobs,
            node.peer_id,
            node.home.display()
        );
    }
    println!("keys: {}/node<i>/keys/node.key (each funded with {GENESIS_BALANCE})", args.home.display());
    println!("try:  trellis query head --rpc {}", info.nodes[0].rpc);
    println!("Ctrl-C stops every node.");

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("signal runtime"); // ok: a runtime without I/O drivers cannot fail to build here
            rt.block_on(async {
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(mut terminate) => {
                        tokio::select! {
                            _ = tokio::signal::ctrl_c() => {}
                            _ = terminate.recv() => {}
                        }
                    }
                    Err(_) => {
                        let _ = tokio::signal::ctrl_c().await;
                    }
                }
            });
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        });
    }
    let mut result = Ok(());
    if let Some(demo) = demo {
        let state_bytes = demo.state_bytes();
        result = demo.run(&args.home, &info, &mut children, &stop);
        let pids: Vec<u32> = children.iter().map(std::process::Child::id).collect();
        crate::devnet::report::print_peak_memory(&info, &pids, state_bytes);
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    let mut last_report = Instant::now() - Duration::from_secs(10);
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        for (i, child) in children.iter_mut().enumerate() {
            if let Ok(Some(status)) = child.try_wait() {
                result =
                    Err(anyhow::anyhow!("node{i} exited ({status}); see {}/node.log", info.nodes[i].home.display()));
            }
        }
        if result.is_err() {
            break;
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = Instant::now();
            let heights: Vec<String> = info
                .nodes
                .iter()
                .map(|n| head_height(&n.rpc).map_or_else(|| "-".to_string(), |h| h.to_string()))
                .collect();
            println!("heights: {}", heights.join(" "));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("stopping {} nodes", children.len());
    for child in &mut children {
        stop_node(child, Duration::from_secs(5));
    }
    result
}
