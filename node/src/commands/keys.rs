//! `trellis keys …`: show a node's key, or create a key file for an account.

use std::path::PathBuf;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Print the address and public key of a node's key.
    Show {
        /// The node's home directory (from `trellis init`).
        #[arg(long)]
        home: PathBuf,
    },
    /// Create a new key file (0600) for an account.
    New {
        /// Where to write the key file; refuses to overwrite.
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn keys(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Show { home } => {
            let key = crate::home::Home::new(home).load_key()?;
            println!("address:    {}\npublic key: {}", key.address(), key.public_key());
        }
        KeysCommand::New { out } => {
            let key = trellis_proto::Keypair::generate();
            crate::home::write_key(&out, &key)?;
            println!(
                "wrote {} (keep it private)\naddress:    {}\npublic key: {}",
                out.display(),
                key.address(),
                key.public_key()
            );
        }
    }
    Ok(())
}
