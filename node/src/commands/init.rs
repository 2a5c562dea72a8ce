//! `trellis init`: create a node's home directory (a key readable only by its owner, a
//! configuration, a genesis: a new chain's, or an existing chain's from `--genesis`).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The home directory to create.
    #[arg(long)]
    pub home: PathBuf,
    /// A name for this node in logs and peers' views.
    #[arg(long, default_value = "trellis-node")]
    pub moniker: String,
    /// The chain id signed into every transaction and vote: a new chain's (default
    /// trellis-devnet), or with --genesis the file's (if given, it must agree).
    #[arg(long)]
    pub chain_id: Option<String>,
    /// First of four ports: RPC, consensus, metrics, peer network (so at most 65532).
    #[arg(long, default_value_t = 26657, value_parser = clap::value_parser!(u16).range(1..=65532))]
    pub base_port: u16,
    /// Join an existing chain with this genesis file instead of starting a new one.
    #[arg(long)]
    pub genesis: Option<PathBuf>,
    /// A peer to join the network through: the `peers` address another node prints at start
    /// (`/ip4/IP/tcp/PORT/p2p/PEER_ID`). Repeat for more; the rest of the network is discovered.
    #[arg(long = "bootnode", value_name = "MULTIADDR")]
    pub bootnodes: Vec<String>,
    /// The IP the consensus and peer networks listen on: 0.0.0.0 for every interface (to be
    /// reachable from other machines). RPC and metrics stay on 127.0.0.1.
    #[arg(long, default_value = "127.0.0.1")]
    pub listen_ip: std::net::IpAddr,
}

/// Creates the home and prints where everything is and who the node is.
pub fn init(args: InitArgs) -> anyhow::Result<()> {
    for bootnode in &args.bootnodes {
        let address: libp2p::Multiaddr = bootnode.parse().with_context(|| {
            format!("--bootnode '{bootnode}' is not a multiaddr (like /ip4/1.2.3.4/tcp/26003/p2p/12D3Koo…)")
        })?;
        if !address.iter().any(|p| matches!(p, libp2p::multiaddr::Protocol::Tcp(_))) {
            anyhow::bail!("--bootnode '{bootnode}' has no /tcp/PORT");
        }
    }
    let home = crate::home::init(
        &args.home,
        &args.moniker,
        args.chain_id.as_deref(),
        args.base_port,
        args.genesis.as_deref(),
    )?;
    let mut config = home.load_config()?;
    config.p2p.bootnodes = args.bootnodes.clone();
    let ip = match args.listen_ip {
        std::net::IpAddr::V4(ip) => format!("/ip4/{ip}"),
        std::net::IpAddr::V6(ip) => format!("/ip6/{ip}"),
    };
    config.p2p.listen = format!("{ip}/tcp/{}", args.base_port + 1);
    config.p2p.peer_listen = format!("{ip}/tcp/{}", args.base_port + 3);
    std::fs::write(home.config(), toml::to_string_pretty(&config)?)
        .with_context(|| format!("writing {}", home.config().display()))?;
    let key = home.load_key()?;
    println!("initialised {}", home.root.display());
    println!("address:    {}", key.address());
    println!("public key: {}", key.public_key());
    println!("config:     {}", home.config().display());
    println!(
        "genesis:    {} (fingerprint {})",
        home.genesis().display(),
        crate::home::genesis_fingerprint(&home.load_genesis()?)
    );
    if config.p2p.bootnodes.is_empty() {
        println!("bootnodes:  none (this node starts a network; others join with its `peers` address)");
    } else {
        println!("bootnodes:  {}", config.p2p.bootnodes.join(", "));
    }
    Ok(())
}
