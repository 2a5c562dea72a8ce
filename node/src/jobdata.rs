//! What a job's artefacts are as blobs, and the on-chain training rules every role shares:
//! the dataset (published as shards), the global model θ_r and outer momentum (flat f32 in
//! `trellis_protocol::model`'s layout), the inner optimizer and batch schedule a job's spec
//! fixes, and the canonical state a round's training starts from.
//!
//! The start of every round is fixed so that checkers can check it: the global weights θ_r with
//! zero AdamW moments and the step counter at `round × H` (so the learning-rate schedule runs
//! over the whole job, `docs/protocol.md`). Its checkpoint hash is a pure function of θ_r.

use std::time::Duration;

use anyhow::{bail, Context as _};
use tch::Device;
use trellis_contracts::state::Job;
use trellis_proto::{Hash, JobSpec};
use trellis_protocol::model::weights_from_bytes;
use trellis_trainer::checkpoint::{self, checkpoint_hash};
use trellis_trainer::data::{BatchSchedule, Dataset, DEFAULT_SHARD_BYTES};
use trellis_trainer::model::Gpt;
use trellis_trainer::optim::{AdamW, AdamWConfig};

use crate::blobs::{BlobKey, BlobKind, BlobStore, DatasetManifest};
use crate::exchange::BlobNet;

/// How long a role waits for a job's blobs to appear on some peer.
pub const FETCH_PATIENCE: Duration = Duration::from_secs(60);

/// Stores a dataset's shards, validation split and manifest; returns the manifest (whose root
/// is the job's `dataset_root`).
pub fn publish_dataset(store: &BlobStore, dataset: &Dataset) -> anyhow::Result<DatasetManifest> {
    let mut shards = Vec::with_capacity(dataset.shard_count());
    for index in 0..dataset.shard_count() {
        let bytes = dataset.shard(index);
        let key = BlobKey::new(BlobKind::Shard, trellis_proto::merkle::leaf_hash(bytes));
        store.put(&key, bytes)?;
        shards.push(key.hash);
    }
    let validation = store.put_data(dataset.validation())?;
    let manifest = DatasetManifest { shard_bytes: dataset.shard_bytes() as u64, shards, validation: validation.hash };
    store.put(&BlobKey::new(BlobKind::Dataset, manifest.root()), &manifest.to_bytes())?;
    debug_assert_eq!(manifest.root(), dataset.root());
    Ok(manifest)
}

/// Loads a dataset from text the way `trellis job submit` publishes it.
pub fn load_text_dataset(path: &std::path::Path) -> anyhow::Result<Dataset> {
    let dataset = Dataset::load(path)?;
    debug_assert_eq!(dataset.shard_bytes(), DEFAULT_SHARD_BYTES);
    Ok(dataset)
}

/// Fetches a job's dataset by its root, checking every shard.
pub async fn fetch_dataset(net: &BlobNet, root: Hash) -> anyhow::Result<Dataset> {
    let deadline = tokio::time::Instant::now() + FETCH_PATIENCE;
    let manifest_bytes = net.fetch_until(BlobKey::new(BlobKind::Dataset, root), deadline).await?;
    let manifest = DatasetManifest::parse(&manifest_bytes).context("dataset manifest")?;
    if manifest.shard_bytes == 0 || manifest.shards.is_empty() {
        bail!("dataset {root} has an empty manifest");
    }
    let mut train = Vec::new();
    for (index, shard) in manifest.shards.iter().enumerate() {
        let bytes = net.fetch_until(BlobKey::new(BlobKind::Shard, *shard), deadline).await?;
        let last = index + 1 == manifest.shards.len();
        if (!last && bytes.len() as u64 != manifest.shard_bytes) || bytes.len() as u64 > manifest.shard_bytes {
            bail!(
                "dataset {root}: shard {index} has {} bytes, the manifest says {}",
                bytes.len(),
                manifest.shard_bytes
            );
        }
        train.extend_from_slice(&bytes);
    }
    let validation = net.fetch_until(BlobKey::new(BlobKind::Data, manifest.validation), deadline).await?;
    Ok(Dataset::from_parts(train, validation, manifest.shard_bytes as usize))
}

/// The inner optimizer a job fixes: its schedule spans all rounds.
pub fn adamw_config(spec: &JobSpec) -> AdamWConfig {
    let d = &spec.diloco;
    let total = u64::from(d.inner_steps) * u64::from(d.rounds);
    let mut config = AdamWConfig::with_schedule(f64::from(d.learning_rate), u64::from(d.warmup_steps), total);
    config.beta1 = f64::from(d.beta1);
    config.beta2 = f64::from(d.beta2);
    config.weight_decay = f64::from(d.weight_decay);
    config.grad_clip = f64::from(d.grad_clip);
    config
}

/// The batch schedule of a job: seeded by its init seed, one slot per worker of a round.
pub fn schedule(spec: &JobSpec) -> BatchSchedule {
    BatchSchedule {
        seed: spec.init_seed,
        workers: spec.diloco.workers_per_round as usize,
        batch_size: spec.diloco.batch_size as usize,
        sequence_length: spec.diloco.sequence_length as usize,
    }
}

/// The optimizer step a round starts at (`trellis_protocol::trail::round_start_step`).
pub fn round_start_step(spec: &JobSpec, round: u32) -> u64 {
    trellis_protocol::trail::round_start_step(round, spec.diloco.inner_steps)
}

/// The global model θ_r of a job: its initialisation before round 0 commits, else the committed
/// model blob.
pub async fn global_weights(net: &BlobNet, job: &Job) -> anyhow::Result<Vec<f32>> {
    if job.model_hash == Hash::ZERO {
        if let Some(zk) = crate::zkjob::ZkJob::of(&job.spec)? {
            return Ok(crate::zkjob::initial_weights(&zk.model, job.spec.init_seed));
        }
        let model = Gpt::new(&job.spec.model, job.spec.init_seed, Device::Cpu)?;
        return Ok(model.flat_weights());
    }
    let deadline = tokio::time::Instant::now() + FETCH_PATIENCE;
    let bytes = net.fetch_until(BlobKey::new(BlobKind::Data, job.model_hash), deadline).await?;
    Ok(weights_from_bytes(&bytes)?)
}

/// The outer momentum of a job after its last committed round (zeros before any).
pub async fn momentum(net: &BlobNet, job: &Job, parameters: usize) -> anyhow::Result<Vec<f32>> {
    if job.momentum_hash == Hash::ZERO {
        return Ok(vec![0.0; parameters]);
    }
    let deadline = tokio::time::Instant::now() + FETCH_PATIENCE;
    let bytes = net.fetch_until(BlobKey::new(BlobKind::Data, job.momentum_hash), deadline).await?;
    let momentum = weights_from_bytes(&bytes)?;
    if momentum.len() != parameters {
        bail!("momentum blob has {} values, the model {}", momentum.len(), parameters);
    }
    Ok(momentum)
}

/// A model and optimizer in the canonical start state of `round`.
pub fn start_state(spec: &JobSpec, round: u32, global: &[f32], device: Device) -> anyhow::Result<(Gpt, AdamW)> {
    let mut model = Gpt::new(&spec.model, spec.init_seed, device)?;
    if model.numel() != global.len() {
        bail!("the global model has {} weights, the job's model {}", global.len(), model.numel());
    }
    model.set_flat_weights(global);
    let mut optimizer = AdamW::new(adamw_config(spec), model.parameters());
    optimizer.step = round_start_step(spec, round);
    Ok((model, optimizer))
}

/// The checkpoint hash every honest trail of `round` starts with (the start state as a trail
/// checkpoint records it: subnormal values flushed to zero).
pub fn start_checkpoint_hash(spec: &JobSpec, round: u32, global: &[f32]) -> anyhow::Result<Hash> {
    let (model, optimizer) = start_state(spec, round, global, Device::Cpu)?;
    Ok(checkpoint_hash(&checkpoint::capture(&model, &optimizer)))
}
