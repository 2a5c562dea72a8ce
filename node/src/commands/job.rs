//! What job submitters and model users run: `trellis job submit job.toml`, `trellis job status`,
//! `trellis stake`, and `trellis model export`.
//!
//! A job file names a model preset, a dataset path and the DiLoCo and verification parameters.
//! Submitting publishes the dataset as shards into a node's blob store (which serves them to
//! miners), checks the spec against the chain's rules before any funds move, and sends
//! `SubmitJob`. Exporting fetches the latest committed model from peers and checks its hash
//! against the chain before writing it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use serde::Deserialize;
use trellis_proto::{
    AggregationRule, Amount, CheckpointState, DeltaEncoding, DilocoParams, Hash, InnerOptimizer, JobSpec,
    OuterOptimizer, TxKind, VerificationMode, VerificationParams,
};
use trellis_trainer::model::Preset;

use crate::home::Home;
use crate::rpc::api::TrellisRpcClient as _;
use crate::rpc::client::{explain, RpcArg, SignerArgs};
use crate::storage::blobs::{BlobKey, BlobKind, BlobStore};

/// A job file (`job.toml`). Unknown keys are errors, so a typo never silently means a default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobFile {
    pub name: String,
    /// Model preset: nano, micro, small or gpt2; for a groth16 job, a zk model
    /// (`mlp:16x16x4,batch=4,lr=0.5`, docs/zk.md).
    pub model: String,
    /// A text file or a directory of text files.
    pub dataset: PathBuf,
    #[serde(default = "defaults::seed")]
    pub seed: u64,
    /// Tokens held for rewards; what is left comes back when the job ends.
    pub escrow: u64,
    pub reward_per_round: u64,
    #[serde(default = "defaults::min_miner_stake")]
    pub min_miner_stake: u64,
    /// Blocks from a round's opening to its commit deadline.
    #[serde(default = "defaults::commit_blocks")]
    pub commit_blocks: u32,
    /// Blocks from the commit deadline to the end of verification.
    #[serde(default = "defaults::verify_blocks")]
    pub verify_blocks: u32,
    pub diloco: DilocoFile,
    #[serde(default)]
    pub verification: VerificationFile,
    /// mean, trimmed-mean or centered-clip.
    #[serde(default = "defaults::aggregation")]
    pub aggregation: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DilocoFile {
    pub workers_per_round: u32,
    pub inner_steps: u32,
    pub rounds: u32,
    #[serde(default = "defaults::batch_size")]
    pub batch_size: u32,
    #[serde(default = "defaults::sequence_length")]
    pub sequence_length: u32,
    #[serde(default = "defaults::learning_rate")]
    pub learning_rate: f32,
    #[serde(default = "defaults::warmup_steps")]
    pub warmup_steps: u32,
    #[serde(default = "defaults::weight_decay")]
    pub weight_decay: f32,
    /// nesterov or average.
    #[serde(default = "defaults::outer")]
    pub outer: String,
    #[serde(default = "defaults::outer_learning_rate")]
    pub outer_learning_rate: f32,
    #[serde(default = "defaults::outer_momentum")]
    pub outer_momentum: f32,
    /// f32, f16, int8, q4, q2 or topk:<density>[+int8|+q4|+q2] (docs/protocol.md §2.8, §4.3).
    #[serde(default = "defaults::encoding")]
    pub encoding: String,
    /// adamw (the default) or muon (MuLoCo: Muon on the blocks' matrices; in compact checkpoints
    /// their momentum is held in bf16).
    #[serde(default)]
    pub inner_optimizer: Option<String>,
    /// The fewest inner steps a miner may commit (default: inner_steps, every round waits for
    /// H steps). Below H, a slow miner stops at its commit deadline after at least this many
    /// steps; its Δ weighs and its reward pays by its steps (docs/protocol.md §4.3 "Stragglers").
    #[serde(default)]
    pub min_inner_steps: Option<u32>,
    /// Streaming DiLoCo (default 1, plain DiLoCo): the parameters in this many fragments, round
    /// r synchronising fragment r mod F, so each fragment is synchronised every F rounds
    /// (F × inner_steps steps) and a round's Δ is 1/F of the model (docs/protocol.md §2.9).
    #[serde(default)]
    pub fragments: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerificationFile {
    pub checkpoint_interval: u32,
    pub segments_per_miner: u32,
    /// exact, tolerance (with max_distance) or groth16 (with zk_keys).
    pub mode: String,
    #[serde(default)]
    pub max_distance: f32,
    /// groth16: the directory `trellis zk setup --model MODEL --steps CHECKPOINT_INTERVAL` wrote.
    #[serde(default)]
    pub zk_keys: Option<PathBuf>,
    /// What a checkpoint holds: "compact" (the default: weights as a bf16 drift from the round's
    /// start and 8-bit moments, 4 bytes a parameter, what a checker downloads per segment) or
    /// "full" (f32 weights and moments, 12). Groth16 jobs have checkpoints of their own.
    #[serde(default)]
    pub checkpoint_state: Option<String>,
}

impl Default for VerificationFile {
    fn default() -> Self {
        Self {
            checkpoint_interval: 5,
            segments_per_miner: 1,
            mode: "exact".into(),
            max_distance: 0.0,
            zk_keys: None,
            checkpoint_state: None,
        }
    }
}

/// The blob hashes of a groth16 job's keys, once published.
#[derive(Debug, Clone, Copy)]
pub struct ZkKeyHashes {
    pub proving_key: Hash,
    pub verifying_key: Hash,
}

mod defaults {
    pub fn seed() -> u64 {
        1
    }
    pub fn min_miner_stake() -> u64 {
        1_000
    }
    pub fn commit_blocks() -> u32 {
        60
    }
    pub fn verify_blocks() -> u32 {
        40
    }
    pub fn aggregation() -> String {
        "mean".into()
    }
    pub fn batch_size() -> u32 {
        8
    }
    pub fn sequence_length() -> u32 {
        64
    }
    pub fn learning_rate() -> f32 {
        3e-3
    }
    pub fn warmup_steps() -> u32 {
        5
    }
    pub fn weight_decay() -> f32 {
        0.1
    }
    pub fn outer() -> String {
        "nesterov".into()
    }
    pub fn outer_learning_rate() -> f32 {
        0.7
    }
    pub fn outer_momentum() -> f32 {
        0.9
    }
    pub fn encoding() -> String {
        "f32".into()
    }
}

impl JobFile {
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading the job file {}", path.display()))?;
        let mut file: JobFile =
            toml::from_str(&text).with_context(|| format!("{} is not a valid job file", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        if file.dataset.is_relative() {
            file.dataset = base.join(&file.dataset);
        }
        if let Some(keys) = file.verification.zk_keys.as_mut().filter(|k| k.is_relative()) {
            *keys = base.join(&*keys);
        }
        Ok(file)
    }

    /// The chain's spec for this file, with the dataset's root and shard count (and for a
    /// groth16 job, its published keys).
    pub fn spec(
        &self,
        dataset_root: Hash,
        dataset_shards: u32,
        zk_keys: Option<ZkKeyHashes>,
    ) -> anyhow::Result<JobSpec> {
        let groth16 = self.verification.mode == "groth16";
        let model = if groth16 { zk_model_shape(&self.zk_model()?) } else { self.preset()?.config() };
        let d = &self.diloco;
        let outer_optimizer = match d.outer.as_str() {
            "nesterov" => OuterOptimizer::Nesterov,
            "average" | "avg" => OuterOptimizer::Average,
            other => bail!("diloco.outer '{other}': use nesterov or average"),
        };
        let encoding: DeltaEncoding = d.encoding.parse().map_err(|e| anyhow::anyhow!("diloco.encoding: {e}"))?;
        let v = &self.verification;
        let mode = match v.mode.as_str() {
            "exact" => VerificationMode::Exact,
            "tolerance" if v.max_distance > 0.0 => VerificationMode::Tolerance { max_distance: v.max_distance },
            "tolerance" => bail!("verification.mode tolerance needs verification.max_distance > 0"),
            "groth16" => {
                let keys = zk_keys.context("a groth16 job's keys must be published first (verification.zk_keys)")?;
                VerificationMode::Groth16 {
                    model: self.model.clone(),
                    proving_key: keys.proving_key,
                    verifying_key: keys.verifying_key,
                }
            }
            other => bail!("verification.mode '{other}': use exact, tolerance or groth16"),
        };
        let inner_optimizer = match d.inner_optimizer.as_deref() {
            None | Some("adamw") => InnerOptimizer::Adamw,
            Some("muon") if groth16 => {
                bail!("diloco.inner_optimizer muon: a groth16 job trains its zk model with its own rule")
            }
            Some("muon") => InnerOptimizer::Muon,
            Some(other) => bail!("diloco.inner_optimizer '{other}': use adamw or muon"),
        };
        let checkpoint_state = match (v.checkpoint_state.as_deref(), &mode) {
            (None | Some("full"), VerificationMode::Groth16 { .. }) => CheckpointState::Full,
            (Some(_), VerificationMode::Groth16 { .. }) => {
                bail!("verification.checkpoint_state: a groth16 job's checkpoints are its own (leave it out)")
            }
            (None | Some("compact"), _) => CheckpointState::Compact,
            (Some("full"), _) => CheckpointState::Full,
            (Some(other), _) => bail!("verification.checkpoint_state '{other}': use compact or full"),
        };
        let aggregation = match self.aggregation.as_str() {
            "mean" => AggregationRule::Mean,
            "trimmed-mean" => AggregationRule::TrimmedMean { trim: 1 },
            "centered-clip" => AggregationRule::CenteredClip { tau: 1.0, iterations: 3 },
            other => bail!("aggregation '{other}': use mean, trimmed-mean or centered-clip"),
        };
        Ok(JobSpec {
            name: self.name.clone(),
            model,
            init_seed: self.seed,
            dataset_root,
            dataset_shards,
            diloco: DilocoParams {
                workers_per_round: d.workers_per_round,
                inner_steps: d.inner_steps,
                batch_size: d.batch_size,
                sequence_length: d.sequence_length,
                learning_rate: d.learning_rate,
                beta1: 0.9,
                beta2: 0.95,
                weight_decay: d.weight_decay,
                grad_clip: 1.0,
                warmup_steps: d.warmup_steps,
                outer_optimizer,
                outer_learning_rate: d.outer_learning_rate,
                outer_momentum: d.outer_momentum,
                rounds: d.rounds,
                encoding,
                inner_optimizer,
                min_inner_steps: d.min_inner_steps.unwrap_or(d.inner_steps),
                fragments: d.fragments.unwrap_or(1),
            },
            aggregation,
            verification: VerificationParams {
                checkpoint_interval: v.checkpoint_interval,
                segments_per_miner: v.segments_per_miner,
                mode,
                checkpoint_state,
            },
            reward_per_round: Amount(self.reward_per_round),
            min_miner_stake: Amount(self.min_miner_stake),
            commit_blocks: self.commit_blocks,
            verify_blocks: self.verify_blocks,
        })
    }
}

/// Reads a job file, publishes its dataset (and a groth16 job's keys) into `store`, and returns
/// the spec and escrow.
pub fn prepare(path: &Path, store: &BlobStore) -> anyhow::Result<(JobSpec, u64)> {
    let file = JobFile::read(path)?;
    let zk_keys = file.publish_zk_keys(store)?;
    if zk_keys.is_none() {
        trellis_trainer::model::validate(&file.preset()?.config())?;
    }
    let dataset = crate::roles::jobdata::load_text_dataset(&file.dataset)?;
    dataset.check_fits(&file.dataset, file.diloco.sequence_length as usize)?;
    let manifest = crate::roles::jobdata::publish_dataset(store, &dataset)?;
    let spec = file.spec(manifest.root(), manifest.shards.len() as u32, zk_keys)?;
    trellis_contracts::validate_job_spec(&spec, &trellis_contracts::Params::default())
        .map_err(|reason| anyhow::anyhow!("job spec: {reason}"))?;
    trellis_verifier::groth16::ZkJob::of(&spec)?;
    if file.escrow < file.reward_per_round {
        bail!("escrow {} is less than one round's reward {}", file.escrow, file.reward_per_round);
    }
    Ok((spec, file.escrow))
}

impl JobFile {
    fn preset(&self) -> anyhow::Result<Preset> {
        self.model.parse().map_err(|e| anyhow::anyhow!("model: {e}"))
    }

    fn zk_model(&self) -> anyhow::Result<trellis_zk::ModelSpec> {
        self.model
            .parse()
            .map_err(|e| anyhow::anyhow!("model '{}' (a groth16 job trains a zk model, docs/zk.md): {e}", self.model))
    }

    /// For a groth16 job: reads the keys `trellis zk setup` wrote, checks that they are for
    /// this job's model, step count and batch shape, and publishes both as blobs.
    fn publish_zk_keys(&self, store: &BlobStore) -> anyhow::Result<Option<ZkKeyHashes>> {
        if self.verification.mode != "groth16" {
            if self.verification.zk_keys.is_some() {
                bail!("verification.zk_keys is only for verification.mode = \"groth16\"");
            }
            return Ok(None);
        }
        let model = self.zk_model()?;
        let dir = self.verification.zk_keys.as_ref().context(
            "a groth16 job needs verification.zk_keys: the directory `trellis zk setup --model MODEL --steps CHECKPOINT_INTERVAL --out DIR` wrote",
        )?;
        let proving_key = trellis_zk::io::read_proving_key(&dir.join(trellis_zk::io::PROVING_KEY_FILE))?;
        let verifying_key = trellis_zk::io::read_verifying_key(&dir.join(trellis_zk::io::VERIFYING_KEY_FILE))?;
        if verifying_key.spec() != &model || proving_key.spec() != &model {
            bail!(
                "the keys in {} are for the model {}, the job file says {}",
                dir.display(),
                verifying_key.spec(),
                model
            );
        }
        if verifying_key.steps() != self.verification.checkpoint_interval
            || proving_key.steps() != verifying_key.steps()
        {
            bail!(
                "the keys in {} prove {} steps, the job's checkpoint_interval is {}: run `trellis zk setup --steps {}`",
                dir.display(),
                verifying_key.steps(),
                self.verification.checkpoint_interval,
                self.verification.checkpoint_interval
            );
        }
        if proving_key.verifying_key().to_bytes() != verifying_key.to_bytes() {
            bail!("the proving and verifying keys in {} come from different setups", dir.display());
        }
        if self.diloco.batch_size as usize != model.batch() || self.diloco.sequence_length as usize != model.inputs() {
            bail!(
                "a groth16 job needs diloco.batch_size = {} (the model's batch) and diloco.sequence_length = {} (its inputs)",
                model.batch(),
                model.inputs()
            );
        }
        let proving_key = store.put_data(&proving_key.to_bytes())?.hash;
        let verifying_key = store.put_data(&verifying_key.to_bytes())?.hash;
        Ok(Some(ZkKeyHashes { proving_key, verifying_key }))
    }
}

/// The `model` field of a groth16 job's spec: the zk model's shape in the GPT fields (byte
/// features as a 256 vocabulary, its inputs as the context, hidden units or classes as the
/// width, weight layers as layers, one head). Informational: the zk model in the verification
/// mode is what is trained.
fn zk_model_shape(model: &trellis_zk::ModelSpec) -> trellis_proto::ModelConfig {
    let layers = model.layer_shapes();
    let width = layers.first().map_or(model.classes(), |(outputs, _)| *outputs);
    trellis_proto::ModelConfig {
        vocab_size: 256,
        context_length: model.inputs() as u32,
        width: width as u32,
        layers: layers.len() as u32,
        heads: 1,
    }
}

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Publish a job's dataset and submit the job (escrowing its reward).
    Submit {
        /// The job file (TOML; see docs/jobs.md).
        file: PathBuf,
        /// Home of the node whose blob store serves the dataset to miners [default: --home].
        #[arg(long)]
        blobs_home: Option<PathBuf>,
        #[command(flatten)]
        signer: SignerArgs,
    },
    /// A job's state and its current round.
    Status {
        /// The job's id.
        id: u64,
        #[command(flatten)]
        rpc: RpcArg,
    },
}

#[derive(Debug, Args)]
pub struct StakeArgs {
    /// validator or miner.
    #[arg(long, value_enum)]
    pub role: crate::rpc::client::RoleArg,
    /// How much to bond (taken from the signer's balance).
    #[arg(long)]
    pub amount: u64,
    #[command(flatten)]
    pub signer: SignerArgs,
}

pub fn job(command: JobCommand) -> anyhow::Result<()> {
    match command {
        JobCommand::Submit { file, blobs_home, signer } => {
            let home = blobs_home.or_else(|| signer.home.clone()).context(
                "say which node serves the dataset: --blobs-home DIR (a node home on this machine), or sign with --home",
            )?;
            let store = BlobStore::open(&Home::new(&home).data().join("blobs"))?;
            let (spec, escrow) = prepare(&file, &store)?;
            println!(
                "dataset {} published as {} shards in {}",
                spec.dataset_root,
                spec.dataset_shards,
                store.root().display()
            );
            crate::rpc::client::sign_and_submit(TxKind::SubmitJob { spec, escrow: Amount(escrow) }, &signer)
        }
        JobCommand::Status { id, rpc } => status(id, &rpc.rpc),
    }
}

pub fn stake(args: StakeArgs) -> anyhow::Result<()> {
    crate::rpc::client::sign_and_submit(
        TxKind::Bond { role: args.role.into(), amount: Amount(args.amount) },
        &args.signer,
    )
}

fn status(id: u64, url: &str) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let client = crate::rpc::client::client(url)?;
        let job = client.job(id).await.map_err(|e| explain(url, "job_get", e))?;
        let current = job.current_round;
        // The summary exists for every round, running or pruned long after it settled.
        let round = client.round_summary(id, current).await.map_err(|e| explain(url, "job_getRoundSummary", e))?;
        println!("job {id} '{}': {}", job.spec.name, job.status.name());
        println!(
            "  rounds settled {} of {}, escrow left {}, miners {}",
            job.rounds_settled,
            job.spec.diloco.rounds,
            job.escrow,
            job.miners.len()
        );
        println!("  model {}", job.model_hash);
        println!(
            "  round {current}: {} (commits {}, verdicts {}, accepted {})",
            round.phase.name(),
            round.commits,
            round.verdicts,
            round.accepted.len(),
        );
        Ok(())
    })
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The job whose latest committed global model to export.
    #[arg(long)]
    pub job: u64,
    /// Where to write the model (safetensors).
    #[arg(long)]
    pub out: PathBuf,
    /// A node home on this machine whose blob peers to fetch from (its own blob exchange too).
    #[arg(long)]
    pub home: Option<PathBuf>,
    /// Blob exchange addresses to fetch from (multiaddrs), besides those of --home.
    #[arg(long = "peer")]
    pub peers: Vec<String>,
    #[command(flatten)]
    pub rpc: RpcArg,
}

/// Fetches the job's latest committed model, checks it against the chain, writes safetensors.
/// Returns the model hash.
pub async fn export_model(job: u64, out: &Path, peers: &[String], rpc: &str) -> anyhow::Result<Hash> {
    let client = crate::rpc::client::client(rpc)?;
    let record = client.job(job).await.map_err(|e| explain(rpc, "job_get", e))?;
    let model_hash = record.model_hash;
    if model_hash == Hash::ZERO {
        bail!("job {job} has not committed a model yet (no round settled); try again later");
    }
    let spec: JobSpec = record.spec;
    if peers.is_empty() {
        bail!("no blob peers to fetch from: give --home of a node on this machine or --peer MULTIADDR");
    }
    let scratch = tempfile_dir()?;
    let store = BlobStore::open(&scratch)?;
    let seed: [u8; 32] = rand_seed();
    let (net, _) = crate::p2p::exchange::start(seed, "/ip4/127.0.0.1/tcp/0", peers, store).await?;
    let key = BlobKey::new(BlobKind::Data, model_hash);
    let limit = crate::roles::jobdata::BlobLimits::of(&spec)?.weights;
    let bytes = net.fetch_until(key, tokio::time::Instant::now() + Duration::from_secs(30), limit).await?;
    // `fetch` checked the bytes against the hash; check the shape against the spec.
    let weights = trellis_protocol::model::weights_from_bytes(&bytes)?;
    if let Some(zk) = trellis_verifier::groth16::ZkJob::of(&spec)? {
        // A groth16 job's model: trellis-zk weights (what `trellis zk prove --weights` reads).
        let fixed = zk.start_weights(&weights)?;
        trellis_zk::io::write_weights(out, &fixed)?;
        let _ = std::fs::remove_dir_all(&scratch);
        return Ok(model_hash);
    }
    let mut model = trellis_trainer::model::Gpt::new(&spec.model, spec.init_seed, tch::Device::Cpu)?;
    if model.numel() != weights.len() {
        bail!("model blob has {} weights, the job's model {}", weights.len(), model.numel());
    }
    model.set_flat_weights(&weights);
    trellis_trainer::model_io::save(&model, out)?;
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(model_hash)
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("trellis-export-{}-{}", std::process::id(), rand_seed()[0]));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn rand_seed() -> [u8; 32] {
    trellis_proto::Keypair::generate().seed()
}

/// The peers a node home knows: its own peer network address and its bootnodes.
pub fn home_blob_peers(home: &Path) -> anyhow::Result<Vec<String>> {
    let config = Home::new(home).load_config()?;
    let mut peers = config.p2p.bootnodes.clone();
    if !config.p2p.peer_listen.is_empty() {
        peers.insert(0, config.p2p.peer_listen.clone());
    }
    Ok(peers)
}

pub fn export(args: ExportArgs) -> anyhow::Result<()> {
    let mut peers = args.peers.clone();
    if let Some(home) = &args.home {
        peers.extend(home_blob_peers(home)?);
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let hash = rt.block_on(export_model(args.job, &args.out, &peers, &args.rpc.rpc))?;
    println!("wrote {} (model {hash}, checked against the chain)", args.out.display());
    Ok(())
}

#[cfg(test)]
mod encoding_tests {
    use super::*;

    fn job_file(encoding: &str) -> JobFile {
        let text = format!(
            "name = \"t\"\nmodel = \"nano\"\ndataset = \"d\"\nseed = 1\nescrow = 30001\nreward_per_round = 10000\n\
             min_miner_stake = 1000\n[diloco]\nworkers_per_round = 2\ninner_steps = 10\nrounds = 1\nbatch_size = 2\n\
             sequence_length = 16\nlearning_rate = 0.003\nencoding = \"{encoding}\"\n[verification]\n\
             checkpoint_interval = 5\nsegments_per_miner = 1\nmode = \"exact\"\n"
        );
        toml::from_str(&text).expect("a job file")
    }

    #[test]
    fn every_encoding_is_named_in_job_files_and_others_are_refused_with_the_list() {
        for encoding in DeltaEncoding::ALL {
            let spec = job_file(&encoding.name()).spec(Hash([1; 32]), 4, None).expect("a valid spec");
            assert_eq!(spec.diloco.encoding, encoding);
        }
        for bad in ["q3", "topk:0", "topk:0.03+f16"] {
            let error = job_file(bad).spec(Hash([1; 32]), 4, None).unwrap_err().to_string();
            assert!(error.contains(bad) && error.contains("q4, q2, or topk:<density>"), "{error}");
        }
    }

    #[test]
    fn a_muon_job_takes_compact_checkpoints_by_default_and_full_ones_when_asked() {
        let file = |extra: &str| -> JobFile {
            let text = format!(
                "name = \"t\"\nmodel = \"nano\"\ndataset = \"d\"\nescrow = 30001\nreward_per_round = 10000\n\
                 [diloco]\nworkers_per_round = 2\ninner_steps = 10\nrounds = 1\ninner_optimizer = \"muon\"\n\
                 [verification]\ncheckpoint_interval = 5\nsegments_per_miner = 1\nmode = \"exact\"\n{extra}"
            );
            toml::from_str(&text).expect("a job file")
        };
        let spec = file("").spec(Hash([1; 32]), 4, None).expect("a valid spec");
        assert_eq!(spec.diloco.inner_optimizer, InnerOptimizer::Muon);
        assert_eq!(spec.verification.checkpoint_state, CheckpointState::Compact);
        let full = file("checkpoint_state = \"full\"\n").spec(Hash([1; 32]), 4, None).expect("a valid spec");
        assert_eq!(full.verification.checkpoint_state, CheckpointState::Full);
        let mut unknown = file("");
        unknown.diloco.inner_optimizer = Some("lion".into());
        let error = unknown.spec(Hash([1; 32]), 4, None).unwrap_err().to_string();
        assert!(error.contains("lion") && error.contains("adamw or muon"), "{error}");
        assert_eq!(job_file("f32").spec(Hash([1; 32]), 4, None).unwrap().diloco.inner_optimizer, InnerOptimizer::Adamw);
    }

    #[test]
    fn min_inner_steps_defaults_to_the_whole_round() {
        let mut file = job_file("f32");
        let whole = file.spec(Hash([1; 32]), 4, None).unwrap();
        assert_eq!(whole.diloco.min_inner_steps, whole.diloco.inner_steps, "by default a round waits for H steps");
        file.diloco.min_inner_steps = Some(3);
        assert_eq!(file.spec(Hash([1; 32]), 4, None).unwrap().diloco.min_inner_steps, 3);
    }

    #[test]
    fn a_job_is_plain_diloco_unless_its_file_asks_for_fragments() {
        let mut file = job_file("f32");
        assert_eq!(file.spec(Hash([1; 32]), 4, None).unwrap().diloco.fragments, 1);
        file.diloco.fragments = Some(4);
        assert_eq!(file.spec(Hash([1; 32]), 4, None).unwrap().diloco.fragments, 4);
    }
}
