//! `trellis genesis`: build a network's genesis across machines. One coordinator creates the
//! file, adds every validator's and miner's public key (each printed by their own `trellis
//! init`) and funded accounts, and shares the file; each operator installs it in their home and
//! checks the fingerprint `show` prints against the coordinator's (docs/network.md).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use trellis_contracts::{Genesis, Params};
use trellis_proto::{Address, Amount, PublicKey};

use crate::home::{genesis_fingerprint, read_key, Home};

#[derive(Debug, Subcommand)]
pub enum GenesisCommand {
    /// Write a genesis with no validators, miners or accounts yet.
    New(NewArgs),
    /// Add a validator with its initial bond (and a balance for its fees).
    AddValidator(MemberArgs),
    /// Add a miner with its initial bond (and a balance for its fees).
    AddMiner(MemberArgs),
    /// Add a funded account (a job submitter's, for example).
    AddAccount(AccountArgs),
    /// Print a genesis's chain, members and fingerprint.
    Show(FileArgs),
    /// Replace a node home's genesis with this one (before the node first runs).
    Install(InstallArgs),
}

#[derive(Debug, Args)]
pub struct NewArgs {
    /// The genesis file to create.
    #[arg(long)]
    pub out: PathBuf,
    /// The chain id, signed into every transaction and vote.
    #[arg(long)]
    pub chain_id: String,
}

#[derive(Debug, Args)]
pub struct FileArgs {
    /// The genesis file.
    #[arg(long)]
    pub genesis: PathBuf,
}

#[derive(Debug, Args)]
pub struct MemberArgs {
    /// The genesis file to edit.
    #[arg(long)]
    pub genesis: PathBuf,
    /// The member's public key (hex, as `trellis init` prints it).
    #[arg(long, conflicts_with = "key_file", required_unless_present = "key_file")]
    pub public_key: Option<PublicKey>,
    /// Or a key file to read the public key from (only the public key is used).
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// The initial bond (default: the chain's minimum stake for the role).
    #[arg(long)]
    pub bond: Option<u64>,
    /// The balance of the member's account, for fees.
    #[arg(long, default_value_t = 1_000_000)]
    pub balance: u64,
}

#[derive(Debug, Args)]
pub struct AccountArgs {
    /// The genesis file to edit.
    #[arg(long)]
    pub genesis: PathBuf,
    /// The account's address (hex).
    #[arg(long)]
    pub address: Address,
    /// The balance to give it (added to what it already has in the genesis).
    #[arg(long)]
    pub balance: u64,
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// The genesis file to install.
    #[arg(long)]
    pub genesis: PathBuf,
    /// The node home (from `trellis init`) to install it in.
    #[arg(long)]
    pub home: PathBuf,
}

pub fn genesis(command: GenesisCommand) -> anyhow::Result<()> {
    match command {
        GenesisCommand::New(args) => {
            if args.chain_id.is_empty() || args.chain_id.len() > trellis_proto::crypto::MAX_CHAIN_ID_LEN {
                bail!("--chain-id must be 1 to {} bytes", trellis_proto::crypto::MAX_CHAIN_ID_LEN);
            }
            if args.out.exists() {
                bail!("{} already exists; choose another --out or remove it", args.out.display());
            }
            let genesis = Genesis {
                chain_id: args.chain_id,
                accounts: Vec::new(),
                validators: Vec::new(),
                miners: Vec::new(),
                params: Params::default(),
            };
            write(&args.out, &genesis)?;
            println!("wrote {}: add validators with `trellis genesis add-validator`", args.out.display());
            Ok(())
        }
        GenesisCommand::AddValidator(args) => add_member(args, Role::Validator),
        GenesisCommand::AddMiner(args) => add_member(args, Role::Miner),
        GenesisCommand::AddAccount(args) => {
            let mut genesis = read(&args.genesis)?;
            credit(&mut genesis, args.address, args.balance)?;
            write(&args.genesis, &genesis)?;
            show(&genesis);
            Ok(())
        }
        GenesisCommand::Show(args) => {
            show(&read(&args.genesis)?);
            Ok(())
        }
        GenesisCommand::Install(args) => install(&args.genesis, &args.home),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Validator,
    Miner,
}

fn add_member(args: MemberArgs, role: Role) -> anyhow::Result<()> {
    let mut genesis = read(&args.genesis)?;
    let key = match (&args.public_key, &args.key_file) {
        (Some(key), _) => *key,
        (None, Some(path)) => read_key(path)?.public_key(),
        (None, None) => bail!("give --public-key or --key-file"),
    };
    let (minimum, members) = match role {
        Role::Validator => (genesis.params.min_validator_stake, &mut genesis.validators),
        Role::Miner => (genesis.params.min_miner_stake, &mut genesis.miners),
    };
    if members.iter().any(|(k, _)| *k == key) {
        bail!("{key} is already in the genesis");
    }
    let bond = Amount(args.bond.unwrap_or(minimum.0));
    if bond < minimum {
        bail!("a bond of {} is below the chain's minimum stake {} for this role", bond.0, minimum.0);
    }
    members.push((key, bond));
    credit(&mut genesis, key.address(), args.balance)?;
    write(&args.genesis, &genesis)?;
    show(&genesis);
    Ok(())
}

/// Adds `balance` to the account's genesis balance (a new entry, or the existing one raised).
fn credit(genesis: &mut Genesis, address: Address, balance: u64) -> anyhow::Result<()> {
    match genesis.accounts.iter_mut().find(|(a, _)| *a == address) {
        Some((_, amount)) => {
            amount.0 = amount.0.checked_add(balance).context("the account's balance overflows")?;
        }
        None => genesis.accounts.push((address, Amount(balance))),
    }
    Ok(())
}

fn install(path: &Path, root: &Path) -> anyhow::Result<()> {
    let genesis = read(path)?;
    genesis.validate().with_context(|| format!("{} is not a valid genesis", path.display()))?;
    let home = Home::new(root);
    let mut config = home.load_config()?;
    if home.data().join("chain").exists() {
        bail!(
            "{} has already run a chain (it has {}): a genesis can only be installed before the first run",
            root.display(),
            home.data().join("chain").display()
        );
    }
    config.chain_id = genesis.chain_id.clone();
    write(&home.genesis(), &genesis)?;
    std::fs::write(home.config(), toml::to_string_pretty(&config)?)
        .with_context(|| format!("writing {}", home.config().display()))?;
    let key = home.load_key()?;
    let role = if genesis.validators.iter().any(|(k, _)| *k == key.public_key()) {
        "a validator"
    } else if genesis.miners.iter().any(|(k, _)| *k == key.public_key()) {
        "a miner"
    } else {
        "not a validator or miner (it can follow the chain, or bond later)"
    };
    println!("installed {} in {}: this node ({}) is {role}", path.display(), root.display(), key.address());
    println!("fingerprint {}: check that it is the coordinator's", genesis_fingerprint(&genesis));
    Ok(())
}

fn read(path: &Path) -> anyhow::Result<Genesis> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a valid genesis file", path.display()))
}

fn write(path: &Path, genesis: &Genesis) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(genesis)?).with_context(|| format!("writing {}", path.display()))
}

fn show(genesis: &Genesis) {
    println!("chain        {}", genesis.chain_id);
    println!("fingerprint  {}", genesis_fingerprint(genesis));
    println!("validators   {}", genesis.validators.len());
    for (key, bond) in &genesis.validators {
        println!("  {} bond {}", key.address(), bond.0);
    }
    println!("miners       {}", genesis.miners.len());
    for (key, bond) in &genesis.miners {
        println!("  {} bond {}", key.address(), bond.0);
    }
    println!("accounts     {}", genesis.accounts.len());
    if genesis.validators.is_empty() {
        println!("(no validator yet: a chain cannot start from this genesis)");
    }
}
