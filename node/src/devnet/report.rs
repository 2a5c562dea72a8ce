//! What the devnet shows of its demo job: the per-round table's rows (`rounds.json`), each
//! miner's fate as the chain recorded it (`miners.json`: bond before and after, pay, slashes,
//! ejection), and the closing summary (loss, bytes against data-parallel, where the checkers'
//! time went, the loss curve and the final model's path).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context as _};
use jsonrpsee::http_client::HttpClient;
use trellis_contracts::state::Job;
use trellis_contracts::Event;
use trellis_proto::Address;

use crate::devnet::DevnetInfo;
use crate::metrics::{p2p_bytes, TransportBytes, P2P_BYTES};
use crate::rpc::api::TrellisRpcClient as _;

/// What the exported models are: safetensors of a GPT, or trellis-zk weights.
pub fn model_extension(zk: bool) -> &'static str {
    if zk {
        "weights"
    } else {
        "safetensors"
    }
}

/// One settled round as the table shows it (and `rounds.json` holds it).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RoundRow {
    pub round: u32,
    pub validation_loss: f64,
    pub accepted: usize,
    pub commits: usize,
    pub verdicts_valid: usize,
    pub verdicts_other: usize,
    pub paid: u64,
    pub slashed: u64,
    pub model_hash: String,
    /// Seconds from the round's opening to its last commitment.
    pub training_s: f64,
    /// From the last commitment to the tally.
    pub verification_s: f64,
    /// From the tally to the committed aggregate.
    pub aggregation_s: f64,
    /// Bytes each node moved on the wire since the monitor's previous look (the round before, or
    /// the job's submission), per network ([`crate::metrics::P2P_BYTES`]).
    #[serde(default)]
    pub wire: Vec<NodeWire>,
    /// Each revealed commitment, in the round's commit order: who, how many inner steps it claims
    /// (H each but a straggler's, in a job with `min_inner_steps < inner_steps`), and what it was
    /// paid for them.
    #[serde(default)]
    pub work: Vec<RevealedWork>,
    /// Revealed commitments whose work continued the miner's accepted state of the round before
    /// (a streaming job's, `--fragments`; 0 in other jobs).
    #[serde(default)]
    pub continued: usize,
}

/// One miner's revealed work in a round.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RevealedWork {
    /// The miner's address (hex).
    pub miner: String,
    /// Inner steps its reveal claims.
    pub steps: u32,
    pub accepted: bool,
    /// Its miner reward for the round (0 unless accepted).
    pub paid: u64,
}

/// Bytes one node moved, per network, over some span.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct NodeWire {
    pub node: usize,
    pub role: String,
    pub networks: BTreeMap<String, TransportBytes>,
    /// Blob chunks the node served per blob kind: bytes as stored, and as packed on the wire.
    #[serde(default)]
    pub chunks: BTreeMap<String, ChunkBytes>,
}

/// Bytes of blob chunks served, as stored and as sent (`trellis_blob_chunk_bytes_total`,
/// `trellis_blob_chunk_wire_bytes_total`).
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct ChunkBytes {
    pub stored: u64,
    pub wire: u64,
}

impl ChunkBytes {
    /// What was served between `earlier` and `self` (counters that went back, after a restart,
    /// count from zero, as [`TransportBytes::since`]).
    fn since(self, earlier: ChunkBytes) -> ChunkBytes {
        if self.stored >= earlier.stored && self.wire >= earlier.wire {
            ChunkBytes { stored: self.stored - earlier.stored, wire: self.wire - earlier.wire }
        } else {
            self
        }
    }
}

/// The values of counter `name` in a `/metrics` text by its `kind` label.
fn counters_by_kind(text: &str, name: &str) -> BTreeMap<String, u64> {
    let prefix = format!("{name}{{kind=\"");
    text.lines()
        .filter_map(|line| {
            let (kind, value) = line.strip_prefix(&prefix)?.split_once("\"} ")?;
            Some((kind.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// The blob chunks a node served per kind, from its `/metrics` text.
fn chunks_served(text: &str) -> BTreeMap<String, ChunkBytes> {
    let wire = counters_by_kind(text, crate::metrics::CHUNK_WIRE_BYTES);
    counters_by_kind(text, crate::metrics::CHUNK_BYTES)
        .into_iter()
        .map(|(kind, stored)| {
            let wire = wire.get(&kind).copied().unwrap_or(0);
            (kind, ChunkBytes { stored, wire })
        })
        .collect()
}

/// Every node's [`P2P_BYTES`] summary now, read from its `/metrics` (a node that does not answer
/// within a second, or has metrics off, has an empty map).
pub async fn read_wire(info: &DevnetInfo) -> Vec<NodeWire> {
    let mut nodes = Vec::new();
    for (i, node) in info.nodes.iter().enumerate() {
        let text = tokio::time::timeout(Duration::from_secs(1), http_get(&node.metrics)).await;
        let (networks, chunks) = match text {
            Ok(Ok(text)) => (p2p_bytes(&text), chunks_served(&text)),
            _ => (BTreeMap::new(), BTreeMap::new()),
        };
        nodes.push(NodeWire { node: i, role: node.role.clone(), networks, chunks });
    }
    nodes
}

/// What each node moved between the `earlier` and the `later` reading.
pub fn wire_between(earlier: &[NodeWire], later: &[NodeWire]) -> Vec<NodeWire> {
    later
        .iter()
        .map(|now| {
            let then = earlier.iter().find(|e| e.node == now.node);
            let networks = now
                .networks
                .iter()
                .map(|(network, bytes)| {
                    let before = then.and_then(|t| t.networks.get(network)).copied().unwrap_or_default();
                    (network.clone(), bytes.since(before))
                })
                .collect();
            let chunks = now
                .chunks
                .iter()
                .map(|(kind, bytes)| {
                    let before = then.and_then(|t| t.chunks.get(kind)).copied().unwrap_or_default();
                    (kind.clone(), bytes.since(before))
                })
                .collect();
            NodeWire { node: now.node, role: now.role.clone(), networks, chunks }
        })
        .collect()
}

/// The mean bytes per node of `role` in `wire`, per network; `None` when no node of that role
/// reported any.
pub fn mean_per_node(wire: &[NodeWire], role: &str) -> Option<BTreeMap<String, TransportBytes>> {
    let nodes: Vec<&NodeWire> = wire.iter().filter(|n| n.role == role && !n.networks.is_empty()).collect();
    if nodes.is_empty() {
        return None;
    }
    let mut mean = BTreeMap::<String, TransportBytes>::new();
    for node in &nodes {
        for (network, bytes) in &node.networks {
            let total = mean.entry(network.clone()).or_default();
            total.received += bytes.received;
            total.sent += bytes.sent;
        }
    }
    let count = nodes.len() as u64;
    for bytes in mean.values_mut() {
        *bytes = TransportBytes { received: bytes.received / count, sent: bytes.sent / count };
    }
    Some(mean)
}

/// A process's peak resident memory (`VmHWM` of `/proc/PID/status`), in KiB; `None` when it
/// cannot be read (not Linux, the process is gone).
pub fn peak_resident_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The least model + AdamW state whose ratio to a node's peak memory is printed.
const MEANINGFUL_STATE_BYTES: u64 = 64 << 20;

/// Each node's peak resident memory so far, and the largest per role, against the job's model
/// and AdamW state in memory (`state_bytes`, when known): `docs/scaling.md` bounds every role's
/// peak at 3× it.
pub fn print_peak_memory(info: &DevnetInfo, pids: &[u32], state_bytes: Option<u64>) {
    let peaks: Vec<(usize, &str, u64)> = info
        .nodes
        .iter()
        .zip(pids)
        .enumerate()
        .filter_map(|(i, (node, pid))| Some((i, node.role.as_str(), peak_resident_kib(*pid)?)))
        .collect();
    if peaks.is_empty() {
        return;
    }
    let cells: Vec<String> = peaks.iter().map(|(i, _, kib)| format!("node{i} {:.0}", *kib as f64 / 1024.0)).collect();
    println!("\npeak resident memory per node (VmHWM, MiB): {}", cells.join(", "));
    if let Some(state) = state_bytes {
        println!("  the job's model + AdamW state (12 bytes a parameter): {:.0} MiB", state as f64 / 1048576.0);
    }
    for role in ["validator", "miner"] {
        if let Some(max) = peaks.iter().filter(|(_, r, _)| *r == role).map(|(_, _, kib)| *kib).max() {
            // Beside a node's fixed part (libtorch, RocksDB: ≈ 0.4 GB) a small model's ratio says nothing.
            let ratio = state_bytes
                .filter(|s| *s >= MEANINGFUL_STATE_BYTES)
                .map(|s| format!(" ({:.1}× the model + AdamW state)", (max * 1024) as f64 / s as f64))
                .unwrap_or_default();
            println!("  largest {role}: {:.0} MiB{ratio}", max as f64 / 1024.0);
        }
    }
}

/// The mean bytes a node of `role` sent per round, over every network and every round that has
/// readings; `None` without any.
pub fn mean_sent_per_round(rows: &[RoundRow], role: &str) -> Option<f64> {
    let per_round: Vec<u64> = rows
        .iter()
        .filter_map(|row| mean_per_node(&row.wire, role))
        // Gossip's bytes travel inside the peer network's: counted there, not twice.
        .map(|networks| networks.iter().filter(|(network, _)| *network != "gossip").map(|(_, bytes)| bytes.sent).sum())
        .collect();
    (!per_round.is_empty()).then(|| per_round.iter().sum::<u64>() as f64 / per_round.len() as f64)
}

/// `GET` of a plain-HTTP URL (`http://host:port/path`, as the nodes' metrics listen), the body.
async fn http_get(url: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let rest = url.strip_prefix("http://").context("not an http:// URL")?;
    let (authority, path) = rest.split_once('/').map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
    let mut stream = tokio::net::TcpStream::connect(authority).await?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\n\r\n").as_bytes()).await?;
    let mut response = Vec::new();
    stream.take(16 << 20).read_to_end(&mut response).await?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n").context("no HTTP body")?;
    let status = head.split(' ').nth(1);
    if !head.starts_with("HTTP/1.") || status != Some("200") {
        bail!("{url} answered {}", head.lines().next().unwrap_or_default());
    }
    Ok(body.to_string())
}

/// The per-round table of bytes on the wire: the mean per validator and per miner of each network,
/// sent and received.
fn print_wire(rows: &[RoundRow]) {
    let networks = ["consensus", "gossip", "peers"];
    println!(
        "\nbytes on the wire per round, mean per node, sent / received (KiB; {P2P_BYTES} of each node's /metrics):"
    );
    println!("{:>5}  {:<9}  {:>21}  {:>21}  {:>21}", "round", "role", networks[0], networks[1], networks[2]);
    for row in rows {
        for role in ["validator", "miner"] {
            let Some(mean) = mean_per_node(&row.wire, role) else { continue };
            let cells: Vec<String> = networks
                .iter()
                .map(|network| {
                    let bytes = mean.get(*network).copied().unwrap_or_default();
                    format!("{:.1} / {:.1}", bytes.sent as f64 / 1024.0, bytes.received as f64 / 1024.0)
                })
                .collect();
            println!("{:>5}  {:<9}  {:>21}  {:>21}  {:>21}", row.round, role, cells[0], cells[1], cells[2]);
        }
    }
}

/// The closing summary: the miners' table, `miners.json`, `rounds.json`, the loss curve, the
/// final model, and the figures of the run.
pub fn report(
    root: &Path,
    spec: &trellis_proto::JobSpec,
    zk_model: Option<&trellis_zk::ModelSpec>,
    initial_loss: f64,
    rows: &[RoundRow],
    miners: &[MinerOutcome],
) -> anyhow::Result<()> {
    println!(
        "\n{:>6}  {:<17}  {:>6}  {:>6}  {:>8}  {:>8}  status",
        "node", "behaviour", "bond", "now", "paid", "slashed"
    );
    for m in miners {
        let slashed: u64 = m.slashes.iter().map(|s| s.amount).sum();
        let reasons: Vec<&str> = m.slashes.iter().map(|s| s.reason.as_str()).collect();
        let status = if m.ejected {
            "ejected"
        } else if m.joined {
            "in the job"
        } else {
            "never joined"
        };
        let why = if reasons.is_empty() { String::new() } else { format!(" ({})", reasons.join(", ")) };
        println!(
            "{:>6}  {:<17}  {:>6}  {:>6}  {:>8}  {:>8}  {status}{why}",
            m.node, m.behaviour, m.bond_before, m.bond_after, m.paid, slashed
        );
    }
    std::fs::write(root.join("miners.json"), serde_json::to_string_pretty(miners)?)?;
    if rows.iter().any(|r| !r.wire.is_empty()) {
        print_wire(rows);
    }
    let Some(last) = rows.iter().rev().find(|r| r.accepted > 0) else {
        bail!("no round of the demo job was accepted; see the node logs under {}", root.display());
    };
    let extension = model_extension(zk_model.is_some());
    let final_model = root.join(format!("model.{extension}"));
    std::fs::copy(root.join("models").join(format!("round-{}.{extension}", last.round)), &final_model)?;
    let mut points = vec![(0.0, initial_loss)];
    points.extend(rows.iter().map(|r| (f64::from(r.round + 1), r.validation_loss)));
    let png = root.join("loss.png");
    crate::commands::plot::write_line_chart(
        &png,
        "devnet demo job",
        "round",
        "validation loss",
        &[crate::commands::plot::Series { label: "global model".into(), points }],
    )?;
    std::fs::write(root.join("rounds.json"), serde_json::to_string_pretty(rows)?)?;
    let parameters = match zk_model {
        Some(model) => model.num_parameters() as u64,
        None => trellis_trainer::model::parameter_count(&spec.model),
    };
    let d = &spec.diloco;
    // A streaming round's Δ holds one fragment (the first is the largest).
    let fragment = trellis_protocol::fragments::span(parameters as usize, d.fragments.max(1), 0).len() as u64;
    let delta_bytes = trellis_trainer::encoding::encoded_len(d.encoding, fragment);
    let k = u64::from(d.workers_per_round.max(2));
    let ddp_bytes = u64::from(d.inner_steps) * 2 * (k - 1) * 4 * parameters / k;
    let verify_steps =
        2 * u64::from(spec.verification.segments_per_miner) * u64::from(spec.verification.checkpoint_interval);
    println!("\nvalidation loss {:.4} → {:.4} over {} rounds", initial_loss, last.validation_loss, rows.len());
    if d.fragments > 1 {
        println!(
            "streaming: {} fragments, one synchronised a round (each every {} steps); {} of {} revealed works continued the miner's accepted state of the round before",
            d.fragments,
            u64::from(d.fragments) * u64::from(d.inner_steps),
            rows.iter().map(|r| r.continued).sum::<usize>(),
            rows.iter().map(|r| r.work.len()).sum::<usize>()
        );
    }
    println!(
        "bytes per miner per round: its Δ is {delta_bytes}; data-parallel over the same tokens sends {ddp_bytes} per worker ({:.0}× the Δ)",
        ddp_bytes as f64 / delta_bytes as f64
    );
    if let Some(sent) = mean_sent_per_round(rows, "miner") {
        println!(
            "measured on the wire: a miner sent {sent:.0} bytes per round (Δ to every validator, checkpoints to its checkers, consensus, gossip): data-parallel sends {:.1}× that",
            ddp_bytes as f64 / sent
        );
    }
    for role in ["miner", "validator"] {
        let mut kinds = BTreeMap::<&str, ChunkBytes>::new();
        for node in rows.iter().flat_map(|row| row.wire.iter().filter(|n| n.role == role)) {
            for (kind, bytes) in &node.chunks {
                let total = kinds.entry(kind.as_str()).or_default();
                total.stored += bytes.stored;
                total.wire += bytes.wire;
            }
        }
        let cells: Vec<String> = kinds
            .iter()
            .filter(|(_, b)| b.stored > 0)
            .map(|(kind, b)| {
                format!("{kind} {} → {} bytes ({:.0}%)", b.stored, b.wire, 100.0 * b.wire as f64 / b.stored as f64)
            })
            .collect();
        if !cells.is_empty() {
            println!("blob chunks the {role}s served, as stored → on the wire: {}", cells.join(", "));
        }
    }
    if zk_model.is_some() {
        println!(
            "verification checks {} Groth16 proof(s) of {} steps per miner per round (× 2 checkers) instead of re-executing",
            spec.verification.segments_per_miner, spec.verification.checkpoint_interval
        );
    } else {
        println!(
            "verification re-executes {} of {} steps per miner per round ({:.0}%: {} segments × {} steps × 2 checkers)",
            verify_steps,
            d.inner_steps,
            100.0 * verify_steps as f64 / f64::from(d.inner_steps),
            spec.verification.segments_per_miner,
            spec.verification.checkpoint_interval
        );
        let validators = rows.last().map_or(0, |row| row.wire.iter().filter(|n| n.role == "validator").count()).max(1);
        let per_checker_segments =
            (2 * u64::from(spec.verification.segments_per_miner) * u64::from(d.workers_per_round)) as f64
                / validators as f64;
        let checkpoint_bytes = parameters * spec.verification.checkpoint_state.bytes_per_parameter();
        println!(
            "per validator per round: {:.1} segment(s), {:.1} steps = {:.1}% of a miner's {} steps; at most {:.1} start checkpoint(s) of {} bytes ({:?}: {:.1}× an f32 Δ) downloaded to check them, beside the Δs every validator fetches to recompute the aggregate",
            per_checker_segments,
            per_checker_segments * f64::from(spec.verification.checkpoint_interval),
            100.0 * per_checker_segments * f64::from(spec.verification.checkpoint_interval) / f64::from(d.inner_steps),
            d.inner_steps,
            per_checker_segments,
            checkpoint_bytes,
            spec.verification.checkpoint_state,
            per_checker_segments * checkpoint_bytes as f64 / (4 * parameters) as f64,
        );
        if d.fragments > 1 {
            println!(
                "streaming: a check of a round that continues the miner's state also downloads that state's checkpoint (to derive the start) and the final one (for the Δ link): up to {} bytes more per check",
                2 * checkpoint_bytes
            );
        }
    }
    let logged = logged_seconds(root);
    if logged.train_s > 0.0 {
        println!(
            "measured: miners trained {:.1} s in all, checkers spent {:.1} s ({:.1} s fetching, the rest replay and Δ check): {:.0}% of training",
            logged.train_s,
            logged.check_s,
            logged.fetch_s,
            100.0 * logged.check_s / logged.train_s
        );
    }
    println!(
        "wrote {} (model {}), {}, {}/rounds.json",
        final_model.display(),
        last.model_hash,
        png.display(),
        root.display()
    );
    Ok(())
}

/// One miner's fate in the demo job, as the chain recorded it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct MinerOutcome {
    pub node: String,
    pub address: String,
    pub behaviour: String,
    /// Bonded miner stake at genesis and at the end.
    pub bond_before: u64,
    pub bond_after: u64,
    /// Rewards from the job's rounds.
    pub paid: u64,
    pub slashes: Vec<SlashRecord>,
    pub joined: bool,
    pub ejected: bool,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SlashRecord {
    pub reason: String,
    pub amount: u64,
}

pub async fn miner_outcomes(
    rpc: &HttpClient,
    info: &DevnetInfo,
    initial_stakes: &[u64],
    job: &Job,
    events: &[Event],
) -> Vec<MinerOutcome> {
    let mut outcomes = Vec::new();
    for (i, node) in info.nodes.iter().enumerate().filter(|(_, n)| n.role == "miner") {
        let Ok(address) = node.address.parse::<Address>() else { continue };
        let account = rpc.account(node.address.clone()).await.ok();
        let entry = job.miners.iter().find(|m| m.address == address);
        let paid = events
            .iter()
            .filter_map(|e| match e {
                Event::Rewarded { job: of, who, amount, .. } if *of == job.id && *who == address => Some(amount.0),
                _ => None,
            })
            .sum();
        let slashes = events
            .iter()
            .filter_map(|e| match e {
                Event::Slashed { who, amount, reason, .. } if *who == address => {
                    Some(SlashRecord { reason: reason.name().to_string(), amount: amount.0 })
                }
                _ => None,
            })
            .collect();
        outcomes.push(MinerOutcome {
            node: format!("node{i}"),
            address: node.address.clone(),
            behaviour: node.behaviour.map_or_else(|| "honest".to_string(), |b| b.to_string()),
            bond_before: initial_stakes.get(i).copied().unwrap_or(0),
            bond_after: account.and_then(|a| a.miner_stake).map_or(0, |s| s.bonded.0),
            paid,
            slashes,
            joined: entry.is_some(),
            ejected: entry.is_some_and(|m| m.ejected),
        });
    }
    outcomes
}

/// Seconds the nodes logged, summed over nodes.
#[derive(Debug, Default)]
struct LoggedSeconds {
    /// Miners' training (`train_s`).
    train_s: f64,
    /// Checkers' whole checks (`check_s`), and the part spent gathering blobs (`fetch_s`).
    check_s: f64,
    fetch_s: f64,
}

fn logged_seconds(root: &Path) -> LoggedSeconds {
    let mut totals = LoggedSeconds::default();
    let Ok(entries) = std::fs::read_dir(root) else { return totals };
    for entry in entries.flatten() {
        let Ok(log) = std::fs::read_to_string(entry.path().join("node.log")) else { continue };
        for line in log.lines() {
            let fields = [
                ("train_s=\"", &mut totals.train_s),
                ("check_s=\"", &mut totals.check_s),
                ("fetch_s=\"", &mut totals.fetch_s),
            ];
            for (field, total) in fields {
                if let Some(rest) = line.split(field).nth(1) {
                    *total += rest.split('"').next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
                }
            }
        }
    }
    totals
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_memory_of_this_process_is_read() {
        let kib = peak_resident_kib(std::process::id()).expect("Linux has /proc");
        assert!(kib > 1_000, "{kib} KiB");
        assert_eq!(peak_resident_kib(u32::MAX), None);
    }

    fn node(node: usize, role: &str, blobs: (u64, u64), consensus: (u64, u64)) -> NodeWire {
        let bytes = |(sent, received)| TransportBytes { received, sent };
        let networks = [("peers".to_string(), bytes(blobs)), ("consensus".to_string(), bytes(consensus))].into();
        let chunks = [("data".to_string(), ChunkBytes { stored: blobs.0 * 2, wire: blobs.0 })].into();
        NodeWire { node, role: role.into(), networks, chunks }
    }

    #[test]
    fn chunk_counters_are_read_per_kind_from_the_metrics_text() {
        let text = "# HELP trellis_blob_chunk_bytes_total x\n\
                    trellis_blob_chunk_bytes_total{kind=\"data\"} 900\n\
                    trellis_blob_chunk_bytes_total{kind=\"trail\"} 5\n\
                    trellis_blob_chunk_wire_bytes_total{kind=\"data\"} 300\n\
                    trellis_blob_chunk_wire_bytes_total{kind=\"trail\"} 5\n";
        let chunks = chunks_served(text);
        assert_eq!((chunks["data"].stored, chunks["data"].wire), (900, 300));
        assert_eq!((chunks["trail"].stored, chunks["trail"].wire), (5, 5));
        assert_eq!(chunks.len(), 2);
        // What the node's own exposition says reads back.
        let rendered = crate::metrics::Metrics::default().render();
        assert_eq!(chunks_served(&rendered).len(), trellis_proto::blobwire::BlobKind::ALL.len());
    }

    #[test]
    fn a_rounds_bytes_are_what_each_node_moved_since_the_last_look_averaged_per_role() {
        let before = [node(0, "validator", (100, 50), (10, 10)), node(1, "miner", (0, 0), (5, 5))];
        let after = [
            node(0, "validator", (1_100, 250), (30, 40)),
            node(1, "miner", (4_000, 100), (15, 25)),
            // Restarted: its counters started again from zero.
            node(2, "validator", (300, 300), (3, 3)),
        ];
        let mut earlier = before.to_vec();
        earlier.push(node(2, "validator", (900, 900), (9, 9)));
        let round = wire_between(&earlier, &after);
        assert_eq!(round[0].networks["peers"], TransportBytes { sent: 1_000, received: 200 });
        assert_eq!(round[1].networks["consensus"], TransportBytes { sent: 10, received: 20 });
        assert_eq!(round[2].networks["peers"], TransportBytes { sent: 300, received: 300 });
        assert_eq!((round[0].chunks["data"].stored, round[0].chunks["data"].wire), (2_000, 1_000));
        let restarted = round[2].chunks["data"];
        assert_eq!((restarted.stored, restarted.wire), (600, 300), "a restarted node counts from zero");
        let validators = mean_per_node(&round, "validator").unwrap();
        assert_eq!(validators["peers"], TransportBytes { sent: 650, received: 250 });
        assert_eq!(mean_per_node(&round, "miner").unwrap()["peers"], TransportBytes { sent: 4_000, received: 100 });
        assert!(mean_per_node(&round, "full").is_none());
        // Over rounds: the miner's every network, summed.
        let row = |wire: Vec<NodeWire>| RoundRow {
            round: 0,
            validation_loss: 0.0,
            accepted: 0,
            commits: 0,
            verdicts_valid: 0,
            verdicts_other: 0,
            paid: 0,
            slashed: 0,
            model_hash: String::new(),
            training_s: 0.0,
            verification_s: 0.0,
            aggregation_s: 0.0,
            wire,
            work: Vec::new(),
            continued: 0,
        };
        let rows = [row(round.clone()), row(Vec::new()), row(round)];
        assert_eq!(mean_sent_per_round(&rows, "miner"), Some(4_010.0));
        assert_eq!(mean_sent_per_round(&rows[1..2], "miner"), None);
    }
}
