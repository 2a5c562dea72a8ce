//! A node's home directory: keys, configuration and genesis, as `trellis init` lays them out.
//!
//! ```text
//! HOME/config/node.toml     the node's configuration
//! HOME/config/genesis.json  the chain's genesis (balances, bonds, parameters)
//! HOME/keys/node.key        the node's ed25519 key (0600): signs transactions and consensus votes
//! HOME/data/                the database (created by `trellis run`)
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use trellis_contracts::{Genesis, Params};
use trellis_proto::{Address, Amount, Keypair, PublicKey};

/// Default balance given to the node's own account in a fresh single-node genesis.
pub const GENESIS_BALANCE: Amount = Amount(1_000_000_000);
/// Default validator bond of the node in a fresh single-node genesis.
pub const GENESIS_BOND: Amount = Amount(100_000);

/// The node's configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub moniker: String,
    pub chain_id: String,
    pub rpc: RpcConfig,
    pub p2p: P2pConfig,
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub consensus: ConsensusTiming,
    /// Which jobs the miner role joins (other roles ignore it).
    #[serde(default)]
    pub miner: MinerPolicy,
}

/// Which jobs a miner works in: the best-paying it can run, up to `max_jobs` at once, none
/// paying a worker less than `min_reward_per_round` for a round; it leaves a job for one that
/// pays more (`roles::miner::jobs_to_hold`). Without it a node would join every job it can run,
/// whatever it pays, and a flood of cheap jobs (a token of escrow each) would split its machine
/// until it missed the deadlines of the jobs that pay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MinerPolicy {
    /// Most jobs trained at once (a job counts from its join until it ends or ejects us).
    #[serde(default = "default_max_jobs")]
    pub max_jobs: u32,
    /// Least a job must pay one worker for one round, in the chain's units: its
    /// `reward_per_round`, less the verifiers' share, over `workers_per_round`.
    #[serde(default)]
    pub min_reward_per_round: u64,
}

fn default_max_jobs() -> u32 {
    1
}

impl Default for MinerPolicy {
    fn default() -> Self {
        Self { max_jobs: default_max_jobs(), min_reward_per_round: 0 }
    }
}

/// Consensus timing. Every validator of a chain should use the same values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsensusTiming {
    /// Shortest time from the start of a height to its commit, in milliseconds: paces blocks
    /// when there is nothing to do.
    pub block_time_ms: u64,
    /// How long to wait for a proposal in round 0 (each later round adds half a second).
    pub timeout_propose_ms: u64,
    /// How long to wait for more prevotes after a quorum of mixed ones.
    pub timeout_prevote_ms: u64,
    /// How long to wait for more precommits after a quorum of mixed ones.
    pub timeout_precommit_ms: u64,
}

impl Default for ConsensusTiming {
    fn default() -> Self {
        Self { block_time_ms: 500, timeout_propose_ms: 3000, timeout_prevote_ms: 1000, timeout_precommit_ms: 1000 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RpcConfig {
    /// Address the JSON-RPC server (HTTP and WebSocket) listens on.
    pub listen: String,
    /// Largest request body accepted, in bytes.
    pub max_request_bytes: u32,
    /// Requests per second accepted from one client address (all public methods together).
    pub rate_limit_per_second: u32,
    /// `mempool_gossip` calls per second accepted from one peer address, apart from the public
    /// budget (so that gossip and users do not crowd each other out).
    #[serde(default = "default_gossip_rate_limit")]
    pub gossip_rate_limit_per_second: u32,
    /// Most subscriptions one WebSocket connection may hold.
    #[serde(default = "default_max_subscriptions")]
    pub max_subscriptions_per_connection: u32,
}

fn default_gossip_rate_limit() -> u32 {
    1_000
}

fn default_max_subscriptions() -> u32 {
    32
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct P2pConfig {
    /// libp2p listen address of the consensus network (votes, proposals, block sync).
    pub listen: String,
    /// Consensus peers to keep connected to besides those the peer network discovers (usually
    /// none: peers greet each other with their consensus address).
    #[serde(default)]
    pub persistent_peers: Vec<String>,
    /// libp2p listen address of the peer network: transaction gossip, the blob exchange
    /// (datasets, checkpoints, models, Δ) and discovery. `/ip4/0.0.0.0/tcp/PORT` listens on every
    /// interface.
    #[serde(alias = "blobs_listen")]
    pub peer_listen: String,
    /// Peer network addresses to join the network through (`/ip4/IP/tcp/PORT/p2p/PEER_ID`, as
    /// `trellis run` prints under `peers`); the rest of the network is discovered from them.
    #[serde(default)]
    pub bootnodes: Vec<String>,
    /// Peer network addresses others can reach this node at, when they are not the listen
    /// address (a public IP in front of NAT); told to peers for discovery.
    #[serde(default)]
    pub external_addresses: Vec<String>,
    /// Peer network connections the node dials up to (inbound ones are closed beyond twice this).
    #[serde(default = "default_max_peers")]
    pub max_peers: usize,
    /// Inbound consensus connections accepted from one IP address (an anti-flooding limit; a
    /// devnet, where every node shares 127.0.0.1, raises it).
    #[serde(default = "default_max_connections_per_ip")]
    pub max_connections_per_ip: usize,
}

fn default_max_peers() -> usize {
    50
}

fn default_max_connections_per_ip() -> usize {
    5
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Prometheus metrics listen address; empty disables metrics.
    pub listen: String,
}

impl NodeConfig {
    pub fn new(moniker: &str, chain_id: &str, base_port: u16) -> Self {
        Self {
            moniker: moniker.into(),
            chain_id: chain_id.into(),
            rpc: RpcConfig {
                listen: format!("127.0.0.1:{}", base_port),
                max_request_bytes: 1 << 20,
                rate_limit_per_second: 200,
                gossip_rate_limit_per_second: default_gossip_rate_limit(),
                max_subscriptions_per_connection: default_max_subscriptions(),
            },
            p2p: P2pConfig {
                listen: format!("/ip4/127.0.0.1/tcp/{}", base_port + 1),
                persistent_peers: Vec::new(),
                peer_listen: format!("/ip4/127.0.0.1/tcp/{}", base_port + 3),
                bootnodes: Vec::new(),
                external_addresses: Vec::new(),
                max_peers: default_max_peers(),
                max_connections_per_ip: default_max_connections_per_ip(),
            },
            metrics: MetricsConfig { listen: format!("127.0.0.1:{}", base_port + 2) },
            consensus: ConsensusTiming::default(),
            miner: MinerPolicy::default(),
        }
    }
}

/// The stored form of a key: the seed, with the public key and address for people to read.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    pub address: Address,
    pub public_key: PublicKey,
    /// The 32-byte ed25519 seed, hex. Anyone holding it can sign as this key.
    pub secret_seed: String,
}

/// Paths inside a home directory.
#[derive(Debug, Clone)]
pub struct Home {
    pub root: PathBuf,
}

impl Home {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    pub fn config(&self) -> PathBuf {
        self.root.join("config/node.toml")
    }
    pub fn genesis(&self) -> PathBuf {
        self.root.join("config/genesis.json")
    }
    pub fn key(&self) -> PathBuf {
        self.root.join("keys/node.key")
    }
    pub fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    /// Reads the configuration, saying which file and field is wrong.
    pub fn load_config(&self) -> anyhow::Result<NodeConfig> {
        let path = self.config();
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!("reading {} (run `trellis init --home {}` first?)", path.display(), self.root.display())
        })?;
        toml::from_str(&text).with_context(|| format!("{} is not a valid node configuration", path.display()))
    }

    pub fn load_genesis(&self) -> anyhow::Result<Genesis> {
        let path = self.genesis();
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let genesis: Genesis =
            serde_json::from_str(&text).with_context(|| format!("{} is not a valid genesis file", path.display()))?;
        genesis.validate().with_context(|| format!("{} is not a valid genesis", path.display()))?;
        Ok(genesis)
    }

    pub fn load_key(&self) -> anyhow::Result<Keypair> {
        read_key(&self.key())
    }
}

/// Writes a key file readable by its owner only (0600).
pub fn write_key(path: &Path, key: &Keypair) -> anyhow::Result<()> {
    let file = KeyFile { address: key.address(), public_key: key.public_key(), secret_seed: hex::encode(key.seed()) };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut handle =
        options.open(path).with_context(|| format!("creating key file {} (does it already exist?)", path.display()))?;
    handle.write_all(serde_json::to_string_pretty(&file)?.as_bytes())?;
    Ok(())
}

/// Reads a key file, checking that its seed, public key and address agree.
pub fn read_key(path: &Path) -> anyhow::Result<Keypair> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading key file {}", path.display()))?;
    let file: KeyFile = serde_json::from_str(&text).with_context(|| format!("{} is not a key file", path.display()))?;
    let seed: [u8; 32] = hex::decode(&file.secret_seed)
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .with_context(|| format!("{}: secret_seed must be 64 hex digits", path.display()))?;
    let key = Keypair::from_seed(seed);
    if key.public_key() != file.public_key || key.address() != file.address {
        bail!("{}: the public key or address does not match the secret seed", path.display());
    }
    Ok(key)
}

/// A genesis with this one node as validator (and a funded account), for a fresh chain.
pub fn single_node_genesis(chain_id: &str, key: &Keypair) -> Genesis {
    Genesis {
        chain_id: chain_id.into(),
        accounts: vec![(key.address(), GENESIS_BALANCE)],
        validators: vec![(key.public_key(), GENESIS_BOND)],
        miners: Vec::new(),
        params: Params::default(),
    }
}

/// The genesis fingerprint: its hash in the genesis domain over its JSON as this node writes it
/// (fields in declaration order, no whitespace), so two files that differ only in layout have
/// one fingerprint. Peers greet each other with it: nodes of two chains that share an id do not
/// mix, and operators compare it to check they hold the same genesis.
pub fn genesis_fingerprint(genesis: &Genesis) -> trellis_proto::Hash {
    let json = serde_json::to_vec(genesis).expect("a genesis serialises to JSON"); // ok: plain data, no maps with non-string keys
    trellis_proto::Hash::digest(trellis_proto::HashDomain::Genesis, &json)
}

/// Writes a home's configuration, genesis and data directory (its key must already be there).
pub fn write_home(home: &Home, genesis: &Genesis, config: &NodeConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(home.root.join("config"))?;
    std::fs::create_dir_all(home.data())?;
    std::fs::write(home.genesis(), serde_json::to_string_pretty(genesis)?)?;
    std::fs::write(home.config(), toml::to_string_pretty(config)?)?;
    Ok(())
}

/// The chain id of a new chain when `trellis init` is given none.
pub const DEFAULT_CHAIN_ID: &str = "trellis-devnet";

/// `trellis init`: creates the home directory's keys, configuration and genesis. With a
/// `genesis` file the chain id is the file's (`chain_id`, if given, must agree); without one the
/// node is the single validator of a new chain `chain_id` (default [`DEFAULT_CHAIN_ID`]).
pub fn init(
    root: &Path,
    moniker: &str,
    chain_id: Option<&str>,
    base_port: u16,
    genesis: Option<&Path>,
) -> anyhow::Result<Home> {
    let home = Home::new(root);
    if home.config().exists() || home.key().exists() {
        bail!(
            "{} is already initialised (it has {}); choose another --home or remove it",
            root.display(),
            home.config().display()
        );
    }
    let genesis = match genesis {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading genesis {}", path.display()))?;
            let genesis: Genesis = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a valid genesis file", path.display()))?;
            if let Some(chain_id) = chain_id.filter(|id| *id != genesis.chain_id) {
                bail!("genesis {} is for chain '{}', not '{chain_id}'", path.display(), genesis.chain_id);
            }
            Some(genesis)
        }
        None => None,
    };
    let chain_id = genesis.as_ref().map_or(chain_id.unwrap_or(DEFAULT_CHAIN_ID), |g| g.chain_id.as_str()).to_string();
    if chain_id.is_empty() || chain_id.len() > trellis_proto::crypto::MAX_CHAIN_ID_LEN {
        bail!("--chain-id must be 1 to {} bytes", trellis_proto::crypto::MAX_CHAIN_ID_LEN);
    }
    let key = Keypair::generate();
    write_key(&home.key(), &key)?;
    let genesis = genesis.unwrap_or_else(|| single_node_genesis(&chain_id, &key));
    let config = NodeConfig::new(moniker, &chain_id, base_port);
    write_home(&home, &genesis, &config)?;
    Ok(home)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_writes_a_private_key_a_config_and_a_genesis_that_read_back() {
        let dir = std::env::temp_dir().join(format!("trellis-home-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let home = init(&dir, "node0", Some("trellis-test"), 26_000, None).unwrap();
        let key = home.load_key().unwrap();
        let config = home.load_config().unwrap();
        assert_eq!(config.chain_id, "trellis-test");
        assert_eq!(config.rpc.listen, "127.0.0.1:26000");
        let genesis = home.load_genesis().unwrap();
        assert_eq!(genesis.validators, vec![(key.public_key(), GENESIS_BOND)]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(home.key()).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        // A second init refuses to overwrite anything.
        let again = init(&dir, "node0", Some("trellis-test"), 26_000, None).unwrap_err();
        assert!(again.to_string().contains("already initialised"));
        // A tampered key file is refused.
        let text = std::fs::read_to_string(home.key()).unwrap().replace(&key.address().to_string(), &"00".repeat(20));
        std::fs::write(home.key(), text).unwrap();
        assert!(home.load_key().unwrap_err().to_string().contains("does not match"));
        // An unknown configuration field is an error naming the file.
        std::fs::write(home.config(), "moniker = 'x'\nbogus = 1\n").unwrap();
        assert!(home.load_config().unwrap_err().to_string().contains("not a valid node configuration"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
