//! `trellis run`: start a node from its home directory — database, consensus engine, JSON-RPC
//! and metrics — and run until Ctrl-C or SIGTERM.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use arc_malachitebft_app_channel::app::config::{
    ConsensusConfig, GossipSubConfig, NodeConfig as EngineNodeConfig, P2pConfig, PubSubProtocol, ValueSyncConfig,
};
use arc_malachitebft_app_channel::app::net::Multiaddr;
use arc_malachitebft_app_channel::app::types::codec::Codec;
use arc_malachitebft_app_channel::app::types::core::LinearTimeouts;
use arc_malachitebft_app_channel::app::types::Keypair as NetworkKeypair;
use arc_malachitebft_app_channel::{
    start_engine, ConsensusContext, NetworkContext, NetworkIdentity, RequestContext, Signer, SyncContext, WalContext,
};
use bytesize::ByteSize;
use clap::{Args, ValueEnum};
use tokio::sync::broadcast;
use trellis_consensus::{TrellisCodec, TrellisContext, TrellisSigner, TrellisVerifier, ValidatorAddress};
use trellis_proto::Keypair;

use crate::engine::consensus_app::{ConsensusApp, Timing};
use crate::home::{Home, NodeConfig};
use crate::mempool::{Mempool, MempoolLimits};
use crate::metrics::Metrics;
use crate::roles::aggregate::AggregateBook;
use crate::roles::RoleContext;
use crate::rpc::RpcLimits;
use crate::shared::Shared;
use crate::storage::blobs::BlobStore;
use crate::storage::ledger::Ledger;
use crate::supervisor::Supervisor;
use trellis_protocol::behaviour::Behaviour;

/// What a node does on the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NodeRole {
    /// Votes in consensus and proposes blocks (its key must be in the validator set to count).
    Validator,
    /// Follows the chain without voting, joins the jobs its miner stake allows and trains
    /// their rounds (`--device cuda` for a GPU).
    Miner,
    /// Follows the chain, serves RPC, never signs.
    Full,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The node's home directory (from `trellis init`).
    #[arg(long)]
    pub home: PathBuf,
    /// What this node does on the network.
    #[arg(long, value_enum, default_value_t = NodeRole::Validator)]
    pub role: NodeRole,
    /// Log one JSON object per line instead of text (filter with RUST_LOG).
    #[arg(long)]
    pub log_json: bool,
    /// Where a miner trains and a validator re-executes segments: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// CPU threads for libtorch (results do not depend on it).
    #[arg(long, default_value_t = 1)]
    pub threads: i32,
    /// How the node behaves: honest, or an attack for tests and devnets (poison-sign-flip,
    /// poison-noise, fake-trail, skip-work, copy, withhold, unit-gap, lying-peer, forged-start,
    /// straggler; validators: forge-aggregate, frame, double-propose; this build has the
    /// `adversary` feature, builds without it cannot misbehave).
    #[cfg(feature = "adversary")]
    #[arg(long, value_parser = parse_behaviour, default_value = "honest")]
    pub behaviour: Behaviour,
}

#[cfg(feature = "adversary")]
fn parse_behaviour(text: &str) -> Result<Behaviour, String> {
    text.parse()
}

impl RunArgs {
    fn behaviour(&self) -> Behaviour {
        #[cfg(feature = "adversary")]
        return self.behaviour;
        #[cfg(not(feature = "adversary"))]
        Behaviour::Honest
    }
}

/// Structured logs on stderr; `RUST_LOG` filters (default: info for trellis, warn for the engine).
fn init_logging(json: bool) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,arc_malachitebft=warn,libp2p=warn,ractor=warn"));
    // arkworks' constraint-system spans (targets r1cs and gr1cs) format whole constraint systems
    // as their fields: with them on, proving a groth16 segment took minutes instead of seconds.
    for quiet in ["r1cs=off", "gr1cs=off"] {
        if let Ok(directive) = quiet.parse() {
            filter = filter.add_directive(directive);
        }
    }
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr);
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}

/// The engine's view of the configuration.
#[derive(Debug, Clone)]
struct EngineConfig {
    moniker: String,
    consensus: ConsensusConfig,
    value_sync: ValueSyncConfig,
}

impl EngineNodeConfig for EngineConfig {
    fn moniker(&self) -> &str {
        &self.moniker
    }
    fn consensus(&self) -> &ConsensusConfig {
        &self.consensus
    }
    fn consensus_mut(&mut self) -> &mut ConsensusConfig {
        &mut self.consensus
    }
    fn value_sync(&self) -> &ValueSyncConfig {
        &self.value_sync
    }
    fn value_sync_mut(&mut self) -> &mut ValueSyncConfig {
        &mut self.value_sync
    }
}

fn parse_multiaddr(text: &str, what: &str) -> anyhow::Result<Multiaddr> {
    text.parse().with_context(|| format!("{what} '{text}' is not a multiaddr (like /ip4/127.0.0.1/tcp/26001)"))
}

/// The consensus gossip mesh of a node that does not vote: two peers instead of six. Validators
/// publish their votes and proposals to every peer they know (flood publishing), so a follower's
/// relaying adds duplicates, not delivery; a miner's uplink is better spent on its blobs (relaying
/// was a tenth of a miner's bytes across continents, `docs/benchmarks.md`).
fn follower_gossip() -> PubSubProtocol {
    PubSubProtocol::GossipSub(GossipSubConfig::new(2, 4, 2, 1, false, false, true))
}

fn engine_config(config: &NodeConfig, role: NodeRole) -> anyhow::Result<EngineConfig> {
    let persistent_peers = config
        .p2p
        .persistent_peers
        .iter()
        .map(|p| parse_multiaddr(p, "p2p.persistent_peers entry"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let p2p = P2pConfig {
        listen_addr: parse_multiaddr(&config.p2p.listen, "p2p.listen")?,
        persistent_peers,
        // A block is at most 4 MiB; its part adds a few hundred bytes.
        pubsub_max_size: ByteSize::mib(5),
        rpc_max_size: ByteSize::mib(16),
        protocol: if role == NodeRole::Validator { PubSubProtocol::default() } else { follower_gossip() },
        ..P2pConfig::default()
    };
    let mut p2p = p2p;
    p2p.discovery.max_connections_per_ip = config.p2p.max_connections_per_ip.max(1);
    let consensus = ConsensusConfig { p2p, ..ConsensusConfig::default() };
    let value_sync = ValueSyncConfig {
        enabled: true,
        max_response_size: ByteSize::mib(16),
        status_update_interval: Duration::from_secs(2),
        ..ValueSyncConfig::default()
    };
    Ok(EngineConfig { moniker: config.moniker.clone(), consensus, value_sync })
}

fn timing(config: &NodeConfig) -> Timing {
    let c = &config.consensus;
    let timeouts = LinearTimeouts {
        propose: Duration::from_millis(c.timeout_propose_ms),
        prevote: Duration::from_millis(c.timeout_prevote_ms),
        precommit: Duration::from_millis(c.timeout_precommit_ms),
        rebroadcast: Duration::from_millis(
            c.timeout_propose_ms.saturating_add(c.timeout_prevote_ms).saturating_add(c.timeout_precommit_ms),
        ),
        ..LinearTimeouts::default()
    };
    Timing { block_time: Duration::from_millis(c.block_time_ms), timeouts }
}

fn wal_path(home: &Home) -> PathBuf {
    home.data().join("wal").join("consensus.wal")
}

fn chain_dir(home: &Home) -> PathBuf {
    home.data().join("chain")
}

/// Hands the consensus network every consensus address the peer network learns, and takes back
/// those it forgets to make room.
async fn add_consensus_peers(
    mut peers: tokio::sync::mpsc::Receiver<crate::p2p::swarm::ConsensusPeer>,
    requests: tokio::sync::mpsc::Sender<arc_malachitebft_app_channel::NetworkRequest>,
) {
    use crate::p2p::swarm::ConsensusPeer;
    use arc_malachitebft_app_channel::NetworkRequest;
    // Only what this task added is ever removed: a peer of the node's own configuration (its
    // `persistent_peers`, which an add refuses as known) stays whatever the peer network forgets.
    let mut added = std::collections::HashSet::new();
    while let Some(peer) = peers.recv().await {
        let (answer, address, what) = match peer {
            ConsensusPeer::Learned(address) => {
                let answer = NetworkRequest::add_persistent_peer(&requests, address.clone()).await;
                if matches!(answer, Ok(Ok(()))) {
                    added.insert(address.clone());
                }
                (answer, address, "added")
            }
            ConsensusPeer::Forgotten(address) => {
                if !added.remove(&address) {
                    continue;
                }
                (NetworkRequest::remove_persistent_peer(&requests, address.clone()).await, address, "removed")
            }
        };
        match answer {
            Ok(Ok(())) => tracing::debug!(target: "node::peers", %address, what, "consensus peer"),
            Ok(Err(error)) => {
                tracing::debug!(target: "node::peers", %address, what, ?error, "consensus peer not changed")
            }
            Err(error) => {
                tracing::warn!(target: "node::peers", %address, what, %error, "consensus network did not take the change")
            }
        }
    }
}

/// Runs a node until it is stopped.
pub fn run(args: RunArgs) -> anyhow::Result<()> {
    init_logging(args.log_json);
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    if args.threads < 1 {
        bail!("--threads must be at least 1");
    }
    tch::set_num_threads(args.threads);
    let device = trellis_trainer::device::select(&args.device)?;
    runtime.block_on(run_async(&args.home, args.role, device, args.behaviour()))
}

async fn run_async(root: &Path, role: NodeRole, device: tch::Device, behaviour: Behaviour) -> anyhow::Result<()> {
    let home = Home::new(root);
    let config = home.load_config()?;
    let genesis = home.load_genesis()?;
    let key = home.load_key()?;
    if genesis.chain_id != config.chain_id {
        bail!(
            "{} is for chain '{}' but {} says '{}'",
            home.genesis().display(),
            genesis.chain_id,
            home.config().display(),
            config.chain_id
        );
    }
    std::fs::create_dir_all(home.data()).with_context(|| format!("creating {}", home.data().display()))?;
    let ledger = Ledger::open(&chain_dir(&home), &genesis)?;
    let head = ledger.head()?;
    let validators = ledger.validator_set();
    if validators.validators().is_empty() {
        bail!("the chain has no validators: nothing can be committed");
    }
    let is_validator = validators.contains(&ValidatorAddress(key.address()));
    if role == NodeRole::Validator && !is_validator {
        tracing::warn!(target: "node", address = %key.address(), "this key is not in the validator set; the node will follow the chain without voting");
    }
    if behaviour != Behaviour::Honest {
        match (behaviour.is_validators(), role) {
            (true, NodeRole::Validator) | (false, NodeRole::Miner) => {}
            (true, _) => bail!("--behaviour {behaviour} is a validator's behaviour: run it with --role validator"),
            (false, _) => bail!("--behaviour {behaviour} is a miner's behaviour: run it with --role miner"),
        }
        tracing::warn!(target: "node", %behaviour, "this node is an ADVERSARY (test and devnet builds only)");
    }
    crate::memory::trim_freed_memory();
    let metrics = Arc::new(Metrics::default());
    metrics.height.set(head.height.0);
    let mut supervisor = Supervisor::default();
    let (gossip, gossip_queue) = tokio::sync::mpsc::channel(crate::p2p::gossip::QUEUE);
    if config.p2p.peer_listen.is_empty() {
        bail!(
            "p2p.peer_listen in {} is empty: a node needs its peer network (transactions, blobs, discovery)",
            home.config().display()
        );
    }
    let aggregates = (role == NodeRole::Validator).then(|| Arc::new(AggregateBook::default()));
    let store = BlobStore::open(&home.data().join("blobs"))?;
    let responder: Arc<dyn crate::p2p::exchange::Responder> = match behaviour {
        #[cfg(feature = "adversary")]
        Behaviour::LyingPeer => Arc::new(crate::p2p::exchange::LyingResponder::new(store.clone())),
        _ => Arc::new(crate::p2p::exchange::StoreResponder::new(store.clone())),
    };
    let consensus_port = parse_multiaddr(&config.p2p.listen, "p2p.listen")?
        .iter()
        .find_map(|p| match p {
            libp2p::multiaddr::Protocol::Tcp(port) => Some(port),
            _ => None,
        })
        .unwrap_or(0);
    let validator_peers = crate::p2p::swarm::ValidatorPeers::default();
    validator_peers.set(ledger.validator_keys());
    let peer_network = crate::p2p::swarm::start(
        crate::p2p::swarm::SwarmConfig {
            seed: key.seed(),
            listen: config.p2p.peer_listen.clone(),
            bootnodes: config.p2p.bootnodes.clone(),
            external_addresses: config.p2p.external_addresses.clone(),
            hello: trellis_proto::peerwire::Hello {
                chain_id: genesis.chain_id.clone(),
                genesis: crate::home::genesis_fingerprint(&genesis),
                consensus_port,
            },
            max_peers: config.p2p.max_peers,
            request_timeout: crate::p2p::swarm::REQUEST_TIMEOUT,
            validator_peers: validator_peers.clone(),
        },
        store,
        responder,
        metrics.clone(),
    )
    .await?;
    let crate::p2p::swarm::PeerNetwork { blobs: net, gossip: gossip_handle, gossiped, consensus_peers, .. } =
        peer_network;
    supervisor
        .spawn("transaction gossip", crate::p2p::gossip::publish(gossip_queue, gossip_handle.clone(), metrics.clone()));

    let shared = Arc::new(Shared {
        ledger,
        mempool: Mutex::new(Mempool::new(MempoolLimits::default())),
        events: broadcast::channel(1024).0,
        metrics: metrics.clone(),
        gossip,
        aggregates: aggregates.clone(),
        beacon: (role == NodeRole::Validator).then(|| Arc::new(crate::engine::beacon::BeaconKeeper::new(&key))),
        // A framer does not judge evidence (its own made-up verdicts would never leave its pool).
        evidence: (role == NodeRole::Validator && behaviour != Behaviour::Frame)
            .then(|| Arc::new(crate::engine::evidence_desk::EvidenceDesk::new(net.clone()))),
    });
    if let Some(keeper) = &shared.beacon {
        supervisor.spawn(
            "beacon",
            crate::engine::beacon::run(shared.clone(), Arc::new(Keypair::from_seed(key.seed())), keeper.clone()),
        );
    }
    supervisor.spawn("gossip checks", crate::p2p::gossip::receive(gossiped, gossip_handle, shared.clone()));
    supervisor.spawn("validator peers", refresh_validator_peers(shared.clone(), validator_peers));
    let rpc_listen =
        config.rpc.listen.parse().with_context(|| format!("rpc.listen '{}' is not host:port", config.rpc.listen))?;
    let limits = RpcLimits {
        max_request_bytes: config.rpc.max_request_bytes,
        requests_per_second: config.rpc.rate_limit_per_second,
        gossip_per_second: config.rpc.gossip_rate_limit_per_second,
        max_subscriptions_per_connection: config.rpc.max_subscriptions_per_connection,
    };
    let (rpc_address, rpc_handle) = crate::rpc::serve(rpc_listen, shared.clone(), limits).await?;
    if !config.metrics.listen.is_empty() {
        let listener = tokio::net::TcpListener::bind(&config.metrics.listen)
            .await
            .with_context(|| format!("metrics cannot listen on {}", config.metrics.listen))?;
        supervisor.spawn("metrics", crate::metrics::serve(listener, metrics.clone()));
    }

    let chain_id = config.chain_id.clone();
    let ctx = TrellisContext::new(&chain_id);
    let network_key = NetworkKeypair::ed25519_from_bytes(key.seed()).context("deriving the network key")?;
    let address = ValidatorAddress(key.address());
    let signs = role == NodeRole::Validator;
    {
        let key = Arc::new(Keypair::from_seed(key.seed()));
        let work_dir = home.data().join("work");
        #[cfg(feature = "adversary")]
        let context = RoleContext::new(shared.clone(), net.clone(), key, work_dir, device, behaviour);
        #[cfg(not(feature = "adversary"))]
        let context = RoleContext::new(shared.clone(), net.clone(), key, work_dir, device);
        match (role, &aggregates) {
            (NodeRole::Miner, _) => {
                supervisor.spawn("miner role", crate::roles::miner::run(context, config.miner.clone()))
            }
            (NodeRole::Validator, Some(book)) => {
                supervisor.spawn("validator duties", crate::roles::run_validator(context, book.clone()))
            }
            _ => {}
        }
    }
    let identity = if signs {
        let signer = TrellisSigner::new(&chain_id, Keypair::from_seed(key.seed()));
        let peer_id = network_key.public().to_peer_id().to_bytes();
        let proof = signer
            .sign_validator_proof(key.public_key().0.to_vec(), peer_id)
            .await
            .map_err(|e| anyhow::anyhow!("signing the validator proof: {e}"))?;
        let proof_bytes =
            TrellisCodec.encode(&proof).map_err(|e| anyhow::anyhow!("encoding the validator proof: {e}"))?;
        NetworkIdentity::new_validator(config.moniker.clone(), network_key, address.to_string(), proof_bytes)
    } else {
        NetworkIdentity::new(config.moniker.clone(), network_key, None)
    };
    let verifier = Box::new(TrellisVerifier::new(&chain_id));
    let consensus_ctx = if signs {
        ConsensusContext::new_validator(
            address,
            verifier,
            Box::new(TrellisSigner::new(&chain_id, Keypair::from_seed(key.seed()))),
        )
    } else {
        ConsensusContext::new_full_node(address, verifier)
    };
    let wal = wal_path(&home);
    if let Some(parent) = wal.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let (channels, engine) = start_engine(
        ctx,
        engine_config(&config, role)?,
        WalContext::new(wal, TrellisCodec),
        NetworkContext::new(identity, TrellisCodec),
        consensus_ctx,
        SyncContext::new(TrellisCodec),
        RequestContext::new(100),
    )
    .await
    .map_err(|e| anyhow::anyhow!("starting the consensus engine: {e}"))?;

    supervisor.spawn("consensus peers", add_consensus_peers(consensus_peers, channels.net_requests.clone()));

    println!("trellis node '{}' on chain '{}' at height {}", config.moniker, chain_id, head.height);
    println!("  address  {}{}", key.address(), if is_validator && signs { " (validator)" } else { "" });
    println!("  rpc      http://{rpc_address}");
    println!("  p2p      {}", config.p2p.listen);
    println!(
        "  peers    {}/p2p/{} ({} role; others join with --bootnode this address)",
        config.p2p.peer_listen,
        net.local_peer(),
        format!("{role:?}").to_lowercase()
    );
    if !config.metrics.listen.is_empty() {
        println!("  metrics  http://{}/metrics", config.metrics.listen);
    }

    let key = if signs { Some(Arc::new(key)) } else { None };
    let app = ConsensusApp::new(shared, key, timing(&config));
    #[cfg(feature = "adversary")]
    let app = app.double_proposing(behaviour == Behaviour::DoublePropose);
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let failure = tokio::select! {
        () = app.run(channels) => Some(anyhow::anyhow!("the consensus engine stopped")),
        stopped = supervisor.first_stopped() => Some(anyhow::Error::new(stopped)),
        _ = tokio::signal::ctrl_c() => { tracing::info!(target: "node", "Ctrl-C: stopping"); None }
        _ = terminate.recv() => { tracing::info!(target: "node", "SIGTERM: stopping"); None }
    };
    if let Some(failure) = &failure {
        tracing::error!(target: "node", error = format!("{failure:#}"), "stopping the node");
    }
    engine.actor.stop(Some("node stopping".into()));
    let _ = rpc_handle.stop();
    failure.map_or(Ok(()), Err)
}

/// Keeps the peer network's view of the validator set (who comes first for consensus places)
/// up to date: the set changes at epoch boundaries, so a look every few seconds is enough.
async fn refresh_validator_peers(shared: Arc<Shared>, peers: crate::p2p::swarm::ValidatorPeers) {
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let ledger = shared.clone();
        match tokio::task::spawn_blocking(move || ledger.ledger.validator_keys()).await {
            Ok(keys) => peers.set(keys),
            Err(error) => tracing::warn!(target: "node::peers", %error, "cannot read the validator set"),
        }
    }
}
