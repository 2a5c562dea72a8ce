//! Bad input from the network: garbage on the consensus and blob ports, and malformed,
//! oversized and lying frames in the blob exchange protocol itself. The node must refuse each
//! one and keep committing blocks and serving blobs to well-behaved peers. (Bad RPC input is
//! covered in cluster.rs; bad blob contents by the checker's verdicts in adversaries.rs.)
//!
//! One validator on 127.0.0.1, bounded waits, killed by pid at the end.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use jsonrpsee::core::client::ClientT;
use jsonrpsee::rpc_params;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, StreamProtocol};
use serde_json::Value;
use trellis_node::blobs::BlobStore;
use trellis_node::devnet::{create_with, spawn_node_as, DevnetSpec};
use trellis_node::home::Home;

const BIN: &str = env!("CARGO_BIN_EXE_trellis");

struct Node {
    child: Option<Child>,
    root: PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("node log kept under {}", self.root.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

fn height(rt: &tokio::runtime::Runtime, url: &str) -> u64 {
    let client = jsonrpsee::http_client::HttpClientBuilder::default()
        .request_timeout(Duration::from_secs(5))
        .build(url)
        .unwrap();
    rt.block_on(client.request::<Value, _>("chain_getHead", rpc_params![]))
        .map_or(0, |h| h["height"].as_u64().unwrap_or(0))
}

fn wait_for_height(rt: &tokio::runtime::Runtime, url: &str, target: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while height(rt, url) < target {
        assert!(Instant::now() < deadline, "the node did not reach height {target}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Writes `bytes` to `address` and waits for the node to close the connection; returns what it
/// sent back first.
fn raw_tcp(address: &str, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let _ = stream.write_all(bytes);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    answer
}

/// Sends raw bytes, frame headers included, on the blob protocol, and reads whatever comes back.
#[derive(Clone, Default)]
struct RawCodec;

#[async_trait::async_trait]
impl request_response::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T: futures::AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
    ) -> std::io::Result<Vec<u8>> {
        Err(std::io::Error::other("this client serves nothing"))
    }

    async fn read_response<T: futures::AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        io.take(4 << 20).read_to_end(&mut bytes).await?;
        if bytes.is_empty() {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "no answer"));
        }
        Ok(bytes)
    }

    async fn write_request<T: futures::AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: Vec<u8>,
    ) -> std::io::Result<()> {
        io.write_all(&request).await?;
        io.close().await
    }

    async fn write_response<T: futures::AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
        _: Vec<u8>,
    ) -> std::io::Result<()> {
        Err(std::io::Error::other("this client serves nothing"))
    }
}

fn frame(body: &[u8]) -> Vec<u8> {
    [&(body.len() as u32).to_le_bytes()[..], body].concat()
}

/// Sends each request on the blob protocol to `peer_addr`; returns, per request, the answer
/// bytes or `None` when the node closed the stream without one.
async fn send_raw(peer_addr: Multiaddr, requests: Vec<Vec<u8>>) -> Vec<Option<Vec<u8>>> {
    let keypair = libp2p::identity::Keypair::generate_ed25519();
    let config = request_response::Config::default().with_request_timeout(Duration::from_secs(20));
    let behaviour = request_response::Behaviour::with_codec(
        RawCodec,
        [(StreamProtocol::new("/trellis/blobs/1"), ProtocolSupport::Outbound)],
        config,
    );
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(libp2p::tcp::Config::default(), libp2p::noise::Config::new, libp2p::yamux::Config::default)
        .unwrap()
        .with_behaviour(|_| behaviour)
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    swarm.dial(peer_addr).unwrap();
    let peer = loop {
        match swarm.select_next_some().await {
            SwarmEvent::ConnectionEstablished { peer_id, .. } => break peer_id,
            SwarmEvent::OutgoingConnectionError { error, .. } => {
                panic!("cannot reach the node's blob exchange: {error}")
            }
            _ => {}
        }
    };
    let ids: Vec<_> = requests.into_iter().map(|r| swarm.behaviour_mut().send_request(&peer, r)).collect();
    let mut answers: Vec<Option<Option<Vec<u8>>>> = vec![None; ids.len()];
    while answers.iter().any(Option::is_none) {
        match swarm.select_next_some().await {
            SwarmEvent::Behaviour(request_response::Event::Message {
                message: request_response::Message::Response { request_id, response },
                ..
            }) => {
                let index = ids.iter().position(|id| *id == request_id).unwrap();
                answers[index] = Some(Some(response));
            }
            SwarmEvent::Behaviour(request_response::Event::OutboundFailure { request_id, .. }) => {
                let index = ids.iter().position(|id| *id == request_id).unwrap();
                answers[index] = Some(None);
            }
            _ => {}
        }
    }
    answers.into_iter().map(Option::unwrap).collect()
}

#[test]
fn malformed_and_oversized_p2p_messages_are_refused_and_the_node_keeps_serving() {
    let root = std::env::temp_dir().join(format!("trellis-faults-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    // Below the kernel's ephemeral range (32768 and up).
    let port = 21_000 + (std::process::id() % 100) as u16 * 10;
    let info = create_with(&root, &DevnetSpec::new(1, port, "faults-test", 200)).expect("devnet");
    let node = &info.nodes[0];
    // A blob the node serves.
    let store = BlobStore::open(&Home::new(&node.home).data().join("blobs")).unwrap();
    let blob: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let key = store.put_data(&blob).unwrap();
    let child = spawn_node_as(Path::new(BIN), &node.home, "validator").expect("spawn");
    let _node = Node { child: Some(child), root: root.clone() };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    wait_for_height(&rt, &node.rpc, 2);

    // Garbage on the raw ports: no handshake, connection dropped.
    let tcp = |multiaddr: &str| {
        let port = multiaddr.rsplit('/').next().unwrap();
        format!("127.0.0.1:{port}")
    };
    let noise: Vec<u8> = (0..256 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    for address in [tcp(&node.p2p), tcp(&node.blobs)] {
        let answer = raw_tcp(&address, &noise);
        assert!(answer.len() < 4096, "{address} answered {} bytes to garbage", answer.len());
        let oversized_header = raw_tcp(&address, &[0xff; 16]);
        assert!(oversized_header.len() < 4096, "{address}: {} bytes", oversized_header.len());
    }

    // Inside the blob protocol (after the handshake): a frame that claims 4 GiB, a frame over the
    // limit, an unknown request, a short key, an unknown blob kind, a frame cut short. Each is
    // refused (the stream closes without an answer) or answered "not found".
    let blobs: Multiaddr = node.blobs.parse().unwrap();
    let mut short_key = vec![1u8, 1];
    short_key.extend_from_slice(&[7; 10]);
    let mut unknown_kind = vec![1u8, 200];
    unknown_kind.extend_from_slice(&[7; 32]);
    let bad = vec![
        u32::MAX.to_le_bytes().to_vec(),
        frame(&vec![1u8; 3 << 20]),
        frame(&[9, 9, 9]),
        frame(&short_key),
        frame(&unknown_kind),
        [&100u32.to_le_bytes()[..], &[1, 2, 3]].concat(),
    ];
    let count = bad.len();
    let answers = rt.block_on(send_raw(blobs.clone(), bad));
    assert_eq!(answers.len(), count);
    for (i, answer) in answers.iter().enumerate() {
        assert!(
            answer.is_none(),
            "bad request {i} got an answer: {:?}",
            answer.as_ref().map(|a| &a[..a.len().min(16)])
        );
    }
    // A chunk index far past the end of a real blob: "not found", not a panic.
    let mut past_end = vec![2u8, key.kind.tag()];
    past_end.extend_from_slice(&key.hash.0);
    past_end.extend_from_slice(&u32::MAX.to_le_bytes());
    let answers = rt.block_on(send_raw(blobs.clone(), vec![frame(&past_end)]));
    assert_eq!(answers[0].as_deref(), Some(&frame(&[3])[..]), "a chunk past the end is 'not found'");

    // Still committing, and still serving a well-formed fetch.
    let now = height(&rt, &node.rpc);
    wait_for_height(&rt, &node.rpc, now + 2);
    let fetched = rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let local = format!("/ip4/127.0.0.1/tcp/{}", port + 9);
        let (net, _) = trellis_node::exchange::start(
            [9; 32],
            &local,
            std::slice::from_ref(&node.blobs),
            BlobStore::open(dir.path()).unwrap(),
        )
        .await
        .unwrap();
        net.fetch_until(key, tokio::time::Instant::now() + Duration::from_secs(20)).await
    });
    assert_eq!(fetched.expect("a good peer still gets the blob"), blob);
}
