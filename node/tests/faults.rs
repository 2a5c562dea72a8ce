//! Bad input from the network: garbage on the consensus and blob ports, and malformed,
//! oversized and lying frames in the blob exchange protocol itself. The node must refuse each
//! one and keep committing blocks and serving blobs to well-behaved peers. (Bad RPC input is
//! covered in cluster.rs; bad blob contents by the checker's verdicts in adversaries.rs.)
//!
//! One validator on 127.0.0.1 (`harness::Cluster`), bounded waits, killed by pid at the end.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, StreamProtocol};
use trellis_node::devnet::DevnetSpec;
use trellis_node::home::Home;
use trellis_node::storage::blobs::BlobStore;

mod harness;
use harness::Cluster;

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
        [(StreamProtocol::new(trellis_proto::blobwire::PROTOCOL), ProtocolSupport::Outbound)],
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
    // Below the kernel's ephemeral range (32768 and up).
    let port = 21_000 + (std::process::id() % 100) as u16 * 10;
    let mut cluster = Cluster::create("faults", &DevnetSpec::new(1, port, "faults-test", 200));
    // A blob the node serves, stored before it starts.
    let store = BlobStore::open(&Home::new(&cluster.info.nodes[0].home).data().join("blobs")).unwrap();
    let blob: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let key = store.put_data(&blob).unwrap();
    cluster.start_all();
    cluster.wait_for_height(&[0], 2, Duration::from_secs(60));
    let node = &cluster.info.nodes[0];

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
    let answers = cluster.block_on(send_raw(blobs.clone(), bad));
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
    let answers = cluster.block_on(send_raw(blobs.clone(), vec![frame(&past_end)]));
    assert_eq!(answers[0].as_deref(), Some(&frame(&[3])[..]), "a chunk past the end is 'not found'");

    // Still committing, and still serving a well-formed fetch.
    let now = cluster.height(0).expect("the node answers");
    cluster.wait_for_height(&[0], now + 2, Duration::from_secs(60));
    let fetched = cluster.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let local = format!("/ip4/127.0.0.1/tcp/{}", port + 9);
        let (net, _) = trellis_node::p2p::exchange::start(
            [9; 32],
            &local,
            std::slice::from_ref(&node.blobs),
            BlobStore::open(dir.path()).unwrap(),
        )
        .await
        .unwrap();
        net.fetch_until(key, tokio::time::Instant::now() + Duration::from_secs(20), blob.len() as u64).await
    });
    assert_eq!(fetched.expect("a good peer still gets the blob"), blob);
}
