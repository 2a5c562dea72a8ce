//! `trellis init`: create a node's home directory (a key readable only by its owner, a
//! configuration, a genesis: a new chain's, or an existing chain's from `--genesis`).

use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The home directory to create.
    #[arg(long)]
    pub home: PathBuf,
    /// A name for this node in logs and peers' views.
    #[arg(long, default_value = "trellis-node")]
    pub moniker: String,
    /// The chain id signed into every transaction and vote (ignored with --genesis).
    #[arg(long, default_value = "trellis-devnet")]
    pub chain_id: String,
    /// First of three loopback ports: RPC, p2p, metrics.
    #[arg(long, default_value_t = 26657)]
    pub base_port: u16,
    /// Join an existing chain with this genesis file instead of starting a new one.
    #[arg(long)]
    pub genesis: Option<PathBuf>,
}

/// Creates the home and prints where everything is and who the node is.
pub fn init(args: InitArgs) -> anyhow::Result<()> {
    let home = crate::home::init(&args.home, &args.moniker, &args.chain_id, args.base_port, args.genesis.as_deref())?;
    let key = home.load_key()?;
    println!("initialised {}", home.root.display());
    println!("address:    {}", key.address());
    println!("public key: {}", key.public_key());
    println!("config:     {}", home.config().display());
    println!("genesis:    {}", home.genesis().display());
    Ok(())
}
