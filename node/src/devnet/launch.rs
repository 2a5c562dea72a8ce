//! Lays a devnet out on disk and starts its processes: one full node home per node under
//! `HOME/node<i>/` (keys, config, a genesis shared by all, `node.log`), `HOME/devnet.json` listing
//! the nodes (and marking the directory as a devnet that a later `trellis devnet` may wipe), and
//! `trellis run` children started, and stopped, one per node.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};
use trellis_contracts::{Genesis, Params};
use trellis_proto::{Amount, Keypair};

use crate::home::{write_home, write_key, Home, NodeConfig, GENESIS_BALANCE, GENESIS_BOND};
use trellis_protocol::behaviour::Behaviour;

const MARKER: &str = "devnet.json";
/// Ports used by one node: RPC, p2p, metrics.
const PORTS_PER_NODE: u16 = 10;

/// What `devnet.json` records.
#[derive(Debug, Serialize, Deserialize)]
pub struct DevnetInfo {
    pub chain_id: String,
    pub nodes: Vec<DevnetNode>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DevnetNode {
    pub home: PathBuf,
    pub address: String,
    pub rpc: String,
    pub p2p: String,
    pub metrics: String,
    /// `validator`, `full` or `miner`: the `--role` it runs with.
    #[serde(default = "default_role")]
    pub role: String,
    /// The peer network's listen address (blobs, gossip, discovery).
    pub blobs: String,
    /// The node's peer id: `{blobs}/p2p/{peer_id}` is what others give as `--bootnode`.
    #[serde(default)]
    pub peer_id: String,
    /// A miner's behaviour when it is not honest (test and devnet builds only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behaviour: Option<Behaviour>,
    /// The network namespace the node runs in (the WAN testbed's), if not the host's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
}

fn default_role() -> String {
    "validator".into()
}

/// Miner bond each devnet miner gets in genesis.
pub const DEVNET_MINER_BOND: Amount = Amount(5_000);
/// Balance of the devnet's job submitter (`HOME/submitter.key`).
pub const DEVNET_SUBMITTER_BALANCE: Amount = Amount(10_000_000);

/// How to lay out a devnet.
#[derive(Debug, Clone)]
pub struct DevnetSpec {
    pub validators: usize,
    pub base_port: u16,
    pub chain_id: String,
    pub block_time_ms: u64,
    /// More funded accounts besides the validators' own (for load tests).
    pub extra_accounts: Vec<(trellis_proto::Address, Amount)>,
    /// Requests per second each node's RPC accepts.
    pub rpc_rate_limit: u32,
    /// Nodes after the validators that follow the chain without a bond (not in the set).
    pub followers: usize,
    /// Honest miner nodes after the followers, each with a miner bond from genesis.
    pub miners: usize,
    /// Cheating miners after the honest ones, bonded the same way.
    pub adversaries: Vec<(Behaviour, usize)>,
    /// Each node's own IPv4 address to listen on and be reached at, in node order; empty: every
    /// node on 127.0.0.1 (the WAN testbed gives each its own).
    pub hosts: Vec<String>,
    /// Node i runs in the network namespace `PREFIX{i}` (made by `scripts/wan-testbed.sh`).
    pub netns_prefix: Option<String>,
}

impl DevnetSpec {
    pub fn new(validators: usize, base_port: u16, chain_id: &str, block_time_ms: u64) -> Self {
        Self {
            validators,
            base_port,
            chain_id: chain_id.into(),
            block_time_ms,
            extra_accounts: Vec::new(),
            rpc_rate_limit: 200,
            followers: 0,
            miners: 0,
            adversaries: Vec::new(),
            hosts: Vec::new(),
            netns_prefix: None,
        }
    }
}

/// Creates the homes of an N-validator devnet under `root` and returns what it wrote.
pub fn create(
    root: &Path,
    validators: usize,
    base_port: u16,
    chain_id: &str,
    block_time_ms: u64,
) -> anyhow::Result<DevnetInfo> {
    create_with(root, &DevnetSpec::new(validators, base_port, chain_id, block_time_ms))
}

/// [`create`] with every knob.
pub fn create_with(root: &Path, spec: &DevnetSpec) -> anyhow::Result<DevnetInfo> {
    let (validators, base_port, chain_id, block_time_ms) =
        (spec.validators, spec.base_port, spec.chain_id.as_str(), spec.block_time_ms);
    if validators == 0 || validators > 64 {
        bail!("--validators must be between 1 and 64");
    }
    // A miner's adversary is an extra miner node; a validator's is one of the validators (the last).
    let expand = |validators_kind: bool| -> Vec<Behaviour> {
        spec.adversaries
            .iter()
            .filter(|(b, _)| b.is_validators() == validators_kind)
            .flat_map(|(b, n)| std::iter::repeat_n(*b, *n))
            .collect()
    };
    let behaviours: Vec<Behaviour> = std::iter::repeat_n(Behaviour::Honest, spec.miners).chain(expand(false)).collect();
    let validator_adversaries = expand(true);
    if validator_adversaries.len() >= validators {
        bail!("{} adversarial validators leave no honest one among {validators}", validator_adversaries.len());
    }
    let last_port =
        u32::from(base_port) + PORTS_PER_NODE as u32 * (validators + spec.followers + behaviours.len()) as u32;
    if base_port < 1024 || last_port > u32::from(u16::MAX) {
        bail!("--base-port {base_port} with {validators} validators leaves the port range 1024..65535");
    }
    if root.exists() {
        let is_devnet = root.join(MARKER).exists();
        let is_empty = std::fs::read_dir(root).map(|mut d| d.next().is_none()).unwrap_or(false);
        if is_devnet {
            std::fs::remove_dir_all(root)
                .with_context(|| format!("removing the earlier devnet at {}", root.display()))?;
        } else if !is_empty {
            bail!("{} exists and is not a devnet directory; choose another --home", root.display());
        }
    }
    let nodes_total = validators + spec.followers + behaviours.len();
    if !spec.hosts.is_empty() && spec.hosts.len() != nodes_total {
        bail!("{} node addresses for {nodes_total} nodes; give one per node, in order", spec.hosts.len());
    }
    if let Some(bad) = spec.hosts.iter().find(|h| h.parse::<std::net::Ipv4Addr>().is_err()) {
        bail!("node address {bad:?} is not an IPv4 address");
    }
    let host = |i: usize| spec.hosts.get(i).map_or("127.0.0.1", String::as_str);
    let keys: Vec<Keypair> = (0..nodes_total).map(|_| Keypair::generate()).collect();
    let submitter = Keypair::generate();
    let params = Params::default();
    let first_miner = validators + spec.followers;
    let genesis = Genesis {
        chain_id: chain_id.to_string(),
        accounts: keys
            .iter()
            .map(|k| (k.address(), GENESIS_BALANCE))
            .chain(std::iter::once((submitter.address(), DEVNET_SUBMITTER_BALANCE)))
            .chain(spec.extra_accounts.iter().copied())
            .collect(),
        validators: keys[..validators]
            .iter()
            .map(|k| (k.public_key(), GENESIS_BOND.max(params.min_validator_stake)))
            .collect(),
        miners: keys[first_miner..]
            .iter()
            .map(|k| (k.public_key(), DEVNET_MINER_BOND.max(params.min_miner_stake)))
            .collect(),
        params,
    };
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    write_key(&root.join("submitter.key"), &submitter)?;
    let port = |i: usize, offset: u16| base_port + PORTS_PER_NODE * i as u16 + offset;
    let p2p = |i: usize| format!("/ip4/{}/tcp/{}", host(i), port(i, 1));
    let peers = |i: usize| format!("/ip4/{}/tcp/{}", host(i), port(i, 3));
    let peer_id = |i: usize| -> anyhow::Result<String> {
        let key = libp2p::identity::Keypair::ed25519_from_bytes(keys[i].seed()).context("deriving a peer id")?;
        Ok(key.public().to_peer_id().to_string())
    };
    // Every node joins through the first two validators, as a node on another machine would
    // (consensus peers are learned from the peer network, not listed).
    let bootnodes: Vec<(usize, String)> = (0..validators.min(2))
        .map(|j| Ok((j, format!("{}/p2p/{}", peers(j), peer_id(j)?))))
        .collect::<anyhow::Result<_>>()?;
    let mut nodes = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let home = Home::new(root.join(format!("node{i}")));
        write_key(&home.key(), key)?;
        let mut config = NodeConfig::new(&format!("node{i}"), chain_id, port(i, 0));
        config.rpc.listen = format!("{}:{}", host(i), port(i, 0));
        config.p2p.listen = p2p(i);
        config.p2p.peer_listen = peers(i);
        config.metrics.listen = format!("{}:{}", host(i), port(i, 2));
        config.p2p.bootnodes = bootnodes.iter().filter(|(j, _)| *j != i).map(|(_, a)| a.clone()).collect();
        // Every node, and any node a user adds on this machine, connects from 127.0.0.1.
        config.p2p.max_connections_per_ip = 256;
        config.consensus.block_time_ms = block_time_ms;
        config.rpc.rate_limit_per_second = spec.rpc_rate_limit;
        write_home(&home, &genesis, &config)?;
        nodes.push(DevnetNode {
            home: home.root.clone(),
            address: key.address().to_string(),
            rpc: format!("http://{}", config.rpc.listen),
            p2p: config.p2p.listen.clone(),
            metrics: format!("http://{}/metrics", config.metrics.listen),
            role: if i < validators {
                "validator"
            } else if i < first_miner {
                "full"
            } else {
                "miner"
            }
            .to_string(),
            blobs: config.p2p.peer_listen.clone(),
            peer_id: peer_id(i)?,
            behaviour: match i.checked_sub(first_miner) {
                Some(m) => Some(behaviours[m]),
                None => (i + validator_adversaries.len())
                    .checked_sub(validators)
                    .and_then(|v| validator_adversaries.get(v).copied()),
            }
            .filter(|b| *b != Behaviour::Honest),
            netns: spec.netns_prefix.as_ref().map(|prefix| format!("{prefix}{i}")),
        });
    }
    let info = DevnetInfo { chain_id: chain_id.to_string(), nodes };
    std::fs::write(root.join(MARKER), serde_json::to_string_pretty(&info)?)?;
    Ok(info)
}

/// Starts `trellis run` for one home as a validator, logging to `HOME/node.log`.
pub fn spawn_node(binary: &Path, home: &Path) -> anyhow::Result<Child> {
    spawn_node_as(binary, home, "validator")
}

/// Starts `trellis run --role ROLE` for one home, logging to `HOME/node.log`.
pub fn spawn_node_as(binary: &Path, home: &Path, role: &str) -> anyhow::Result<Child> {
    spawn_with(binary, home, role, &[], None)
}

fn spawn_with(binary: &Path, home: &Path, role: &str, extra: &[String], netns: Option<&str>) -> anyhow::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(home.join("node.log"))
        .with_context(|| format!("opening {}/node.log", home.display()))?;
    // `ip netns exec` enters the namespace and execs the node, so the child's pid is the node's.
    let mut command = match netns {
        Some(netns) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", netns]).arg(binary);
            command
        }
        None => Command::new(binary),
    };
    command
        .arg("run")
        .arg("--home")
        .arg(home)
        .arg("--role")
        .arg(role)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {} run --home {}", binary.display(), home.display()))
}

/// Starts one devnet node as `devnet.json` describes it (role, and behaviour for an adversary).
pub fn spawn_devnet_node(binary: &Path, node: &DevnetNode) -> anyhow::Result<Child> {
    let mut extra = Vec::new();
    if let Some(behaviour) = node.behaviour {
        extra = vec!["--behaviour".to_string(), behaviour.to_string()];
    }
    spawn_with(binary, &node.home, &node.role, &extra, node.netns.as_deref())
}

/// Asks a child to stop (SIGTERM), then kills it if it has not within `grace`.
pub fn stop_node(child: &mut Child, grace: Duration) {
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}
