//! The node's peer network: one libp2p swarm (TCP, Noise, Yamux) for everything but consensus —
//! the blob exchange (`/trellis/blobs/2`, [`super::exchange`]), transaction gossip (gossipsub on
//! the chain's topic, [`super::gossip`]), peer discovery (identify and Kademlia, starting from the
//! configured bootnodes) and a greeting (`/trellis/hello/1`) in which peers say which chain they
//! follow and on which port their consensus network listens. The consensus network is
//! Malachite's own swarm (same key, so the same peer id): this one hands it every consensus
//! address it learns, so a node needs nothing but a bootnode to join.
//!
//! Guarantees:
//! - a peer that greets us for another chain (another id or genesis fingerprint), serves lying
//!   blobs, or gossips what is not a validly signed transaction loses trust ([`super::scores`]);
//!   a banned peer is disconnected and its connections refused until the ban lapses;
//! - a consensus address is only ever built from the IP the peer's own connection came from, the
//!   port it announced and its authenticated peer id: a peer cannot make us dial a third party as
//!   someone else (the dial's Noise handshake checks the id);
//! - at most `max_peers` connections: discovery stops dialing there, and inbound connections over
//!   twice that are closed; at most [`MAX_PEERS_PER_IP`] inbound peers from one IP address
//!   (loopback aside) and [`MAX_CONNECTIONS_PER_PEER`] connections from one peer; at most
//!   [`MAX_CONSENSUS_PEERS`] consensus addresses are handed on at once: when all are taken, one
//!   of a peer no longer connected is forgotten to make room ([`ConsensusPeer::Forgotten`]), and
//!   a validator ([`ValidatorPeers`]) takes a non-validator's place even if it stays connected;
//! - everything this swarm sends and receives is counted under [`METRICS_PREFIX`].

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use arc_malachitebft_app_channel::app::metrics::SharedRegistry;
use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{allow_block_list, gossipsub, identify, kad, Multiaddr, PeerId, StreamProtocol};
use tokio::sync::{mpsc, oneshot};
use trellis_proto::peerwire::Hello;

use super::exchange::{BlobCodec, BlobNet, BlobRequest, BlobResponse, Responder};
use super::frames::FrameCodec;
use super::scores::{Offence, PeerScores};
use crate::metrics::Metrics;
use crate::storage::blobs::BlobStore;

/// The prefix of the peer network's transport counters in the metrics registry:
/// `trellis_peers_libp2p_bandwidth_bytes_total{direction="Inbound"|"Outbound",…}`.
pub const METRICS_PREFIX: &str = "trellis_peers";
/// Largest gossiped message: a batch of transactions (each at most 64 KiB) up to
/// [`super::gossip::MAX_BATCH_BYTES`], plus gossipsub's envelope.
pub const MAX_GOSSIP_BYTES: usize = 1 << 20;
/// Gossiped batches waiting for the node to check them; more are ignored (not forwarded).
const INBOUND_QUEUE: usize = 256;
/// Consensus addresses waiting to be handed to the consensus network.
const CONSENSUS_QUEUE: usize = 256;
/// Most consensus addresses ever handed on: the consensus network keeps each one connected (and
/// exempts its IP from the per-IP limit) for good, so a peer minting identities must not grow
/// that list without end.
pub const MAX_CONSENSUS_PEERS: usize = 128;
/// How long a consensus peer that left the peer network keeps its place among the
/// [`MAX_CONSENSUS_PEERS`] before a newcomer may take it.
const CONSENSUS_GRACE: Duration = Duration::from_secs(600);
/// How often bans are applied and lifted, and discovery nudged.
const TICK: Duration = Duration::from_secs(1);
/// How often bootnodes are redialed while the node has fewer than half its peers.
const REDIAL: Duration = Duration::from_secs(5);
/// How long one request (blob or greeting) may take.
/// How long a blob request waits for its answer ([`SwarmConfig::request_timeout`]'s default).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Peers connected from one IP address at most (loopback aside): many identities from one
/// address are one operator's nodes or someone's sybils filling our connection slots.
const MAX_PEERS_PER_IP: usize = 8;
/// Connections one peer may hold to us at once (two: when both sides dial at the same time);
/// each allows [`MAX_STREAMS`] streams, so more would multiply what one peer may ask at once.
const MAX_CONNECTIONS_PER_PEER: u32 = 2;
/// Concurrent request streams on one connection (see [`super::exchange`]).
pub const MAX_STREAMS: usize = 16;

const HELLO: StreamProtocol = StreamProtocol::new("/trellis/hello/1");
const BLOBS: StreamProtocol = StreamProtocol::new(trellis_proto::blobwire::PROTOCOL);

/// How the peer network starts.
#[derive(Debug, Clone)]
pub struct SwarmConfig {
    /// The node's key seed (the peer id is the consensus network's).
    pub seed: [u8; 32],
    /// Where to listen (`/ip4/0.0.0.0/tcp/26003` listens on every interface).
    pub listen: String,
    /// Peers to start from (`/ip4/…/tcp/…` with or without `/p2p/<id>`); redialed until the
    /// node has peers.
    pub bootnodes: Vec<String>,
    /// Addresses others can reach this node at, when they differ from the listen address
    /// (behind NAT); told to peers for discovery.
    pub external_addresses: Vec<String>,
    /// What we tell peers: our chain and consensus port. [`Hello::client`] for a tool that only
    /// fetches blobs.
    pub hello: Hello,
    /// Connections discovery dials up to.
    pub max_peers: usize,
    /// How long a blob request waits for its answer ([`REQUEST_TIMEOUT`]; shorter in tests).
    pub request_timeout: Duration,
    /// The validators' peer ids, kept up to date by the node: they come first for consensus
    /// places ([`room_for_consensus_peer`]).
    pub validator_peers: ValidatorPeers,
}

/// The peer ids of the validator set (a node's peer id is its chain key's ed25519 key), shared
/// between the node, which refreshes it as the set changes, and the peer network.
#[derive(Clone, Default)]
pub struct ValidatorPeers(Arc<std::sync::RwLock<HashSet<PeerId>>>);

impl ValidatorPeers {
    /// Replaces the set with the peers of these validator keys (a key that is no ed25519 point is
    /// left out: no peer can have it).
    pub fn set(&self, keys: impl IntoIterator<Item = trellis_proto::PublicKey>) {
        let peers: HashSet<PeerId> = keys.into_iter().filter_map(|key| peer_of(&key)).collect();
        *self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner) = peers;
    }

    pub fn contains(&self, peer: &PeerId) -> bool {
        self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner).contains(peer)
    }
}

impl std::fmt::Debug for ValidatorPeers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let count = self.0.read().map_or(0, |peers| peers.len());
        write!(f, "ValidatorPeers({count})")
    }
}

/// The peer id of the node whose chain key is `key`.
pub fn peer_of(key: &trellis_proto::PublicKey) -> Option<PeerId> {
    let key = libp2p::identity::ed25519::PublicKey::try_from_bytes(&key.0).ok()?;
    Some(libp2p::identity::PublicKey::from(key).to_peer_id())
}

/// A gossiped batch the node must check before gossipsub forwards it.
#[derive(Debug)]
pub struct GossipedBatch {
    pub from: PeerId,
    pub id: gossipsub::MessageId,
    pub bytes: Vec<u8>,
}

/// What the node decided about a gossiped batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Valid and new to us: forward it.
    Forward,
    /// Valid but nothing new (already known, stale): do not forward, do not blame.
    Drop,
    /// Not a batch of validly signed transactions: do not forward, and blame the peer.
    Invalid,
}

pub(super) enum Command {
    Request { peer: PeerId, request: BlobRequest, reply: oneshot::Sender<Option<BlobResponse>> },
    Peers { reply: oneshot::Sender<Vec<PeerId>> },
    Publish(Vec<u8>),
    Judged { batch: gossipsub::MessageId, from: PeerId, verdict: Verdict },
}

/// A running peer network: the blob exchange's handle, the gossip handle, and what the network
/// tells the node.
pub struct PeerNetwork {
    pub blobs: BlobNet,
    pub gossip: GossipHandle,
    /// Gossiped batches to check (then [`GossipHandle::judge`]).
    pub gossiped: mpsc::Receiver<GossipedBatch>,
    /// Consensus addresses of peers of our chain (`/ip4/…/tcp/…/p2p/<id>`), each once.
    pub consensus_peers: mpsc::Receiver<ConsensusPeer>,
    pub listen: Multiaddr,
}

/// Publishes transaction batches and reports what the node made of gossiped ones.
#[derive(Clone)]
pub struct GossipHandle {
    commands: mpsc::Sender<Command>,
    scores: Arc<Mutex<PeerScores>>,
}

impl GossipHandle {
    /// Publishes an encoded [`trellis_proto::peerwire::TxBatch`] on the transaction topic.
    pub async fn publish(&self, batch: Vec<u8>) {
        let _ = self.commands.send(Command::Publish(batch)).await;
    }

    /// Tells gossipsub whether to forward `batch`, and blames its sender when it was invalid.
    pub async fn judge(&self, batch: &GossipedBatch, verdict: Verdict) {
        if verdict == Verdict::Invalid {
            penalize(&self.scores, batch.from, Offence::InvalidGossip);
        }
        let _ = self.commands.send(Command::Judged { batch: batch.id.clone(), from: batch.from, verdict }).await;
    }
}

pub(super) fn penalize(scores: &Mutex<PeerScores>, peer: PeerId, offence: Offence) {
    let banned = scores.lock().unwrap_or_else(|p| p.into_inner()).penalize(peer, offence, Instant::now());
    if banned {
        tracing::warn!(target: "node::peers", %peer, ?offence, "peer banned for {:?}", super::scores::BAN);
    } else {
        tracing::debug!(target: "node::peers", %peer, ?offence, "peer penalized");
    }
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    blobs: request_response::Behaviour<BlobCodec>,
    hello: request_response::Behaviour<FrameCodec<Hello, Hello>>,
    gossip: gossipsub::Behaviour,
    identify: identify::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
}

/// The chain's tag in protocol names and topics: the first 8 bytes of its genesis fingerprint.
fn chain_tag(hello: &Hello) -> String {
    hex::encode(&hello.genesis.0[..8])
}

fn parse_addrs(list: &[String], what: &str) -> anyhow::Result<Vec<Multiaddr>> {
    list.iter()
        .map(|a| {
            a.parse().with_context(|| format!("{what} entry '{a}' is not a multiaddr (like /ip4/1.2.3.4/tcp/26003)"))
        })
        .collect()
}

/// Starts the peer network, serving blob requests with `responder`.
pub async fn start(
    config: SwarmConfig,
    store: BlobStore,
    responder: Arc<dyn Responder>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<PeerNetwork> {
    let keypair =
        libp2p::identity::Keypair::ed25519_from_bytes(config.seed).context("deriving the peer network key")?;
    let local_peer = keypair.public().to_peer_id();
    let tag = chain_tag(&config.hello);
    let requests = request_response::Config::default()
        .with_request_timeout(config.request_timeout)
        .with_max_concurrent_streams(MAX_STREAMS);
    let gossip_config = gossipsub::ConfigBuilder::default()
        .validation_mode(gossipsub::ValidationMode::Strict)
        .validate_messages()
        .max_transmit_size(MAX_GOSSIP_BYTES)
        .heartbeat_interval(Duration::from_millis(700))
        // Messages are told apart by author and sequence number (gossipsub's default), not by
        // content: a node gossiping its own pending transactions again (`roles::watch_nonce`)
        // makes a new message, where a content id would be refused as a duplicate for a minute.
        // Copies that bring nothing new are not forwarded ([`super::gossip::verdict`]).
        .build()
        .map_err(|e| anyhow::anyhow!("gossip configuration: {e}"))?;
    let mut gossip = gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(keypair.clone()), gossip_config)
        .map_err(|e| anyhow::anyhow!("gossip: {e}"))?;
    let topic = gossipsub::IdentTopic::new(format!("trellis/{tag}/txs/1"));
    gossip.subscribe(&topic).map_err(|e| anyhow::anyhow!("subscribing to the transaction topic: {e}"))?;
    let kad_protocol = StreamProtocol::try_from_owned(format!("/trellis/{tag}/kad/1"))
        .map_err(|e| anyhow::anyhow!("kademlia protocol name: {e}"))?;
    let mut kad = kad::Behaviour::with_config(
        local_peer,
        kad::store::MemoryStore::new(local_peer),
        kad::Config::new(kad_protocol),
    );
    // Every node serves the routing table: in a devnet or behind NAT nobody has a confirmed
    // external address, which is what the automatic mode waits for.
    kad.set_mode(Some(kad::Mode::Server));
    let identify = identify::Behaviour::new(
        identify::Config::new(identify_version(&config.hello), keypair.public())
            .with_agent_version(format!("trellis/{}", env!("CARGO_PKG_VERSION"))),
    );
    let behaviour = Behaviour {
        blocked: allow_block_list::Behaviour::default(),
        blobs: request_response::Behaviour::with_codec(
            BlobCodec::default(),
            [(BLOBS, ProtocolSupport::Full)],
            requests.clone(),
        ),
        hello: request_response::Behaviour::with_codec(
            FrameCodec::default(),
            [(HELLO, ProtocolSupport::Full)],
            requests,
        ),
        gossip,
        identify,
        kad,
    };
    let mut swarm = SharedRegistry::global().with_prefix(METRICS_PREFIX, |registry| -> anyhow::Result<Swarm> {
        Ok(libp2p::SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(
                libp2p::tcp::Config::default().nodelay(true),
                libp2p::noise::Config::new,
                libp2p::yamux::Config::default,
            )
            .context("setting up the peer network transport")?
            .with_dns()
            .context("setting up DNS for the peer network")?
            .with_bandwidth_metrics(registry)
            .with_behaviour(|_| behaviour)
            .map_err(|e| anyhow::anyhow!("peer network behaviour: {e}"))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
            .build())
    })?;
    let listen: Multiaddr =
        config.listen.parse().with_context(|| format!("p2p.peer_listen '{}' is not a multiaddr", config.listen))?;
    swarm.listen_on(listen.clone()).with_context(|| format!("the peer network cannot listen on {listen}"))?;
    for address in parse_addrs(&config.external_addresses, "p2p.external_addresses")? {
        swarm.add_external_address(address);
    }
    let bootnodes = parse_addrs(&config.bootnodes, "p2p.bootnodes")?;
    let (commands, queue) = mpsc::channel(256);
    let (gossiped_tx, gossiped) = mpsc::channel(INBOUND_QUEUE);
    let (consensus_tx, consensus_peers) = mpsc::channel(CONSENSUS_QUEUE);
    let scores = Arc::new(Mutex::new(PeerScores::default()));
    let driver = Driver {
        swarm,
        hello: config.hello,
        topic,
        bootnodes,
        max_peers: config.max_peers.max(1),
        answered: mpsc::unbounded_channel(),
        answering: Answering::new(responder, ANSWERS_AT_ONCE),
        scores: scores.clone(),
        gossiped: gossiped_tx,
        consensus: consensus_tx,
        pending: HashMap::new(),
        remote: HashMap::new(),
        announced: HashMap::new(),
        gone_since: HashMap::new(),
        validator_peers: config.validator_peers.clone(),
        blocked: HashSet::new(),
        metrics,
    };
    tokio::spawn(driver.run(queue));
    Ok(PeerNetwork {
        blobs: BlobNet::new(store, commands.clone(), local_peer, scores.clone()),
        gossip: GossipHandle { commands, scores },
        gossiped,
        consensus_peers,
        listen,
    })
}

/// What identify says we speak: peers of another chain fail this check before the greeting.
fn identify_version(hello: &Hello) -> String {
    format!("/trellis/1/{}", chain_tag(hello))
}

type Swarm = libp2p::Swarm<Behaviour>;

/// Blob answers read and packed at once: each holds a chunk and a compressor's state (a few MiB),
/// so requests from many peers at once (each connection allows [`MAX_STREAMS`]) wait their turn
/// instead of filling the blocking pool's 512 threads; eight keep two cores busy while chunks are
/// read from disk.
const ANSWERS_AT_ONCE: usize = 8;

/// Blob answers made on the blocking pool, at most a fixed number at a time.
#[derive(Clone)]
struct Answering {
    responder: Arc<dyn Responder>,
    turns: Arc<tokio::sync::Semaphore>,
}

impl Answering {
    fn new(responder: Arc<dyn Responder>, at_once: usize) -> Self {
        Self { responder, turns: Arc::new(tokio::sync::Semaphore::new(at_once)) }
    }

    /// Answers `request` once a turn is free, and hands the answer to `reply`.
    fn answer(&self, request: BlobRequest, reply: impl FnOnce(BlobResponse) + Send + 'static) {
        let (responder, turns) = (self.responder.clone(), self.turns.clone());
        tokio::spawn(async move {
            let Ok(turn) = turns.acquire_owned().await else { return };
            let _ = tokio::task::spawn_blocking(move || {
                let response = responder.answer(&request);
                drop(turn);
                reply(response);
            })
            .await;
        });
    }
}

/// A blob request's answer, made off the swarm's task, and where it goes.
type Answered = (PeerId, request_response::ResponseChannel<BlobResponse>, BlobResponse);

struct Driver {
    swarm: Swarm,
    hello: Hello,
    topic: gossipsub::IdentTopic,
    bootnodes: Vec<Multiaddr>,
    max_peers: usize,
    /// Answers made on the blocking pool, on their way back to the swarm.
    answered: (mpsc::UnboundedSender<Answered>, mpsc::UnboundedReceiver<Answered>),
    /// Makes the answers, [`ANSWERS_AT_ONCE`] at a time.
    answering: Answering,
    scores: Arc<Mutex<PeerScores>>,
    gossiped: mpsc::Sender<GossipedBatch>,
    consensus: mpsc::Sender<ConsensusPeer>,
    pending: HashMap<OutboundRequestId, oneshot::Sender<Option<BlobResponse>>>,
    /// Where each connected peer's first connection came from.
    remote: HashMap<PeerId, Multiaddr>,
    /// Peers whose consensus address was handed on, and that address.
    announced: HashMap<PeerId, Multiaddr>,
    /// When each announced peer that is not connected now left.
    gone_since: HashMap<PeerId, Instant>,
    validator_peers: ValidatorPeers,
    /// Peers blocked now (mirrors the bans in `scores`).
    blocked: HashSet<PeerId>,
    metrics: Arc<Metrics>,
}

impl Driver {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut tick = tokio::time::interval(TICK);
        let mut last_redial: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    self.apply_bans();
                    let due = last_redial.is_none_or(|at| at.elapsed() >= REDIAL);
                    if due && self.swarm.connected_peers().count() < self.max_peers.div_ceil(2) {
                        last_redial = Some(tokio::time::Instant::now());
                        self.dial_bootnodes();
                    }
                }
                command = commands.recv() => match command {
                    None => return,
                    Some(command) => self.command(command),
                },
                Some((peer, channel, response)) = self.answered.1.recv() => {
                    if self.swarm.behaviour_mut().blobs.send_response(channel, response).is_err() {
                        tracing::debug!(target: "node::blobs", %peer, "peer left before our response");
                    }
                }
                event = self.swarm.select_next_some() => self.event(event),
            }
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Peers { reply } => {
                let _ = reply.send(self.swarm.connected_peers().copied().collect());
            }
            Command::Request { peer, request, reply } => {
                let id = self.swarm.behaviour_mut().blobs.send_request(&peer, request);
                self.pending.insert(id, reply);
            }
            Command::Publish(batch) => {
                if let Err(error) = self.swarm.behaviour_mut().gossip.publish(self.topic.clone(), batch) {
                    // No peer subscribed yet: `roles::watch_nonce` gossips our own again; peers get
                    // others' in a block.
                    tracing::debug!(target: "node::gossip", %error, "batch not published");
                }
            }
            Command::Judged { batch, from, verdict } => {
                let acceptance = match verdict {
                    Verdict::Forward => gossipsub::MessageAcceptance::Accept,
                    Verdict::Drop => gossipsub::MessageAcceptance::Ignore,
                    Verdict::Invalid => gossipsub::MessageAcceptance::Reject,
                };
                self.swarm.behaviour_mut().gossip.report_message_validation_result(&batch, &from, acceptance);
            }
        }
    }

    fn dial_bootnodes(&mut self) {
        let connected: HashSet<PeerId> = self.swarm.connected_peers().copied().collect();
        for address in self.bootnodes.clone() {
            let known = address.iter().find_map(|p| match p {
                Protocol::P2p(peer) => Some(peer),
                _ => None,
            });
            if known.is_some_and(|peer| connected.contains(&peer) || peer == *self.swarm.local_peer_id()) {
                continue;
            }
            if let Err(error) = self.swarm.dial(address.clone()) {
                tracing::debug!(target: "node::peers", %address, %error, "cannot dial bootnode");
            }
        }
    }

    /// Blocks the peers `scores` has banned, and unblocks those whose ban lapsed.
    fn apply_bans(&mut self) {
        let banned: HashSet<PeerId> =
            self.scores.lock().unwrap_or_else(|p| p.into_inner()).banned(Instant::now()).into_iter().collect();
        for peer in banned.difference(&self.blocked) {
            self.swarm.behaviour_mut().blocked.block_peer(*peer);
            self.swarm.behaviour_mut().kad.remove_peer(peer);
            self.swarm.behaviour_mut().gossip.blacklist_peer(peer);
        }
        for peer in self.blocked.difference(&banned) {
            self.swarm.behaviour_mut().blocked.unblock_peer(*peer);
            self.swarm.behaviour_mut().gossip.remove_blacklisted_peer(peer);
            tracing::info!(target: "node::peers", %peer, "ban lifted");
        }
        self.blocked = banned;
        self.metrics.peers_banned.set(self.blocked.len() as u64);
        self.metrics.peers_connected.set(self.swarm.connected_peers().count() as u64);
    }

    fn event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::ConnectionEstablished { peer_id, connection_id, endpoint, num_established, .. } => {
                if num_established.get() > MAX_CONNECTIONS_PER_PEER {
                    tracing::debug!(target: "node::peers", %peer_id, "too many connections from one peer; closing one");
                    self.swarm.close_connection(connection_id);
                    return;
                }
                if num_established.get() > 1 {
                    return;
                }
                if endpoint.is_listener() && self.swarm.connected_peers().count() > self.max_peers.saturating_mul(2) {
                    tracing::debug!(target: "node::peers", %peer_id, "too many peers; closing an inbound connection");
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                    return;
                }
                // Only under pressure: a farm of miners behind one NAT address is welcome while
                // there is room.
                let crowded = self.swarm.connected_peers().count() > self.max_peers;
                if endpoint.is_listener() && crowded && !room_for_address(&self.remote, endpoint.get_remote_address()) {
                    tracing::debug!(target: "node::peers", %peer_id, address = %endpoint.get_remote_address(), "too many peers from one address; closing an inbound connection");
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                    return;
                }
                self.remote.insert(peer_id, endpoint.get_remote_address().clone());
                self.gone_since.remove(&peer_id);
                self.swarm.behaviour_mut().hello.send_request(&peer_id, self.hello.clone());
                tracing::debug!(target: "node::peers", %peer_id, address = %endpoint.get_remote_address(), "connected");
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } => {
                self.remote.remove(&peer_id);
                if self.announced.contains_key(&peer_id) {
                    self.gone_since.insert(peer_id, Instant::now());
                }
            }
            SwarmEvent::Behaviour(event) => self.behaviour_event(event),
            _ => {}
        }
    }

    fn behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Blobs(event) => self.blob_event(event),
            BehaviourEvent::Hello(request_response::Event::Message { peer, message, .. }) => match message {
                request_response::Message::Request { request, channel, .. } => {
                    let _ = self.swarm.behaviour_mut().hello.send_response(channel, self.hello.clone());
                    self.greeted(peer, request);
                }
                request_response::Message::Response { response, .. } => self.greeted(peer, response),
            },
            BehaviourEvent::Hello(request_response::Event::InboundFailure { peer, error, .. }) => {
                tracing::debug!(target: "node::peers", %peer, %error, "bad greeting");
            }
            BehaviourEvent::Hello(_) => {}
            BehaviourEvent::Gossip(gossipsub::Event::Message { propagation_source, message_id, message }) => {
                let batch = GossipedBatch { from: propagation_source, id: message_id, bytes: message.data };
                if let Err(mpsc::error::TrySendError::Full(batch) | mpsc::error::TrySendError::Closed(batch)) =
                    self.gossiped.try_send(batch)
                {
                    // Too busy to check it: not forwarded, nobody blamed.
                    self.swarm.behaviour_mut().gossip.report_message_validation_result(
                        &batch.id,
                        &batch.from,
                        gossipsub::MessageAcceptance::Ignore,
                    );
                }
            }
            BehaviourEvent::Gossip(_) => {}
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                if info.protocol_version != identify_version(&self.hello) {
                    // A client tool (no chain) may fetch blobs; it is not a peer to route to.
                    if !info.protocol_version.ends_with(&chain_tag(&Hello::client())) {
                        tracing::debug!(target: "node::peers", peer = %peer_id, theirs = %info.protocol_version, "peer of another chain");
                    }
                    return;
                }
                let from_loopback = self.remote.get(&peer_id).and_then(ip_of).is_some_and(|ip| ip.is_loopback());
                for address in info.listen_addrs {
                    // A remote peer's loopback address is ours, not its.
                    if ip_of(&address).is_some_and(|ip| ip.is_loopback() && !from_loopback) {
                        continue;
                    }
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, address);
                }
            }
            BehaviourEvent::Identify(_) => {}
            BehaviourEvent::Kad(kad::Event::RoutingUpdated { peer, addresses, .. }) => {
                let connected = self.swarm.is_connected(&peer);
                let room = self.swarm.connected_peers().count() < self.max_peers;
                let banned = self.blocked.contains(&peer);
                if !connected && room && !banned && peer != *self.swarm.local_peer_id() {
                    let _ = self.swarm.dial(DialOpts::peer_id(peer).addresses(addresses.into_vec()).build());
                }
            }
            BehaviourEvent::Kad(_) | BehaviourEvent::Blocked(_) => {}
        }
    }

    /// A peer told us who it is: block it if it follows another chain, route to it and hand its
    /// consensus address on if it follows ours.
    fn greeted(&mut self, peer: PeerId, hello: Hello) {
        // Tools follow no chain: they may fetch blobs, and a tool routes to nobody.
        if hello == Hello::client() || self.hello == Hello::client() {
            return;
        }
        if !self.hello.same_chain(&hello) {
            tracing::warn!(target: "node::peers", %peer, chain = %hello.chain_id, genesis = %hello.genesis, "peer follows another chain; dropping it");
            penalize(&self.scores, peer, Offence::WrongChain);
            return;
        }
        if hello.consensus_port == 0 || self.announced.contains_key(&peer) {
            return;
        }
        let Some(ip) = self.remote.get(&peer).and_then(ip_of) else { return };
        let (swarm, gone_since, validators) = (&self.swarm, &self.gone_since, &self.validator_peers);
        // A peer away for less than the grace (a restart, a dropped connection) keeps its place.
        let present =
            |p: &PeerId| swarm.is_connected(p) || gone_since.get(p).is_none_or(|left| left.elapsed() < CONSENSUS_GRACE);
        match room_for_consensus_peer(&self.announced, present, |p| validators.contains(p), validators.contains(&peer))
        {
            Room::Free => {}
            Room::Full => return,
            Room::Evict(other) => {
                let Some(address) = self.announced.get(&other).cloned() else { return };
                if self.consensus.try_send(ConsensusPeer::Forgotten(address.clone())).is_err() {
                    return;
                }
                self.announced.remove(&other);
                self.gone_since.remove(&other);
                tracing::debug!(target: "node::peers", %address, "gave a consensus place up, to make room");
            }
        }
        let mut address = Multiaddr::from(ip);
        address.push(Protocol::Tcp(hello.consensus_port));
        address.push(Protocol::P2p(peer));
        if self.consensus.try_send(ConsensusPeer::Learned(address.clone())).is_ok() {
            self.announced.insert(peer, address.clone());
            self.metrics.consensus_peers_learned.inc();
            tracing::info!(target: "node::peers", %address, "learned a consensus peer");
        }
    }

    fn blob_event(&mut self, event: request_response::Event<BlobRequest, BlobResponse>) {
        match event {
            request_response::Event::Message { message, peer, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    // Reading a chunk from disk and packing it takes milliseconds: not on the
                    // task that drives every connection. (The connections' stream limits bound
                    // how many answers are in the making at once.)
                    let answered = self.answered.0.clone();
                    self.answering.answer(request, move |response| {
                        let _ = answered.send((peer, channel, response));
                    });
                }
                request_response::Message::Response { request_id, response } => {
                    if let Some(reply) = self.pending.remove(&request_id) {
                        let _ = reply.send(Some(response));
                    }
                }
            },
            request_response::Event::OutboundFailure { request_id, error, peer, .. } => {
                tracing::debug!(target: "node::blobs", %peer, %error, "blob request failed");
                if let Some(reply) = self.pending.remove(&request_id) {
                    let _ = reply.send(None);
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(target: "node::blobs", %peer, %error, "bad inbound blob request");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }
}

/// Whether a peer connecting from `address` may stay beside the peers connected now (`remote`:
/// where each came from) when the node is crowded: fewer than [`MAX_PEERS_PER_IP`] of them came
/// from its network ([`network_of`]). Loopback is exempt (a devnet runs every node on one
/// machine), and so is an address without an IP (nothing to count it by).
fn room_for_address(remote: &HashMap<PeerId, Multiaddr>, address: &Multiaddr) -> bool {
    let Some(ip) = ip_of(address) else { return true };
    let network = network_of(ip);
    ip.is_loopback()
        || remote.values().filter(|other| ip_of(other).map(network_of) == Some(network)).count() < MAX_PEERS_PER_IP
}

/// What peers are counted by: an IPv4 address (also written IPv4-mapped in IPv6), or an IPv6
/// /64 (one host's share: its holder has 2^64 addresses to greet from).
fn network_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
    }
}

/// What the peer network tells the consensus network about its peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsensusPeer {
    /// A peer of our chain greeted us with this consensus address: dial it.
    Learned(Multiaddr),
    /// A peer learned before, no longer connected, makes room for a new one: stop dialing it.
    Forgotten(Multiaddr),
}

/// Whether a consensus address may be handed on beside those handed on now.
#[derive(Debug, PartialEq, Eq)]
enum Room {
    Free,
    /// Every place is taken, and none is to be given up for this peer.
    Full,
    /// Every place is taken; this peer gives its place up.
    Evict(PeerId),
}

/// Room for one more consensus peer beside `announced` ([`MAX_CONSENSUS_PEERS`] at once): a
/// lifetime cap let strangers' greetings fill every place for good, so that validators joining
/// later were never dialed. When every place is taken, a peer that has gone (`connected` is
/// false: away for longer than [`CONSENSUS_GRACE`]) gives its place up, a non-validator first;
/// and a validator (`is_validator`) greeting takes the place of a non-validator even if it is
/// still connected: strangers that greet and stay connected cannot keep the validators apart
/// (a review, 2026-12-03). Among equals, the first in peer-id order goes (any choice will do).
fn room_for_consensus_peer(
    announced: &HashMap<PeerId, Multiaddr>,
    connected: impl Fn(&PeerId) -> bool,
    is_validator: impl Fn(&PeerId) -> bool,
    newcomer_is_validator: bool,
) -> Room {
    if announced.len() < MAX_CONSENSUS_PEERS {
        return Room::Free;
    }
    let first = |keep: &dyn Fn(&PeerId) -> bool| announced.keys().filter(|peer| keep(peer)).min().copied();
    let gone_stranger = first(&|p| !connected(p) && !is_validator(p));
    let gone_validator = first(&|p| !connected(p) && is_validator(p));
    let stranger = newcomer_is_validator.then(|| first(&|p| !is_validator(p))).flatten();
    gone_stranger.or(gone_validator).or(stranger).map_or(Room::Full, Room::Evict)
}

/// The IP address at the start of a multiaddr, if any.
fn ip_of(address: &Multiaddr) -> Option<IpAddr> {
    match address.iter().next()? {
        Protocol::Ip4(ip) => Some(ip.into()),
        Protocol::Ip6(ip) => Some(ip.into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consensus_places_held_by_peers_that_left_are_given_up_for_new_ones() {
        let mut announced: HashMap<PeerId, Multiaddr> = HashMap::new();
        let address: Multiaddr = "/ip4/198.51.100.1/tcp/27000".parse().unwrap();
        for _ in 0..MAX_CONSENSUS_PEERS - 1 {
            announced.insert(PeerId::random(), address.clone());
        }
        let nobody = |_: &PeerId| false;
        assert_eq!(room_for_consensus_peer(&announced, |_| true, nobody, false), Room::Free);
        announced.insert(PeerId::random(), address.clone());
        assert_eq!(
            room_for_consensus_peer(&announced, |_| true, nobody, false),
            Room::Full,
            "all there: nobody is dropped"
        );
        let mut gone: Vec<PeerId> = announced.keys().copied().take(2).collect();
        gone.sort();
        let room = room_for_consensus_peer(&announced, |p| !gone.contains(p), nobody, false);
        assert_eq!(room, Room::Evict(gone[0]), "a peer that left gives its place up");
        // A validator that left goes after a stranger that left.
        let room = room_for_consensus_peer(&announced, |p| !gone.contains(p), |p| *p == gone[0], false);
        assert_eq!(room, Room::Evict(gone[1]), "a stranger that left goes first");
    }

    #[test]
    fn strangers_that_stay_connected_give_their_consensus_places_up_to_validators() {
        let address: Multiaddr = "/ip4/198.51.100.1/tcp/27000".parse().unwrap();
        let mut announced: HashMap<PeerId, Multiaddr> = HashMap::new();
        let validators: Vec<PeerId> = (0..4).map(|_| PeerId::random()).collect();
        for validator in &validators {
            announced.insert(*validator, address.clone());
        }
        while announced.len() < MAX_CONSENSUS_PEERS {
            announced.insert(PeerId::random(), address.clone());
        }
        let is_validator = |p: &PeerId| validators.contains(p);
        let strangers: Vec<PeerId> = announced.keys().filter(|p| !is_validator(p)).copied().collect();
        let first_stranger = *strangers.iter().min().unwrap();
        assert_eq!(
            room_for_consensus_peer(&announced, |_| true, is_validator, true),
            Room::Evict(first_stranger),
            "a validator greeting takes a connected stranger's place"
        );
        assert_eq!(
            room_for_consensus_peer(&announced, |_| true, is_validator, false),
            Room::Full,
            "another stranger does not"
        );
        // Every place held by a validator: a validator newcomer waits like anyone.
        let all_validators: HashMap<PeerId, Multiaddr> =
            (0..MAX_CONSENSUS_PEERS).map(|_| (PeerId::random(), address.clone())).collect();
        assert_eq!(room_for_consensus_peer(&all_validators, |_| true, |_| true, true), Room::Full);
    }

    #[test]
    fn a_validators_peer_id_is_that_of_its_chain_key() {
        let key = trellis_proto::Keypair::from_seed([7; 32]);
        let network = libp2p::identity::Keypair::ed25519_from_bytes(key.seed()).unwrap();
        assert_eq!(peer_of(&key.public_key()), Some(network.public().to_peer_id()));
        let peers = ValidatorPeers::default();
        peers.set([key.public_key()]);
        assert!(peers.contains(&network.public().to_peer_id()));
        assert!(!peers.contains(&PeerId::random()));
    }

    #[test]
    fn one_ip_address_gets_a_bounded_number_of_peers_and_loopback_any() {
        let at = |ip: &str, port: u16| -> Multiaddr { format!("/ip4/{ip}/tcp/{port}").parse().unwrap() };
        let mut remote = HashMap::new();
        for port in 0..MAX_PEERS_PER_IP as u16 {
            let address = at("203.0.113.7", 4000 + port);
            assert!(room_for_address(&remote, &address), "peer {port} from one address");
            remote.insert(PeerId::random(), address);
            remote.insert(PeerId::random(), at("127.0.0.1", 4000 + port));
        }
        assert!(!room_for_address(&remote, &at("203.0.113.7", 5000)), "one peer too many from one address");
        assert!(room_for_address(&remote, &at("203.0.113.8", 5000)), "another address is counted apart");
        assert!(room_for_address(&remote, &at("127.0.0.1", 5000)), "loopback is not counted");
        let v6: Multiaddr = "/ip6/2001:db8::1/tcp/1".parse().unwrap();
        assert!(room_for_address(&remote, &v6));
        // One /64 is one network, however many of its addresses greet; IPv4-mapped is IPv4.
        let mut six = HashMap::new();
        for host in 0..MAX_PEERS_PER_IP as u16 {
            six.insert(
                PeerId::random(),
                format!("/ip6/2001:db8:0:7::{:x}/tcp/1", host + 1).parse::<Multiaddr>().unwrap(),
            );
        }
        assert!(!room_for_address(&six, &"/ip6/2001:db8:0:7::ffff/tcp/1".parse().unwrap()));
        assert!(room_for_address(&six, &"/ip6/2001:db8:0:8::1/tcp/1".parse().unwrap()), "another /64");
        assert!(!room_for_address(&remote, &"/ip6/::ffff:203.0.113.7/tcp/1".parse().unwrap()), "IPv4-mapped");
        let dns: Multiaddr = "/dns4/example.org/tcp/1".parse().unwrap();
        assert!(room_for_address(&remote, &dns), "no IP, nothing to count by");
    }
    use crate::p2p::exchange::StoreResponder;
    use std::path::Path;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use trellis_proto::peerwire::TxBatch;
    use trellis_proto::{Address, Amount, Hash, Keypair, Transaction, TxKind};

    /// Answers "not found" after a pause, keeping the most answers it was making at once.
    #[derive(Default)]
    struct Gauge {
        now: AtomicUsize,
        most: AtomicUsize,
    }

    impl Responder for Gauge {
        fn answer(&self, _: &BlobRequest) -> BlobResponse {
            let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(20));
            self.now.fetch_sub(1, Ordering::SeqCst);
            BlobResponse::NotFound
        }
    }

    /// A flood of chunk requests from many peers waits its turn: never more answers in the making
    /// than the limit (each holds a chunk and a compressor), and every request is answered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn answers_are_made_a_few_at_a_time_and_every_request_is_answered() {
        let gauge = Arc::new(Gauge::default());
        let answering = Answering::new(gauge.clone(), 3);
        let (replies, mut answers) = mpsc::unbounded_channel();
        let key = crate::storage::blobs::BlobKey::data(b"x");
        for index in 0..24 {
            let replies = replies.clone();
            answering.answer(BlobRequest::Chunk { key, index }, move |answer| {
                let _ = replies.send(answer);
            });
        }
        for _ in 0..24 {
            let answer = tokio::time::timeout(Duration::from_secs(10), answers.recv()).await.unwrap();
            assert_eq!(answer, Some(BlobResponse::NotFound));
        }
        let most = gauge.most.load(Ordering::SeqCst);
        assert!((1..=3).contains(&most), "{most} answers in the making at once");
    }

    async fn node(seed: u8, port: u16, bootnodes: Vec<String>, dir: &Path) -> PeerNetwork {
        let store = BlobStore::open(dir).unwrap();
        let config = SwarmConfig {
            seed: [seed; 32],
            listen: format!("/ip4/127.0.0.1/tcp/{port}"),
            bootnodes,
            external_addresses: Vec::new(),
            hello: Hello { chain_id: "gossip-test".into(), genesis: Hash([5; 32]), consensus_port: port + 100 },
            max_peers: 8,
            request_timeout: REQUEST_TIMEOUT,
            validator_peers: ValidatorPeers::default(),
        };
        start(config, store.clone(), Arc::new(StoreResponder::new(store)), Arc::default()).await.unwrap()
    }

    /// One peer dialing a node again and again keeps at most [`MAX_CONNECTIONS_PER_PEER`]
    /// connections: each allows [`MAX_STREAMS`] streams, so without a bound one peer could ask
    /// for any number of chunks at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_peer_dialing_again_and_again_keeps_at_most_two_connections() {
        use libp2p::swarm::dial_opts::PeerCondition;
        let dir = tempfile::tempdir().unwrap();
        // 32,000–32,700: below the kernel's ephemeral range, above every other test's ports.
        let port = 32_000 + (std::process::id() % 700) as u16;
        let target = node(31, port, Vec::new(), dir.path()).await;
        let target_peer = target.blobs.local_peer();
        let mut dialer = libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(libp2p::tcp::Config::default(), libp2p::noise::Config::new, libp2p::yamux::Config::default)
            .unwrap()
            .with_behaviour(|_| libp2p::swarm::dummy::Behaviour)
            .unwrap()
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build();
        let address: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
        for _ in 0..5 {
            let dial = DialOpts::peer_id(target_peer)
                .addresses(vec![address.clone()])
                .condition(PeerCondition::Always)
                .build();
            dialer.dial(dial).unwrap();
        }
        // Every dial is answered (established, then some closed by the target); then the count
        // settles.
        let (mut open, mut most, mut established) = (0i64, 0i64, 0);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::time::Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_secs(2), dialer.select_next_some()).await {
                Ok(SwarmEvent::ConnectionEstablished { .. }) => {
                    open += 1;
                    established += 1;
                    most = most.max(open);
                }
                Ok(SwarmEvent::ConnectionClosed { .. }) => open -= 1,
                Ok(_) => {}
                Err(_) if established == 5 => break,
                Err(_) => {}
            }
        }
        assert_eq!(established, 5, "every dial reached the target");
        assert_eq!(open, i64::from(MAX_CONNECTIONS_PER_PEER), "the target keeps two of the five connections");
        assert!(most >= open);
    }

    /// Publishes `batch` from `from` until `to` receives a batch (the first publications go
    /// nowhere until the peers know each other's subscriptions).
    async fn deliver(from: &PeerNetwork, to: &mut PeerNetwork, batch: Vec<u8>) -> GossipedBatch {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            from.gossip.publish(batch.clone()).await;
            match tokio::time::timeout(Duration::from_millis(500), to.gossiped.recv()).await {
                Ok(Some(received)) => return received,
                _ => assert!(tokio::time::Instant::now() < deadline, "the batch never arrived"),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn gossip_arrives_and_a_peer_that_gossips_garbage_is_banned_and_dropped() {
        let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
        let port = 33_000 - 2_000 + (std::process::id() % 500) as u16 * 2;
        let mut honest = node(21, port, Vec::new(), dirs[0].path()).await;
        let noisy = node(22, port + 1, vec![format!("/ip4/127.0.0.1/tcp/{port}")], dirs[1].path()).await;
        let noisy_peer = noisy.blobs.local_peer();

        // The greeting handed on the peer's consensus address: its IP, its port, its id.
        let learned = tokio::time::timeout(Duration::from_secs(20), honest.consensus_peers.recv()).await.unwrap();
        let expected = format!("/ip4/127.0.0.1/tcp/{}/p2p/{noisy_peer}", port + 101);
        assert_eq!(learned, Some(ConsensusPeer::Learned(expected.parse().unwrap())));

        // A batch of a validly signed transaction arrives whole.
        let key = Keypair::from_seed([3; 32]);
        let tx = Transaction {
            sender: key.public_key(),
            nonce: 0,
            fee: Amount(1),
            kind: TxKind::Transfer { to: Address([1; 20]), amount: Amount(2) },
        }
        .sign("gossip-test", &key);
        let good = deliver(&noisy, &mut honest, TxBatch::encode(std::slice::from_ref(&tx))).await;
        assert_eq!(good.from, noisy_peer);
        assert_eq!(TxBatch::decode(&good.bytes).unwrap(), TxBatch(vec![tx.clone()]));
        honest.gossip.judge(&good, Verdict::Forward).await;
        assert!(!honest.blobs.is_banned(&noisy_peer));
        // The same batch gossiped again (a node whose transaction was not included) arrives again.
        let again = deliver(&noisy, &mut honest, TxBatch::encode(std::slice::from_ref(&tx))).await;
        assert_eq!(again.bytes, good.bytes);
        assert_ne!(again.id, good.id, "a new message");
        honest.gossip.judge(&again, Verdict::Drop).await;
        assert!(!honest.blobs.is_banned(&noisy_peer), "a copy with nothing new is not blamed");

        // Garbage twice: the peer is banned, then disconnected.
        for garbage in [b"not a batch".to_vec(), vec![0xff; 64]] {
            let bad = deliver(&noisy, &mut honest, garbage).await;
            assert!(TxBatch::decode(&bad.bytes).is_err());
            honest.gossip.judge(&bad, Verdict::Invalid).await;
        }
        assert!(honest.blobs.is_banned(&noisy_peer), "two invalid batches ban the relay");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while honest.blobs.peers().await.contains(&noisy_peer) {
            assert!(tokio::time::Instant::now() < deadline, "the banned peer is still connected");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // It keeps redialing us (we are its bootnode), and is refused.
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert!(!honest.blobs.peers().await.contains(&noisy_peer), "a banned peer's connections are refused");
    }
}
