//! `wan-relay`: carries the IP packets of a testbed's nodes between their TUN devices under a
//! profile's link model (`trellis_testbed::LinkModel`), and the probes that show a profile does
//! what it says (`ping`: round trips and loss over UDP; `send`/`sink`: a TCP transfer's rate).
//!
//! `scripts/wan-testbed.sh` runs it: `wan-relay serve` creates one TUN device per node
//! (`PREFIX0`, `PREFIX1`, …) and one for the host (`PREFIXc`), prints `ready`, and the script
//! moves each node's device into the node's network namespace. The devices go away with the
//! process.

use std::collections::BinaryHeap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use trellis_testbed::{Endpoint, Fate, LinkModel, Profile};

#[derive(Parser)]
#[command(about = "The WAN testbed's packet relay and probes (scripts/wan-testbed.sh runs them)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the TUN devices and carry packets between them under a profile, until killed.
    Serve {
        /// The profile (testbed/profiles/NAME.toml).
        #[arg(long)]
        profile: PathBuf,
        /// Device names: PREFIX0 … PREFIX{n-1} for the nodes, PREFIXc for the host.
        #[arg(long, default_value = "twan")]
        prefix: String,
        /// Seed of the loss and jitter draws.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Seconds between counters printed on stderr.
        #[arg(long, default_value_t = 30)]
        report_every: u64,
    },
    /// Print what a profile says of the path between two nodes: "RTT_MS RATE_MBIT LOSS JITTER_MS"
    /// (the rate is the slower access link).
    Expect {
        #[arg(long)]
        profile: PathBuf,
        #[arg(long)]
        from: usize,
        #[arg(long)]
        to: usize,
    },
    /// Answer UDP pings (run inside a namespace).
    Echo {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Send UDP pings to an `echo` and print round trips and loss.
    Ping {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 50)]
        count: u32,
        #[arg(long, default_value_t = 20)]
        interval_ms: u64,
    },
    /// Count the UDP datagrams of one `udp-send` and print the rate they arrived at (from the
    /// first to the last, after `idle_ms` without one), then exit.
    UdpSink {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value_t = 1000)]
        idle_ms: u64,
    },
    /// Send BYTES of 1,400-byte UDP datagrams paced at MBIT: above a link's rate, the receiver
    /// sees the link's rate (the relay's queues drop the rest).
    UdpSend {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 20_000_000)]
        bytes: u64,
        #[arg(long)]
        mbit: f64,
    },
    /// Receive one TCP transfer at a time and acknowledge its end.
    Sink {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Send BYTES over TCP to a `sink` and print the rate.
    Send {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 20_000_000)]
        bytes: u64,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve { profile, prefix, seed, report_every } => serve(&profile, &prefix, seed, report_every),
        Command::Expect { profile, from, to } => expect(&profile, from, to),
        Command::Echo { listen } => echo(listen),
        Command::Ping { to, count, interval_ms } => ping(to, count, interval_ms),
        Command::UdpSink { listen, idle_ms } => udp_sink(listen, idle_ms),
        Command::UdpSend { to, bytes, mbit } => udp_send(to, bytes, mbit),
        Command::Sink { listen } => sink(listen),
        Command::Send { to, bytes } => send(to, bytes),
    }
}

/// `TUNSETIFF` (linux/if_tun.h): attach this file to a TUN device of the given name.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// The largest IP packet a device hands over (its MTU is set lower by the script).
const MAX_PACKET: usize = 65_536;

/// Opens a new TUN device `name` (IP packets, no packet-information header).
#[allow(unsafe_code)]
fn open_tun(name: &str) -> anyhow::Result<File> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        bail!("device name {name:?} must have 1 to {} bytes", libc::IFNAMSIZ - 1);
    }
    let file =
        OpenOptions::new().read(true).write(true).open("/dev/net/tun").context("opening /dev/net/tun (root?)")?;
    // struct ifreq: the name (IFNAMSIZ bytes, NUL-terminated), then a short of flags, padded to 40.
    let mut request = [0u8; 40];
    request[..name.len()].copy_from_slice(name.as_bytes());
    let flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    request[libc::IFNAMSIZ..libc::IFNAMSIZ + 2].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `request` is large enough to
    // hold (40 bytes on Linux); the descriptor is open for as long as `file` lives.
    let result = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, request.as_mut_ptr()) };
    if result < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("creating TUN device {name}"));
    }
    Ok(file)
}

/// A packet waiting for its delivery time.
struct Scheduled {
    at: u64,
    seq: u64,
    to: usize,
    packet: Vec<u8>,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    // Earliest first out of a max-heap.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

struct Relay {
    model: Mutex<LinkModel>,
    queue: Mutex<(BinaryHeap<Scheduled>, u64)>,
    ready: Condvar,
    epoch: Instant,
    /// Packets for no testbed address, or not IPv4.
    strays: std::sync::atomic::AtomicU64,
}

impl Relay {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

fn serve(profile: &std::path::Path, prefix: &str, seed: u64, report_every: u64) -> anyhow::Result<()> {
    let profile = Profile::load(profile)?;
    let nodes = profile.nodes.len();
    // Device i is node i; the last is the host's.
    let mut devices = Vec::new();
    for i in 0..nodes {
        devices.push(open_tun(&format!("{prefix}{i}"))?);
    }
    devices.push(open_tun(&format!("{prefix}c"))?);
    let writers: Vec<File> = devices.iter().map(File::try_clone).collect::<Result<_, _>>()?;
    let relay = Arc::new(Relay {
        model: Mutex::new(LinkModel::new(profile.clone(), seed)),
        queue: Mutex::new((BinaryHeap::new(), 0)),
        ready: Condvar::new(),
        epoch: Instant::now(),
        strays: Default::default(),
    });
    let endpoint = move |index: usize| if index == nodes { Endpoint::Control } else { Endpoint::Node(index) };
    let index = move |endpoint: Endpoint| match endpoint {
        Endpoint::Node(i) => i,
        Endpoint::Control => nodes,
    };
    for (from, mut device) in devices.into_iter().enumerate() {
        let relay = relay.clone();
        std::thread::Builder::new().name(format!("tun{from}")).spawn(move || {
            let mut buffer = vec![0u8; MAX_PACKET];
            loop {
                let len = match device.read(&mut buffer) {
                    Ok(len) => len,
                    Err(error) => {
                        eprintln!("wan-relay: reading device {from}: {error}; this device is no longer carried");
                        return;
                    }
                };
                let packet = &buffer[..len];
                let to = (len >= 20 && packet[0] >> 4 == 4)
                    .then(|| Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]))
                    .and_then(|address| Endpoint::of(address, nodes));
                let Some(to) = to else {
                    relay.strays.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    continue;
                };
                let now = relay.now();
                let fate = relay.model.lock().unwrap_or_else(|p| p.into_inner()).admit(endpoint(from), to, len, now);
                if let Fate::Deliver(at) = fate {
                    let mut queue = relay.queue.lock().unwrap_or_else(|p| p.into_inner());
                    queue.1 += 1;
                    let seq = queue.1;
                    queue.0.push(Scheduled { at, seq, to: index(to), packet: packet.to_vec() });
                    relay.ready.notify_one();
                }
            }
        })?;
    }
    {
        let relay = relay.clone();
        std::thread::Builder::new().name("deliver".into()).spawn(move || deliver(&relay, writers))?;
    }
    println!("ready {nodes} nodes, profile {}", profile.name);
    std::io::stdout().flush()?;
    loop {
        std::thread::sleep(Duration::from_secs(report_every.max(1)));
        let counts = relay.model.lock().unwrap_or_else(|p| p.into_inner()).counts;
        let strays = relay.strays.load(std::sync::atomic::Ordering::Relaxed);
        eprintln!(
            "wan-relay: delivered {} packets ({} bytes), lost {}, dropped at full queues {}, strays {strays}",
            counts.delivered, counts.bytes, counts.lost, counts.queue_full
        );
    }
}

/// Writes each packet into its receiver's device at its time.
fn deliver(relay: &Relay, mut writers: Vec<File>) {
    let mut queue = relay.queue.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let now = relay.now();
        match queue.0.peek() {
            None => queue = relay.ready.wait(queue).unwrap_or_else(|p| p.into_inner()),
            Some(next) if next.at > now => {
                let wait = Duration::from_nanos(next.at - now);
                queue = relay.ready.wait_timeout(queue, wait).unwrap_or_else(|p| p.into_inner()).0;
            }
            Some(_) => {
                let Some(due) = queue.0.pop() else { continue };
                drop(queue);
                // A receiver whose device is gone (its namespace was deleted) loses the packet.
                let _ = writers[due.to].write_all(&due.packet);
                queue = relay.queue.lock().unwrap_or_else(|p| p.into_inner());
            }
        }
    }
}

fn expect(profile: &std::path::Path, from: usize, to: usize) -> anyhow::Result<()> {
    let profile = Profile::load(profile)?;
    let nodes = profile.nodes.len();
    if from >= nodes || to >= nodes {
        bail!("the profile has nodes 0 to {}", nodes - 1);
    }
    let rate = profile.nodes[from].mbit.min(profile.nodes[to].mbit);
    println!("{} {} {} {}", profile.rtt_between(from, to), rate, profile.loss, profile.jitter_ms);
    Ok(())
}

fn echo(listen: SocketAddr) -> anyhow::Result<()> {
    let socket = UdpSocket::bind(listen).with_context(|| format!("binding {listen}"))?;
    let mut buffer = [0u8; 64];
    loop {
        let (len, from) = socket.recv_from(&mut buffer)?;
        socket.send_to(&buffer[..len], from)?;
    }
}

fn ping(to: SocketAddr, count: u32, interval_ms: u64) -> anyhow::Result<()> {
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    socket.connect(to)?;
    socket.set_read_timeout(Some(Duration::from_millis(5)))?;
    let start = Instant::now();
    let mut sent_at = Vec::new();
    let mut rtts = Vec::new();
    let mut buffer = [0u8; 8];
    let finish = Duration::from_millis(interval_ms * u64::from(count)) + Duration::from_secs(2);
    while start.elapsed() < finish {
        let due = Duration::from_millis(interval_ms * sent_at.len() as u64);
        if (sent_at.len() as u32) < count && start.elapsed() >= due {
            // The time before the send: a sender preempted after it would measure too short.
            let at = start.elapsed();
            socket.send(&(sent_at.len() as u64).to_le_bytes())?;
            sent_at.push(at);
        }
        if let Ok(8) = socket.recv(&mut buffer) {
            let seq = u64::from_le_bytes(buffer) as usize;
            if let Some(sent) = sent_at.get(seq) {
                rtts.push((start.elapsed() - *sent).as_secs_f64() * 1000.0);
            }
        }
        if rtts.len() as u32 == count {
            break;
        }
    }
    if rtts.is_empty() {
        bail!("no answer from {to} to {count} pings");
    }
    rtts.sort_by(f64::total_cmp);
    let mean = rtts.iter().sum::<f64>() / rtts.len() as f64;
    println!(
        "rtt_ms min {:.2} median {:.2} mean {:.2} max {:.2}; answered {} of {count}",
        rtts[0],
        rtts[rtts.len() / 2],
        mean,
        rtts[rtts.len() - 1],
        rtts.len()
    );
    Ok(())
}

fn udp_sink(listen: SocketAddr, idle_ms: u64) -> anyhow::Result<()> {
    let socket = UdpSocket::bind(listen).with_context(|| format!("binding {listen}"))?;
    let mut buffer = [0u8; 2048];
    let (first_len, _) = socket.recv_from(&mut buffer)?;
    let first = Instant::now();
    let (mut last, mut bytes, mut datagrams) = (first, first_len as u64, 1u64);
    socket.set_read_timeout(Some(Duration::from_millis(idle_ms.max(1))))?;
    while let Ok((len, _)) = socket.recv_from(&mut buffer) {
        last = Instant::now();
        bytes += len as u64;
        datagrams += 1;
    }
    let span = (last - first).as_secs_f64();
    // The first datagram's bytes arrived before the span began.
    let rate = if span > 0.0 { (bytes - first_len as u64) as f64 * 8.0 / span / 1e6 } else { 0.0 };
    println!("received {bytes} bytes in {datagrams} datagrams over {span:.2} s: {rate:.1} Mbit/s");
    Ok(())
}

fn udp_send(to: SocketAddr, bytes: u64, mbit: f64) -> anyhow::Result<()> {
    if !(mbit.is_finite() && mbit > 0.0) {
        bail!("--mbit must be positive");
    }
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    socket.connect(to)?;
    let datagram = [0xa5u8; 1400];
    let interval = datagram.len() as f64 * 8.0 / (mbit * 1e6);
    let start = Instant::now();
    let count = bytes.div_ceil(datagram.len() as u64);
    for i in 0..count {
        let due = Duration::from_secs_f64(interval * i as f64);
        while start.elapsed() < due {
            std::hint::spin_loop();
        }
        // A full socket buffer drops the datagram, as a full queue would.
        let _ = socket.send(&datagram);
    }
    println!("sent {} bytes in {:.2} s", count * datagram.len() as u64, start.elapsed().as_secs_f64());
    Ok(())
}

fn sink(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    for stream in listener.incoming() {
        let mut stream = stream?;
        let mut buffer = vec![0u8; 1 << 16];
        let mut total = 0u64;
        loop {
            match stream.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => total += n as u64,
                Err(_) => break,
            }
        }
        let _ = stream.write_all(&total.to_le_bytes());
    }
    Ok(())
}

fn send(to: SocketAddr, bytes: u64) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut stream =
        TcpStream::connect_timeout(&to, Duration::from_secs(10)).with_context(|| format!("connecting {to}"))?;
    let chunk = vec![0x5au8; 1 << 16];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        stream.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut received = [0u8; 8];
    stream.read_exact(&mut received).context("the sink did not acknowledge")?;
    let elapsed = start.elapsed().as_secs_f64();
    let received = u64::from_le_bytes(received);
    if received != bytes {
        bail!("the sink received {received} of {bytes} bytes");
    }
    println!("sent {bytes} bytes in {elapsed:.2} s: {:.1} Mbit/s", bytes as f64 * 8.0 / elapsed / 1e6);
    Ok(())
}
