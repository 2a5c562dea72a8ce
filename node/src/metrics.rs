//! Prometheus metrics: a few counters and gauges in the text exposition format, served over
//! plain HTTP on the configured address (`GET /metrics`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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
        let rows: [(&str, &str, &str, u64); 9] = [
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
        ];
        let mut out = String::new();
        for (name, kind, help, value) in rows {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"));
        }
        out
    }
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
