//! Prometheus metrics: a few counters and gauges in the text exposition format, served over
//! plain HTTP on the configured address (`GET /metrics`).
//!
//! Bytes on the wire come from the transports of the node's two libp2p networks, consensus
//! (Malachite's, `malachitebft_network_…`) and peers (`trellis_peers_…`: blobs, gossip,
//! discovery): both register their counters in the process's metrics registry, which `/metrics`
//! exports after the node's own rows, with a summary per network (`trellis_p2p_bytes_total`).
//! They count the bytes of the connections' streams, after Noise and Yamux framing is removed
//! (each adds a few bytes per frame of up to 64 KiB: under 0.1% of a blob transfer). The
//! summary's `network="gossip"` row is the part of the peer network's bytes that were gossiped
//! transaction batches this node published or received (without gossipsub's envelope; a
//! published batch counts once, whatever the number of peers it went to).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_malachitebft_app_channel::app::metrics::export as export_registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use trellis_proto::Block;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub fn set(&self, value: u64) {
        self.0.store(value, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The node's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    pub height: Gauge,
    pub block_time_ms: Gauge,
    pub committed_blocks: Counter,
    pub committed_txs: Counter,
    pub rounds_as_proposer: Counter,
    pub mempool_txs: Gauge,
    pub rpc_requests: Counter,
    pub txs_submitted: Counter,
    pub txs_rejected: Counter,
    /// Bytes of the transaction batches this node published on the gossip topic.
    pub gossip_bytes_sent: Counter,
    /// Bytes of the gossiped transaction batches this node received.
    pub gossip_bytes_received: Counter,
    /// Peers connected on the peer network now.
    pub peers_connected: Gauge,
    /// Peers banned now ([`crate::p2p::scores`]).
    pub peers_banned: Gauge,
    /// Consensus addresses learned from the peer network since start.
    pub consensus_peers_learned: Counter,
}

impl Metrics {
    pub fn observe_commit(&self, block: &Block, txs: usize) {
        self.height.set(block.header.height.0);
        self.block_time_ms.set(block.header.time_ms);
        self.committed_blocks.inc();
        self.committed_txs.add(txs as u64);
    }

    /// The Prometheus text format.
    pub fn render(&self) -> String {
        let rows: [(&str, &str, &str, u64); 12] = [
            ("trellis_height", "gauge", "height of the last committed block", self.height.get()),
            (
                "trellis_block_time_ms",
                "gauge",
                "proposer time of the last committed block, ms since the epoch",
                self.block_time_ms.get(),
            ),
            ("trellis_committed_blocks_total", "counter", "blocks committed since start", self.committed_blocks.get()),
            ("trellis_committed_txs_total", "counter", "transactions committed since start", self.committed_txs.get()),
            (
                "trellis_rounds_as_proposer_total",
                "counter",
                "consensus rounds this node proposed in",
                self.rounds_as_proposer.get(),
            ),
            ("trellis_mempool_txs", "gauge", "transactions waiting in the mempool", self.mempool_txs.get()),
            ("trellis_rpc_requests_total", "counter", "JSON-RPC requests received", self.rpc_requests.get()),
            (
                "trellis_txs_submitted_total",
                "counter",
                "transactions admitted to the mempool over RPC",
                self.txs_submitted.get(),
            ),
            ("trellis_txs_rejected_total", "counter", "transactions refused over RPC", self.txs_rejected.get()),
            ("trellis_peers_connected", "gauge", "peers connected on the peer network", self.peers_connected.get()),
            ("trellis_peers_banned", "gauge", "peers banned now for sending invalid data", self.peers_banned.get()),
            (
                "trellis_consensus_peers_learned_total",
                "counter",
                "consensus addresses learned from peers' greetings",
                self.consensus_peers_learned.get(),
            ),
        ];
        let mut out = String::new();
        for (name, kind, help, value) in rows {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"));
        }
        let served = crate::p2p::packing::served();
        let stored: Vec<u64> = served.iter().map(|s| s.stored).collect();
        let wire: Vec<u64> = served.iter().map(|s| s.wire).collect();
        for (name, help, values) in [
            (CHUNK_BYTES, "bytes of the blob chunks this node served, per blob kind", &stored),
            (CHUNK_WIRE_BYTES, "the same chunks as sent, packed or raw (node/src/p2p/packing.rs)", &wire),
        ] {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n"));
            for (s, value) in served.iter().zip(values) {
                out.push_str(&format!("{name}{{kind=\"{}\"}} {value}\n", s.kind.name()));
            }
        }
        let networks = network_exposition();
        out.push_str(&format!(
            "# HELP {P2P_BYTES} bytes each network moved since start: the libp2p networks' streams; gossip: transaction batches (part of peers)\n\
             # TYPE {P2P_BYTES} counter\n",
        ));
        let gossip = TransportBytes { received: self.gossip_bytes_received.get(), sent: self.gossip_bytes_sent.get() };
        let summary = NETWORKS
            .iter()
            .map(|(network, prefix)| (*network, transport_bytes(&networks, prefix)))
            .chain([("gossip", gossip)]);
        for (network, bytes) in summary {
            for (direction, value) in [("received", bytes.received), ("sent", bytes.sent)] {
                out.push_str(&format!("{P2P_BYTES}{{network=\"{network}\",direction=\"{direction}\"}} {value}\n"));
            }
        }
        out.push_str(&networks);
        out
    }
}

/// The summary of bytes on the wire per network and direction.
pub const P2P_BYTES: &str = "trellis_p2p_bytes_total";
/// Blob chunks served, per kind: as stored, and as sent ([`crate::p2p::packing`]).
pub const CHUNK_BYTES: &str = "trellis_blob_chunk_bytes_total";
pub const CHUNK_WIRE_BYTES: &str = "trellis_blob_chunk_wire_bytes_total";

/// The node's libp2p networks and the prefixes of their transport counters.
pub const NETWORKS: [(&str, &str); 2] =
    [("consensus", "malachitebft_network"), ("peers", crate::p2p::swarm::METRICS_PREFIX)];

/// Every metric registered in the process's registry (the libp2p networks' and Malachite's), in
/// the OpenMetrics text format, which Prometheus also reads as its text format.
pub fn network_exposition() -> String {
    let mut text = String::new();
    export_registry(&mut text);
    text
}

/// Bytes one network's transport moved since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TransportBytes {
    pub received: u64,
    pub sent: u64,
}

impl TransportBytes {
    /// What moved between `earlier` and `self` (a counter that went back, after a restart, counts
    /// from zero).
    pub fn since(self, earlier: TransportBytes) -> TransportBytes {
        let since = |now: u64, then: u64| if now >= then { now - then } else { now };
        TransportBytes { received: since(self.received, earlier.received), sent: since(self.sent, earlier.sent) }
    }
}

/// The totals of the transport counters named `{prefix}_libp2p_bandwidth_bytes_total` in
/// `exposition`, over every label set (transport stack, moniker) of each direction. Lines that do
/// not parse are not counted.
pub fn transport_bytes(exposition: &str, prefix: &str) -> TransportBytes {
    let name = format!("{prefix}_libp2p_bandwidth_bytes_total{{");
    let mut bytes = TransportBytes::default();
    for line in exposition.lines().filter(|line| line.starts_with(&name)) {
        let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<u64>().ok()) else { continue };
        if line.contains("direction=\"Inbound\"") {
            bytes.received = bytes.received.saturating_add(value);
        } else if line.contains("direction=\"Outbound\"") {
            bytes.sent = bytes.sent.saturating_add(value);
        }
    }
    bytes
}

/// The per-network summary ([`P2P_BYTES`]) in a node's `/metrics` text, by network name; rows
/// that do not parse are left out.
pub fn p2p_bytes(exposition: &str) -> std::collections::BTreeMap<String, TransportBytes> {
    let mut networks = std::collections::BTreeMap::<String, TransportBytes>::new();
    let prefix = format!("{P2P_BYTES}{{network=\"");
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix(&prefix) else { continue };
        let Some((network, rest)) = rest.split_once('"') else { continue };
        let Some(value) = rest.rsplit(' ').next().and_then(|v| v.parse::<u64>().ok()) else { continue };
        let bytes = networks.entry(network.to_string()).or_default();
        if rest.starts_with(",direction=\"received\"}") {
            bytes.received = value;
        } else if rest.starts_with(",direction=\"sent\"}") {
            bytes.sent = value;
        }
    }
    networks
}

/// Serves `metrics` on `listener` until the process ends.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((mut socket, _)) = listener.accept().await else { continue };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buffer = [0u8; 1024];
            let read = tokio::time::timeout(std::time::Duration::from_secs(5), socket.read(&mut buffer)).await;
            let request = match read {
                Ok(Ok(n)) => String::from_utf8_lossy(&buffer[..n]).into_owned(),
                _ => return,
            };
            let response = if request.starts_with("GET /metrics") {
                let body = metrics.render();
                format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
            };
            let _ = socket.write_all(response.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_bytes_add_up_each_direction_of_one_network_only() {
        let exposition = "\
# HELP malachitebft_network_libp2p_bandwidth_bytes Bandwidth usage by direction and transport protocols.
# TYPE malachitebft_network_libp2p_bandwidth_bytes counter
# UNIT malachitebft_network_libp2p_bandwidth_bytes bytes
malachitebft_network_libp2p_bandwidth_bytes_total{moniker=\"node0\",protocols=\"/ip4/tcp\",direction=\"Inbound\"} 1200
malachitebft_network_libp2p_bandwidth_bytes_total{moniker=\"node0\",protocols=\"/ip4/tcp\",direction=\"Outbound\"} 3400
malachitebft_network_libp2p_bandwidth_bytes_total{moniker=\"node0\",protocols=\"/ip6/tcp\",direction=\"Inbound\"} 5
trellis_peers_libp2p_bandwidth_bytes_total{protocols=\"/ip4/tcp\",direction=\"Inbound\"} 7000000
trellis_peers_libp2p_bandwidth_bytes_total{protocols=\"/ip4/tcp\",direction=\"Outbound\"} not-a-number
malachitebft_network_peers 3
# EOF
";
        assert_eq!(transport_bytes(exposition, "malachitebft_network"), TransportBytes { received: 1205, sent: 3400 });
        assert_eq!(transport_bytes(exposition, "trellis_peers"), TransportBytes { received: 7_000_000, sent: 0 });
        assert_eq!(transport_bytes(exposition, "nothing"), TransportBytes::default());
    }

    #[test]
    fn the_node_exports_a_byte_summary_per_network() {
        let metrics = Metrics::default();
        metrics.gossip_bytes_sent.add(3 * 1_000);
        metrics.gossip_bytes_received.add(1_000);
        let text = metrics.render();
        for network in ["consensus", "peers", "gossip"] {
            for direction in ["received", "sent"] {
                let row = format!("trellis_p2p_bytes_total{{network=\"{network}\",direction=\"{direction}\"}} ");
                assert!(text.lines().any(|line| line.starts_with(&row)), "no {row} in\n{text}");
            }
        }
        // What the devnet's monitor reads back.
        let read = p2p_bytes(&text);
        assert_eq!(read.keys().map(String::as_str).collect::<Vec<_>>(), ["consensus", "gossip", "peers"]);
        assert_eq!(read["gossip"], TransportBytes { received: 1_000, sent: 3_000 });
        let garbled =
            "trellis_p2p_bytes_total{network=\"peers\",direction=\"sent\"} lots\ntrellis_p2p_bytes_total{network=\"x";
        assert_eq!(p2p_bytes(garbled).get("peers").copied().unwrap_or_default(), TransportBytes::default());
    }
}
