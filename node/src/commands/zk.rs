//! `trellis zk`: Groth16 proofs of fixed-point SGD steps of a small model (`trellis-zk`,
//! `docs/zk.md`), from the command line: `setup` (keys), `sample` (seeded example weights and
//! batches to try it on), `prove` and `verify`, with snarkjs-compatible JSON alongside.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use rand_core::SeedableRng;
use trellis_zk::{io, ModelSpec};

#[derive(Debug, Subcommand)]
pub enum ZkCommand {
    /// Runs the trusted setup for a model and step count: writes proving_key.bin,
    /// verifying_key.bin and verification_key.json (snarkjs) into --out. Whoever keeps this
    /// run's randomness can forge proofs (docs/zk.md §6).
    Setup(SetupArgs),
    /// Writes seeded example inputs for a model: weights.bin and batches.bin (one batch per step).
    Sample(SampleArgs),
    /// Trains the steps in fixed point and proves them: writes proof.bin, public.bin and
    /// weights_after.bin (and proof.json, public.json with --snarkjs) into --out.
    Prove(ProveArgs),
    /// Checks a proof against a verifying key and public inputs; exits 2 if it is rejected.
    Verify(VerifyArgs),
}

#[derive(Debug, Args)]
pub struct SetupArgs {
    /// The model, e.g. softmax:4x3 or mlp:4x8x3,batch=4,lr=0.5.
    #[arg(long)]
    pub model: String,
    /// SGD steps each proof covers.
    #[arg(long, default_value_t = 1)]
    pub steps: u32,
    /// The directory to write proving_key.bin and verifying_key.bin into.
    #[arg(long)]
    pub out: PathBuf,
    /// Derive the setup's randomness from this seed: reproducible, and therefore insecure
    /// (anyone who knows the seed can forge proofs). For tests and demos only.
    #[arg(long)]
    pub insecure_seed: Option<u64>,
}

#[derive(Debug, Args)]
pub struct SampleArgs {
    /// The model, e.g. softmax:4x3 or mlp:4x8x3,batch=4,lr=0.5.
    #[arg(long)]
    pub model: String,
    /// How many steps' batches to write.
    #[arg(long, default_value_t = 1)]
    pub steps: u32,
    /// Seed of the example weights and batches.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The directory to write weights.bin and batches.bin into.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct ProveArgs {
    /// The proving key (proving_key.bin from `trellis zk setup`).
    #[arg(long)]
    pub key: PathBuf,
    /// Weights before the first step (weights.bin).
    #[arg(long)]
    pub weights: PathBuf,
    /// One batch per step (batches.bin).
    #[arg(long)]
    pub batches: PathBuf,
    /// The directory to write the proof, public inputs and weights after into.
    #[arg(long)]
    pub out: PathBuf,
    /// Also write proof.json and public.json in snarkjs's layout.
    #[arg(long)]
    pub snarkjs: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The verifying key (verifying_key.bin).
    #[arg(long)]
    pub key: PathBuf,
    /// The proof (proof.bin).
    #[arg(long)]
    pub proof: PathBuf,
    /// The public inputs (public.bin).
    #[arg(long)]
    pub public: PathBuf,
}

fn parse_model(text: &str) -> anyhow::Result<ModelSpec> {
    text.parse().map_err(|e| anyhow::anyhow!("--model '{text}': {e}"))
}

fn created(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

/// Runs one `trellis zk` command; `Ok(false)` means a proof was checked and rejected.
pub fn zk(command: ZkCommand) -> anyhow::Result<bool> {
    match command {
        ZkCommand::Setup(args) => {
            let spec = parse_model(&args.model)?;
            let size = trellis_zk::circuit_size(&spec, args.steps)?;
            println!("{spec}: {} steps, {} constraints; running the setup", args.steps, size.constraints);
            let started = Instant::now();
            let (pk, vk) = match args.insecure_seed {
                Some(seed) => {
                    eprintln!("warning: --insecure-seed makes the setup reproducible: anyone who knows {seed} can forge proofs");
                    trellis_zk::setup(&spec, args.steps, &mut rand_chacha::ChaCha20Rng::seed_from_u64(seed))?
                }
                None => trellis_zk::setup(&spec, args.steps, &mut rand_core::OsRng)?,
            };
            let paths = io::write_keys(&args.out, &pk, &vk)?;
            println!("setup took {:.1} s; wrote", started.elapsed().as_secs_f64());
            for path in paths {
                println!("  {}", path.display());
            }
            Ok(true)
        }
        ZkCommand::Sample(args) => {
            let spec = parse_model(&args.model)?;
            if args.steps == 0 || args.steps > trellis_zk::MAX_STEPS {
                bail!("--steps must be in 1..={}", trellis_zk::MAX_STEPS);
            }
            created(&args.out)?;
            let weights = trellis_zk::Weights::random(&spec, args.seed);
            let batches: Vec<_> = (0..args.steps)
                .map(|step| trellis_zk::Batch::random(&spec, args.seed.wrapping_add(1 + u64::from(step))))
                .collect();
            let (weights_path, batches_path) = (args.out.join("weights.bin"), args.out.join("batches.bin"));
            io::write_weights(&weights_path, &weights)?;
            io::write_batches(&batches_path, &spec, &batches)?;
            println!(
                "wrote {} and {} ({} batches of {spec})",
                weights_path.display(),
                batches_path.display(),
                batches.len()
            );
            Ok(true)
        }
        ZkCommand::Prove(args) => {
            let pk = io::read_proving_key(&args.key)?;
            let weights = io::read_weights(&args.weights, pk.spec())?;
            let batches = io::read_batches(&args.batches, pk.spec())?;
            let started = Instant::now();
            let proven = trellis_zk::prove(&pk, &weights, &batches)?;
            let took = started.elapsed().as_secs_f64();
            created(&args.out)?;
            io::write_proof(&args.out.join("proof.bin"), &proven.proof)?;
            io::write_public_inputs(&args.out.join("public.bin"), &proven.public_inputs)?;
            io::write_weights(&args.out.join("weights_after.bin"), &proven.weights_after)?;
            if args.snarkjs {
                io::write_snarkjs(&args.out, &pk.verifying_key(), &proven.proof, &proven.public_inputs)?;
            }
            let public = &proven.public_inputs;
            println!("proved {} steps of {} in {took:.1} s", public.steps, pk.spec());
            println!(
                "  weights before  {}\n  weights after   {}\n  batches         {}",
                public.weights_before, public.weights_after, public.batches
            );
            println!(
                "wrote proof.bin, public.bin, weights_after.bin{} into {}",
                if args.snarkjs { ", proof.json, public.json, verification_key.json" } else { "" },
                args.out.display()
            );
            Ok(true)
        }
        ZkCommand::Verify(args) => {
            let vk = io::read_verifying_key(&args.key)?;
            let proof = io::read_proof(&args.proof)?;
            let public = io::read_public_inputs(&args.public)?;
            let started = Instant::now();
            match trellis_zk::verify(&vk, &public, &proof) {
                Ok(()) => {
                    println!(
                        "valid: {} steps of {} ({:.1} ms)",
                        public.steps,
                        vk.spec(),
                        started.elapsed().as_secs_f64() * 1e3
                    );
                    Ok(true)
                }
                Err(error) => {
                    println!("rejected: {error}");
                    Ok(false)
                }
            }
        }
    }
}
