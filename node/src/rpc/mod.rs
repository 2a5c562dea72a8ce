//! JSON-RPC 2.0 over HTTP and WebSocket (jsonrpsee): chain, transaction, state and job queries,
//! transaction submission, and subscriptions to new heads and job events.
//!
//! Every method and its JSON are documented in `docs/rpc.md`. Bad parameters get JSON-RPC
//! errors with a reason (code -32602 for malformed parameters, the codes below for the rest);
//! requests larger than the configured size are refused by the server. Every client address has
//! its own request budget (a token bucket), so one client cannot use up another's; peers'
//! `mempool_gossip` calls draw on a budget of their own, apart from the public one; a connection
//! holds at most `rpc.max_subscriptions_per_connection` subscriptions.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use jsonrpsee::core::SubscriptionResult;
use jsonrpsee::server::{serve_with_graceful_shutdown, stop_channel, Server, ServerConfig, ServerHandle};
use jsonrpsee::types::ErrorObjectOwned;
use jsonrpsee::{Extensions, PendingSubscriptionSink, SubscriptionMessage};
use tokio::sync::broadcast;
use trellis_contracts::state::{self, keys, Job, RoundState, RoundSummary, Stake};
use trellis_contracts::{Event, KvStore};
use trellis_proto::{Address, Block, Hash, Height, JobId, Role, SignedTx, TxKind};

use self::api::{
    AccountView, BlockView, GossipReceipt, HeadInfo, JobEvent, JobListing, NewHead, RpcResult, Submitted,
    TrellisRpcServer, TxInBlock, TxStatus, ValidatorView, ValidatorsView,
};
use crate::mempool::MempoolError;
use crate::shared::{NodeEvent, Shared};

pub mod api;
pub mod client;

/// Error codes beyond the JSON-RPC standard ones.
pub mod codes {
    /// Standard: the parameters are malformed.
    pub const INVALID_PARAMS: i32 = -32602;
    /// Standard: the node failed (a storage fault; the node stops on those).
    pub const INTERNAL: i32 = -32603;
    /// The transaction was refused by the mempool; the message says why.
    pub const TX_REJECTED: i32 = -32001;
    /// What was asked for does not exist (yet).
    pub const NOT_FOUND: i32 = -32004;
    /// Too many requests: the server's rate limit was reached.
    pub const RATE_LIMITED: i32 = -32005;
}

/// Limits of the RPC server.
#[derive(Debug, Clone, Copy)]
pub struct RpcLimits {
    pub max_request_bytes: u32,
    /// Requests per second from one client address (all public methods together).
    pub requests_per_second: u32,
    /// `mempool_gossip` calls per second from one peer address, apart from the public budget.
    pub gossip_per_second: u32,
    pub max_subscriptions_per_connection: u32,
}

/// Most client addresses whose budgets are tracked at once; past it the oldest half is forgotten.
const MAX_TRACKED_CLIENTS: usize = 4_096;

struct TokenBucket {
    tokens: f64,
    last: Instant,
}

/// One token bucket per client address, each holding up to a second's worth of requests.
struct Budgets {
    rate: f64,
    by_client: Mutex<HashMap<IpAddr, TokenBucket>>,
}

impl Budgets {
    fn new(per_second: u32) -> Self {
        Self { rate: f64::from(per_second.max(1)), by_client: Mutex::default() }
    }

    fn take(&self, client: IpAddr) -> bool {
        let mut buckets = self.by_client.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_TRACKED_CLIENTS && !buckets.contains_key(&client) {
            let mut ages: Vec<(Instant, IpAddr)> = buckets.iter().map(|(ip, b)| (b.last, *ip)).collect();
            ages.sort();
            ages.iter().take(MAX_TRACKED_CLIENTS / 2).for_each(|(_, ip)| {
                buckets.remove(ip);
            });
        }
        let now = Instant::now();
        let bucket = buckets.entry(client).or_insert(TokenBucket { tokens: self.rate, last: now });
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.last).as_secs_f64() * self.rate).min(self.rate);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The address a request came from, as the server's accept loop saw it (in every request's
/// extensions).
#[derive(Debug, Clone, Copy)]
struct ClientAddress(IpAddr);

fn client_of(extensions: &Extensions) -> IpAddr {
    // Every request passes through the accept loop, which sets it; unspecified only in theory.
    extensions.get::<ClientAddress>().map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0)
}

struct RpcState {
    shared: Arc<Shared>,
    public: Budgets,
    gossip: Budgets,
}

fn error(code: i32, message: impl Into<String>) -> ErrorObjectOwned {
    ErrorObjectOwned::owned(code, message.into(), None::<()>)
}

fn invalid(message: impl Into<String>) -> ErrorObjectOwned {
    error(codes::INVALID_PARAMS, message)
}

impl RpcState {
    /// Takes one request from the client's public budget.
    fn admit(&self, extensions: &Extensions) -> RpcResult<()> {
        self.shared.metrics.rpc_requests.inc();
        if self.public.take(client_of(extensions)) {
            Ok(())
        } else {
            Err(error(codes::RATE_LIMITED, "rate limit reached for this client; retry later"))
        }
    }

    /// Takes one gossip call from the peer's gossip budget (apart from the public one).
    fn admit_gossip(&self, extensions: &Extensions) -> RpcResult<()> {
        self.shared.metrics.rpc_requests.inc();
        if self.gossip.take(client_of(extensions)) {
            Ok(())
        } else {
            Err(error(codes::RATE_LIMITED, "gossip rate limit reached for this peer; retry later"))
        }
    }

    fn view(&self) -> crate::storage::store::PendingState<'_> {
        self.shared.ledger.store().pending_state()
    }
}

fn head_info(shared: &Shared) -> RpcResult<HeadInfo> {
    let store = shared.ledger.store();
    let height = store.head().map_err(internal)?;
    let block = store.block(height).map_err(internal)?;
    Ok(match block {
        Some(block) => HeadInfo {
            chain_id: shared.ledger.chain_id().to_string(),
            height: height.0,
            hash: block.hash(),
            time_ms: block.header.time_ms,
            state_root: block.header.state_root,
            txs: block.txs.len(),
        },
        None => HeadInfo {
            chain_id: shared.ledger.chain_id().to_string(),
            height: 0,
            hash: Hash::ZERO,
            time_ms: 0,
            state_root: trellis_contracts::state_root(&store.pending_state())
                .unwrap_or_else(|e| crate::storage::store::fatal(e)),
            txs: 0,
        },
    })
}

fn block_view(block: &Block) -> BlockView {
    BlockView {
        hash: block.hash(),
        header: block.header.clone(),
        txs: block.txs.iter().map(|tx| TxInBlock { hash: tx.hash(), tx: tx.clone() }).collect(),
    }
}

fn parse_address(text: &str) -> RpcResult<Address> {
    text.parse().map_err(|_| invalid(format!("'{text}' is not an address (40 hex digits)")))
}

fn parse_hash(text: &str) -> RpcResult<Hash> {
    text.parse().map_err(|_| invalid(format!("'{text}' is not a hash (64 hex digits)")))
}

/// Why the committed transaction `hash` in block `height` failed, if its block's events say it did.
fn failure_of(shared: &Shared, height: trellis_proto::Height, hash: &Hash) -> Option<String> {
    let events: Vec<Event> = serde_json::from_slice(&shared.ledger.store().events(height)?).ok()?;
    events.into_iter().find_map(|event| match event {
        Event::TxFailed { tx, reason, .. } if tx == *hash => Some(reason),
        _ => None,
    })
}

/// Decodes and admits a hex-encoded signed transaction.
fn submit(state: &RpcState, hex_tx: &str) -> RpcResult<Submitted> {
    let hex_tx = hex_tx.strip_prefix("0x").unwrap_or(hex_tx);
    let reject = |message: String| {
        state.shared.metrics.txs_rejected.inc();
        error(codes::TX_REJECTED, message)
    };
    if hex_tx.len() > 2 * trellis_proto::tx::MAX_TX_BYTES {
        return Err(reject(format!("transaction is larger than {} bytes", trellis_proto::tx::MAX_TX_BYTES)));
    }
    let bytes = hex::decode(hex_tx).map_err(|e| reject(format!("not hex: {e}")))?;
    let tx = SignedTx::from_wire(&bytes).map_err(|e| reject(format!("not a signed transaction: {e}")))?;
    if let TxKind::SubmitJob { spec, .. } = &tx.tx.kind {
        // Checked here too so a bad spec is refused with its reason, not dropped from a block.
        trellis_contracts::validate_job_spec(spec, state.shared.ledger.params())
            .map_err(|reason| reject(format!("invalid job spec: {reason}")))?;
    }
    let tx_copy = tx.clone();
    match state.shared.admit(vec![tx]).into_iter().next().unwrap_or(Err(MempoolError::AlreadyKnown)) {
        Ok(hash) => {
            state.shared.metrics.txs_submitted.inc();
            // Forwarding is best effort: a full queue only means peers learn of it later from
            // the block.
            let _ = state.shared.gossip.try_send(tx_copy);
            Ok(Submitted { hash })
        }
        Err(e) => Err(reject(e.to_string())),
    }
}

fn account_view(state: &RpcState, address: Address) -> RpcResult<AccountView> {
    let view = state.view();
    let account: state::Account = state::read(&view, &keys::account(&address)).map_err(internal)?.unwrap_or_default();
    let stake =
        |role| -> RpcResult<Option<Stake>> { state::read(&view, &keys::stake(role, &address)).map_err(internal) };
    let pending_nonce = {
        let mempool = state.shared.mempool.lock().unwrap_or_else(|p| p.into_inner());
        mempool.next_free_nonce(&address, account.nonce)
    };
    Ok(AccountView {
        address,
        balance: account.balance,
        nonce: account.nonce,
        pending_nonce,
        validator_stake: stake(Role::Validator)?,
        miner_stake: stake(Role::Miner)?,
    })
}

fn jobs(state: &RpcState) -> RpcResult<Vec<Job>> {
    let view = state.view();
    view.scan_prefix(keys::JOB_PREFIX)
        .into_iter()
        .map(|(key, bytes)| state::decode_record::<Job>(&key, &bytes).map_err(internal))
        .collect()
}

fn event_job(event: &Event) -> Option<JobId> {
    let value = serde_json::to_value(event).ok()?;
    value.get("job").and_then(|j| j.as_u64()).map(JobId)
}

/// Every stored failure is the node's own (a storage fault): JSON-RPC's internal error.
fn internal(cause: impl std::fmt::Display) -> ErrorObjectOwned {
    error(codes::INTERNAL, cause.to_string())
}

#[jsonrpsee::core::async_trait]
impl TrellisRpcServer for RpcState {
    fn head(&self, ext: &Extensions) -> RpcResult<HeadInfo> {
        self.admit(ext)?;
        head_info(&self.shared)
    }

    fn block(&self, ext: &Extensions, height: u64) -> RpcResult<BlockView> {
        self.admit(ext)?;
        let block = self.shared.ledger.store().block(Height(height)).map_err(internal)?;
        block.map(|b| block_view(&b)).ok_or_else(|| error(codes::NOT_FOUND, format!("no block at height {height}")))
    }

    fn submit(&self, ext: &Extensions, tx_hex: String) -> RpcResult<Submitted> {
        self.admit(ext)?;
        submit(self, &tx_hex)
    }

    fn gossip(&self, ext: &Extensions, txs_hex: Vec<String>) -> RpcResult<GossipReceipt> {
        self.admit_gossip(ext)?;
        if txs_hex.len() > crate::p2p::gossip::MAX_BATCH {
            return Err(invalid(format!("at most {} transactions per gossip batch", crate::p2p::gossip::MAX_BATCH)));
        }
        let bytes: usize = txs_hex.iter().map(String::len).sum();
        self.shared.metrics.gossip_bytes_received.add(bytes as u64);
        let txs = txs_hex
            .iter()
            .map(|h| hex::decode(h).ok().and_then(|b| SignedTx::from_wire(&b).ok()))
            .collect::<Option<Vec<SignedTx>>>()
            .ok_or_else(|| invalid("a gossiped transaction is not hex of a signed transaction"))?;
        let admitted = self.shared.admit(txs).iter().filter(|r| r.is_ok()).count();
        Ok(GossipReceipt { admitted })
    }

    fn tx(&self, ext: &Extensions, hash: String) -> RpcResult<TxStatus> {
        self.admit(ext)?;
        let hash = parse_hash(&hash)?;
        match self.shared.ledger.store().tx(&hash).map_err(internal)? {
            Some((height, index, tx)) => Ok(match failure_of(&self.shared, height, &hash) {
                // Included, fee paid, action refused (`contracts::Chain::include_tx`).
                Some(reason) => TxStatus::Failed { reason, height: height.0, index, tx },
                None => TxStatus::Committed { height: height.0, index, tx },
            }),
            None => {
                let pending = self.shared.mempool.lock().unwrap_or_else(|p| p.into_inner()).contains(&hash);
                if pending {
                    Ok(TxStatus::Pending)
                } else {
                    Err(error(codes::NOT_FOUND, format!("transaction {hash} is neither committed nor pending")))
                }
            }
        }
    }

    fn account(&self, ext: &Extensions, address: String) -> RpcResult<AccountView> {
        self.admit(ext)?;
        account_view(self, parse_address(&address)?)
    }

    fn validators(&self, ext: &Extensions) -> RpcResult<ValidatorsView> {
        self.admit(ext)?;
        let set = self.shared.ledger.validator_set();
        let validators: Vec<ValidatorView> = set
            .validators()
            .iter()
            .map(|v| ValidatorView {
                address: v.address.0,
                public_key: v.key,
                power: v.power,
                proposes: set.may_propose(&v.address),
            })
            .collect();
        let total_power = validators.iter().map(|v| v.power).sum();
        Ok(ValidatorsView { validators, total_power })
    }

    fn jobs(&self, ext: &Extensions) -> RpcResult<Vec<JobListing>> {
        self.admit(ext)?;
        Ok(jobs(self)?
            .into_iter()
            .map(|j| JobListing {
                id: j.id,
                submitter: j.submitter,
                status: j.status,
                current_round: j.current_round,
                escrow: j.escrow,
            })
            .collect())
    }

    fn job(&self, ext: &Extensions, id: u64) -> RpcResult<Job> {
        self.admit(ext)?;
        state::read::<Job>(&self.view(), &keys::job(JobId(id)))
            .map_err(internal)?
            .ok_or_else(|| error(codes::NOT_FOUND, format!("no job {id}")))
    }

    fn round(&self, ext: &Extensions, id: u64, round: u32) -> RpcResult<RoundState> {
        self.admit(ext)?;
        let view = self.view();
        let found = RoundState::load(&view, JobId(id), round).map_err(internal)?;
        found.ok_or_else(|| match state::read::<RoundSummary>(&view, &keys::summary(JobId(id), round)) {
            Ok(Some(_)) => error(
                codes::NOT_FOUND,
                format!(
                    "round {round} of job {id} was settled long ago and pruned to a summary: ask job_getRoundSummary"
                ),
            ),
            _ => error(codes::NOT_FOUND, format!("job {id} has no round {round}")),
        })
    }

    fn round_summary(&self, ext: &Extensions, id: u64, round: u32) -> RpcResult<RoundSummary> {
        self.admit(ext)?;
        let view = self.view();
        if let Some(full) = RoundState::load(&view, JobId(id), round).map_err(internal)? {
            return Ok(RoundSummary::of(&full));
        }
        state::read::<RoundSummary>(&view, &keys::summary(JobId(id), round))
            .map_err(internal)?
            .ok_or_else(|| error(codes::NOT_FOUND, format!("job {id} has no round {round}")))
    }

    async fn subscribe_heads(&self, pending: PendingSubscriptionSink) -> SubscriptionResult {
        let mut events = self.shared.events.subscribe();
        let sink = pending.accept().await?;
        loop {
            match events.recv().await {
                Ok(NodeEvent::Committed { block, .. }) => {
                    let head = NewHead {
                        height: block.header.height.0,
                        hash: block.hash(),
                        time_ms: block.header.time_ms,
                        txs: block.txs.len(),
                    };
                    sink.send(SubscriptionMessage::from(serde_json::value::to_raw_value(&head)?)).await?;
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            }
        }
    }

    async fn subscribe_job_events(&self, pending: PendingSubscriptionSink, job: Option<u64>) -> SubscriptionResult {
        let mut events = self.shared.events.subscribe();
        let sink = pending.accept().await?;
        loop {
            match events.recv().await {
                Ok(NodeEvent::Committed { block, events: block_events }) => {
                    for event in block_events.iter() {
                        let Some(of) = event_job(event) else { continue };
                        if job.is_some_and(|wanted| wanted != of.0) {
                            continue;
                        }
                        let message = JobEvent { height: block.header.height.0, event: event.clone() };
                        sink.send(SubscriptionMessage::from(serde_json::value::to_raw_value(&message)?)).await?;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            }
        }
    }
}

/// Starts the server on `listen`; it runs until the handle is stopped or dropped.
pub async fn serve(
    listen: SocketAddr,
    shared: Arc<Shared>,
    limits: RpcLimits,
) -> anyhow::Result<(SocketAddr, ServerHandle)> {
    let state = RpcState {
        shared,
        public: Budgets::new(limits.requests_per_second),
        gossip: Budgets::new(limits.gossip_per_second),
    };
    let config = ServerConfig::builder()
        .max_request_body_size(limits.max_request_bytes)
        .max_response_body_size(16 * 1024 * 1024)
        .max_connections(256)
        .max_subscriptions_per_connection(limits.max_subscriptions_per_connection)
        .build();
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("RPC server cannot listen on {listen}: {e}"))?;
    let address = listener.local_addr()?;
    let methods: jsonrpsee::Methods = state.into_rpc().into();
    let builder = Server::builder().set_config(config).to_service_builder();
    let (stop, handle) = stop_channel();
    // Our own accept loop, so that every request carries the address it came from.
    tokio::spawn(async move {
        loop {
            let (socket, remote) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::debug!(target: "node::rpc", %error, "accepting an RPC connection failed");
                        continue;
                    }
                },
                _ = stop.clone().shutdown() => break,
            };
            let (builder, methods, connection_stop) = (builder.clone(), methods.clone(), stop.clone());
            let client = ClientAddress(remote.ip());
            let service =
                tower::service_fn(move |mut request: jsonrpsee::server::HttpRequest<hyper::body::Incoming>| {
                    request.extensions_mut().insert(client);
                    let mut service = builder.clone().build(methods.clone(), connection_stop.clone());
                    async move { tower::Service::call(&mut service, request).await }
                });
            tokio::spawn(serve_with_graceful_shutdown(socket, service, stop.clone().shutdown()));
        }
    });
    Ok((address, handle))
}
