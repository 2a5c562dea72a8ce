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

use jsonrpsee::server::{serve_with_graceful_shutdown, stop_channel, RpcModule, Server, ServerConfig, ServerHandle};
use jsonrpsee::types::{ErrorObjectOwned, Params};
use jsonrpsee::{Extensions, PendingSubscriptionSink, SubscriptionMessage};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::broadcast;
use trellis_contracts::state::{self, keys, Job, RoundState, RoundSummary, Stake};
use trellis_contracts::{Event, KvStore};
use trellis_proto::{Address, Block, Hash, Height, JobId, Role, SignedTx, TxKind};

use crate::mempool::MempoolError;
use crate::shared::{NodeEvent, Shared};

/// Error codes beyond the JSON-RPC standard ones.
pub mod codes {
    /// Standard: the parameters are malformed.
    pub const INVALID_PARAMS: i32 = -32602;
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

type RpcResult<T> = Result<T, ErrorObjectOwned>;

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

    fn view(&self) -> crate::store::PendingState<'_> {
        self.shared.ledger.store().pending_state()
    }
}

/// The head as RPC shows it.
#[derive(Debug, Clone, Serialize)]
pub struct HeadInfo {
    pub chain_id: String,
    pub height: u64,
    pub hash: Hash,
    pub time_ms: u64,
    pub state_root: Hash,
    pub txs: usize,
}

fn head_info(shared: &Shared) -> RpcResult<HeadInfo> {
    let store = shared.ledger.store();
    let height = store.head().map_err(|e| error(-32603, e.to_string()))?;
    let block = store.block(height).map_err(|e| error(-32603, e.to_string()))?;
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
                .unwrap_or_else(|e| crate::store::fatal(e)),
            txs: 0,
        },
    })
}

fn block_json(block: &Block) -> Value {
    json!({
        "hash": block.hash(),
        "header": block.header,
        "txs": block.txs.iter().map(|tx| json!({ "hash": tx.hash(), "tx": tx })).collect::<Vec<_>>(),
    })
}

fn parse_address(text: &str) -> RpcResult<Address> {
    text.parse().map_err(|_| invalid(format!("'{text}' is not an address (40 hex digits)")))
}

fn parse_hash(text: &str) -> RpcResult<Hash> {
    text.parse().map_err(|_| invalid(format!("'{text}' is not a hash (64 hex digits)")))
}

/// Why the committed transaction `hash` in block `height` failed, if its block's events say it did.
fn failure_of(shared: &Shared, height: trellis_proto::Height, hash: &Hash) -> Option<String> {
    let events: Vec<Value> = serde_json::from_slice(&shared.ledger.store().events(height)?).ok()?;
    let hex = hash.to_string();
    events
        .iter()
        .find(|e| e["event"] == "tx_failed" && e["tx"].as_str() == Some(hex.as_str()))
        .map(|e| e["reason"].as_str().unwrap_or("unknown").to_string())
}

/// Admits transactions to the mempool (signatures checked in one batch), one result each.
fn admit(state: &RpcState, txs: Vec<SignedTx>) -> Vec<Result<Hash, MempoolError>> {
    let ledger = &state.shared.ledger;
    let mut mempool = state.shared.mempool.lock().unwrap_or_else(|p| p.into_inner());
    let results = mempool.insert_batch(ledger.chain_id(), txs, |a| ledger.sender_account(a));
    state.shared.metrics.mempool_txs.set(mempool.len() as u64);
    results
}

/// Decodes and admits a hex-encoded signed transaction.
fn submit(state: &RpcState, hex_tx: &str) -> RpcResult<Value> {
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
    match admit(state, vec![tx]).into_iter().next().unwrap_or(Err(MempoolError::AlreadyKnown)) {
        Ok(hash) => {
            state.shared.metrics.txs_submitted.inc();
            // Forwarding is best effort: a full queue only means peers learn of it later from
            // the block.
            let _ = state.shared.gossip.try_send(tx_copy);
            Ok(json!({ "hash": hash }))
        }
        Err(e) => Err(reject(e.to_string())),
    }
}

fn account_json(state: &RpcState, address: Address) -> RpcResult<Value> {
    let view = state.view();
    let account: state::Account =
        state::read(&view, &keys::account(&address)).map_err(|e| error(-32603, e.to_string()))?.unwrap_or_default();
    let stake = |role| -> RpcResult<Option<Stake>> {
        state::read(&view, &keys::stake(role, &address)).map_err(|e| error(-32603, e.to_string()))
    };
    let pending_nonce = {
        let mempool = state.shared.mempool.lock().unwrap_or_else(|p| p.into_inner());
        mempool.next_free_nonce(&address, account.nonce)
    };
    Ok(json!({
        "address": address,
        "balance": account.balance,
        "nonce": account.nonce,
        "pending_nonce": pending_nonce,
        "validator_stake": stake(Role::Validator)?,
        "miner_stake": stake(Role::Miner)?,
    }))
}

fn jobs(state: &RpcState) -> RpcResult<Vec<Job>> {
    let view = state.view();
    view.scan_prefix(keys::JOB_PREFIX)
        .into_iter()
        .map(|(key, bytes)| state::decode_record::<Job>(&key, &bytes).map_err(|e| error(-32603, e.to_string())))
        .collect()
}

fn event_job(event: &Event) -> Option<JobId> {
    let value = serde_json::to_value(event).ok()?;
    value.get("job").and_then(|j| j.as_u64()).map(JobId)
}

/// Builds the RPC module over the node's shared state.
fn module(state: RpcState) -> anyhow::Result<RpcModule<RpcState>> {
    let mut module = RpcModule::new(state);
    module.register_method("chain_getHead", |_, state, ext| -> RpcResult<HeadInfo> {
        state.admit(ext)?;
        head_info(&state.shared)
    })?;
    module.register_method("chain_getBlock", |params: Params, state, ext| -> RpcResult<Value> {
        state.admit(ext)?;
        let (height,): (u64,) = params.parse()?;
        let block = state.shared.ledger.store().block(Height(height)).map_err(|e| error(-32603, e.to_string()))?;
        block.map(|b| block_json(&b)).ok_or_else(|| error(codes::NOT_FOUND, format!("no block at height {height}")))
    })?;
    module.register_method("tx_submit", |params: Params, state, ext| -> RpcResult<Value> {
        state.admit(ext)?;
        let (hex_tx,): (String,) = params.parse()?;
        submit(state, &hex_tx)
    })?;
    module.register_method("mempool_gossip", |params: Params, state, ext| -> RpcResult<Value> {
        state.admit_gossip(ext)?;
        let (hex_txs,): (Vec<String>,) = params.parse()?;
        if hex_txs.len() > crate::gossip::MAX_BATCH {
            return Err(invalid(format!("at most {} transactions per gossip batch", crate::gossip::MAX_BATCH)));
        }
        let txs = hex_txs
            .iter()
            .map(|h| hex::decode(h).ok().and_then(|b| SignedTx::from_wire(&b).ok()))
            .collect::<Option<Vec<SignedTx>>>()
            .ok_or_else(|| invalid("a gossiped transaction is not hex of a signed transaction"))?;
        let admitted = admit(state, txs).iter().filter(|r| r.is_ok()).count();
        Ok(json!({ "admitted": admitted }))
    })?;
    module.register_method("tx_get", |params: Params, state, ext| -> RpcResult<Value> {
        state.admit(ext)?;
        let (hash,): (String,) = params.parse()?;
        let hash = parse_hash(&hash)?;
        match state.shared.ledger.store().tx(&hash).map_err(|e| error(-32603, e.to_string()))? {
            Some((height, index, tx)) => match failure_of(&state.shared, height, &hash) {
                // Included, fee paid, action refused (`contracts::Chain::include_tx`).
                Some(reason) => {
                    Ok(json!({ "status": "failed", "reason": reason, "height": height.0, "index": index, "tx": tx }))
                }
                None => Ok(json!({ "status": "committed", "height": height.0, "index": index, "tx": tx })),
            },
            None => {
                let pending = state.shared.mempool.lock().unwrap_or_else(|p| p.into_inner()).contains(&hash);
                if pending {
                    Ok(json!({ "status": "pending" }))
                } else {
                    Err(error(codes::NOT_FOUND, format!("transaction {hash} is neither committed nor pending")))
                }
            }
        }
    })?;
    module.register_method("state_getAccount", |params: Params, state, ext| -> RpcResult<Value> {
        state.admit(ext)?;
        let (address,): (String,) = params.parse()?;
        account_json(state, parse_address(&address)?)
    })?;
    module.register_method("state_getValidators", |_, state, ext| -> RpcResult<Value> {
        state.admit(ext)?;
        let set = state.shared.ledger.validator_set();
        let validators: Vec<Value> = set
            .validators()
            .iter()
            .map(|v| json!({ "address": v.address.0, "public_key": v.key, "power": v.power }))
            .collect();
        Ok(json!({ "validators": validators, "total_power": set.validators().iter().map(|v| v.power).sum::<u64>() }))
    })?;
    module.register_method("job_list", |_, state, ext| -> RpcResult<Value> {
        state.admit(ext)?;
        let jobs = jobs(state)?;
        Ok(json!(jobs
            .iter()
            .map(|j| json!({ "id": j.id, "submitter": j.submitter, "status": j.status, "current_round": j.current_round, "escrow": j.escrow }))
            .collect::<Vec<_>>()))
    })?;
    module.register_method("job_get", |params: Params, state, ext| -> RpcResult<Job> {
        state.admit(ext)?;
        let (id,): (u64,) = params.parse()?;
        let view = state.view();
        state::read::<Job>(&view, &keys::job(JobId(id)))
            .map_err(|e| error(-32603, e.to_string()))?
            .ok_or_else(|| error(codes::NOT_FOUND, format!("no job {id}")))
    })?;
    module.register_method("job_getRound", |params: Params, state, ext| -> RpcResult<RoundState> {
        state.admit(ext)?;
        let (id, round): (u64, u32) = params.parse()?;
        let view = state.view();
        let found = state::read::<RoundState>(&view, &keys::round(JobId(id), round))
            .map_err(|e| error(-32603, e.to_string()))?;
        found.ok_or_else(|| match state::read::<RoundSummary>(&view, &keys::summary(JobId(id), round)) {
            Ok(Some(_)) => error(
                codes::NOT_FOUND,
                format!(
                    "round {round} of job {id} was settled long ago and pruned to a summary: ask job_getRoundSummary"
                ),
            ),
            _ => error(codes::NOT_FOUND, format!("job {id} has no round {round}")),
        })
    })?;
    module.register_method("job_getRoundSummary", |params: Params, state, ext| -> RpcResult<RoundSummary> {
        state.admit(ext)?;
        let (id, round): (u64, u32) = params.parse()?;
        let view = state.view();
        if let Some(full) = state::read::<RoundState>(&view, &keys::round(JobId(id), round))
            .map_err(|e| error(-32603, e.to_string()))?
        {
            return Ok(RoundSummary::of(&full));
        }
        state::read::<RoundSummary>(&view, &keys::summary(JobId(id), round))
            .map_err(|e| error(-32603, e.to_string()))?
            .ok_or_else(|| error(codes::NOT_FOUND, format!("job {id} has no round {round}")))
    })?;
    module.register_subscription(
        "chain_subscribeHeads",
        "chain_head",
        "chain_unsubscribeHeads",
        |_, pending: PendingSubscriptionSink, state, _| async move {
            let mut events = state.shared.events.subscribe();
            let sink = pending.accept().await?;
            loop {
                match events.recv().await {
                    Ok(NodeEvent::Committed { block, .. }) => {
                        let head = json!({ "height": block.header.height.0, "hash": block.hash(), "time_ms": block.header.time_ms, "txs": block.txs.len() });
                        sink.send(SubscriptionMessage::from(serde_json::value::to_raw_value(&head)?)).await?;
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                }
            }
        },
    )?;
    module.register_subscription(
        "job_subscribeEvents",
        "job_event",
        "job_unsubscribeEvents",
        |params: Params<'static>, pending: PendingSubscriptionSink, state, _| async move {
            let filter: Option<u64> = params.one::<u64>().ok();
            let mut events = state.shared.events.subscribe();
            let sink = pending.accept().await?;
            loop {
                match events.recv().await {
                    Ok(NodeEvent::Committed { block, events: block_events }) => {
                        for event in block_events.iter() {
                            let Some(job) = event_job(event) else { continue };
                            if filter.is_some_and(|f| f != job.0) {
                                continue;
                            }
                            let message = json!({ "height": block.header.height.0, "event": event });
                            sink.send(SubscriptionMessage::from(serde_json::value::to_raw_value(&message)?)).await?;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                }
            }
        },
    )?;
    Ok(module)
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
    let methods: jsonrpsee::Methods = module(state)?.into();
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
