//! A job's artefacts as blobs, fetched and published: the dataset (as shards), the global model
//! θ_r and the outer momentum (flat f32 in `trellis_protocol::model`'s layout).
//!
//! The training rules a job's spec fixes (inner optimizer, batch schedule, a round's start
//! state) are `trellis_trainer::job`; a groth16 job's are `trellis_verifier::groth16`.

use std::time::Duration;

use anyhow::{bail, Context as _};
use futures::StreamExt as _;
use trellis_contracts::state::Job;
use trellis_proto::Hash;
use trellis_protocol::model::weights_from_bytes;
use trellis_trainer::data::{Dataset, DEFAULT_SHARD_BYTES};

use crate::p2p::exchange::BlobNet;
use crate::storage::blobs::{BlobKey, BlobKind, BlobStore, DatasetManifest, MAX_DATASET_MANIFEST_BYTES};

/// How long a role waits for a job's blobs to appear on some peer.
pub const FETCH_PATIENCE: Duration = Duration::from_secs(60);

/// The most bytes a dataset shard may have (the default is 64 KiB; a job submitter's manifest
/// says what it uses).
pub const MAX_SHARD_BYTES: u64 = 256 * 1024 * 1024;
/// The most bytes of a dataset's training shards in all: every miner and checker holds them in
/// memory, so a manifest listing more (a million copies of one large shard) would make every
/// node that fetches it run out of memory.
pub const MAX_DATASET_BYTES: u64 = 4 << 30;
/// The most bytes of a dataset's validation split (read whole, for the losses people see).
pub const MAX_VALIDATION_BYTES: u64 = 1024 * 1024 * 1024;
/// The most bytes of a groth16 job's proving or verifying key (read whole to parse).
pub const MAX_ZK_KEY_BYTES: u64 = 1024 * 1024 * 1024;
/// The most bytes of a groth16 proof blob (a proof is 128 bytes).
pub const MAX_PROOF_BYTES: u64 = 1024;
/// Room for headers beside a job's per-parameter data (checkpoint tensor names and shapes, int8
/// scales).
const HEADER_ROOM: u64 = 1024 * 1024;

/// The most bytes each of a job's blobs may take, from its spec. Roles fetch, and read into
/// memory, no more than what they can use, so nobody — a miner committing to a huge blob, a peer
/// claiming one — can make them download or hold more than the job needs
/// (`BlobNet::fetch`'s `limit`). An honest blob is always within its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLimits {
    /// Flat f32 weights: the global model θ_r and the outer momentum (4 bytes a parameter).
    pub weights: u64,
    /// A trail checkpoint: weights and both AdamW moments (12 bytes a parameter, 4 compact; a
    /// groth16 checkpoint is smaller), a header.
    pub checkpoint: u64,
    /// An encoded Δ (f32 at most, 4 bytes a parameter) or an int8 residual (f32), a header.
    pub delta: u64,
}

impl BlobLimits {
    pub fn of(spec: &trellis_proto::JobSpec) -> anyhow::Result<Self> {
        let parameters = match trellis_verifier::groth16::ZkJob::of(spec)? {
            Some(zk) => zk.model.num_parameters() as u64,
            None => trellis_trainer::model::parameter_count(&spec.model),
        };
        Ok(Self {
            weights: parameters.saturating_mul(4),
            checkpoint: parameters
                .saturating_mul(match trellis_verifier::groth16::ZkJob::of(spec)? {
                    Some(_) => 12,
                    None => spec.verification.checkpoint_state.bytes_per_parameter(),
                })
                .saturating_add(HEADER_ROOM),
            delta: parameters.saturating_mul(4).saturating_add(HEADER_ROOM),
        })
    }
}

/// Stores a dataset's shards, validation split and manifest; returns the manifest (whose root
/// is the job's `dataset_root`).
pub fn publish_dataset(store: &BlobStore, dataset: &Dataset) -> anyhow::Result<DatasetManifest> {
    check_dataset_size(dataset.shard_count(), dataset.shard_bytes() as u64)?;
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

/// Refuses a dataset whose training shards add up to more than [`MAX_DATASET_BYTES`].
pub fn check_dataset_size(shards: usize, shard_bytes: u64) -> anyhow::Result<()> {
    let total = (shards as u64).saturating_mul(shard_bytes);
    if total > MAX_DATASET_BYTES {
        bail!(
            "{shards} shards of {shard_bytes} bytes are {total} bytes in all, over the limit of {MAX_DATASET_BYTES} \
             (every miner and checker holds a dataset in memory)"
        );
    }
    Ok(())
}

/// Loads a dataset from text the way `trellis job submit` publishes it.
pub fn load_text_dataset(path: &std::path::Path) -> anyhow::Result<Dataset> {
    let dataset = Dataset::load(path)?;
    debug_assert_eq!(dataset.shard_bytes(), DEFAULT_SHARD_BYTES);
    Ok(dataset)
}

/// Fetches a job's dataset by its root, checking every shard.
/// Shards of a dataset fetched at once (the exchange runs a few fetches at a time in all).
const SHARDS_AT_ONCE: usize = 4;

pub async fn fetch_dataset(net: &BlobNet, root: Hash) -> anyhow::Result<Dataset> {
    let deadline = tokio::time::Instant::now() + FETCH_PATIENCE;
    let manifest_bytes =
        net.fetch_until(BlobKey::new(BlobKind::Dataset, root), deadline, MAX_DATASET_MANIFEST_BYTES).await?;
    let manifest = DatasetManifest::parse(&manifest_bytes).context("dataset manifest")?;
    if manifest.shard_bytes == 0 || manifest.shards.is_empty() {
        bail!("dataset {root} has an empty manifest");
    }
    if manifest.shard_bytes > MAX_SHARD_BYTES {
        bail!("dataset {root} has shards of {} bytes, over the limit of {MAX_SHARD_BYTES}", manifest.shard_bytes);
    }
    check_dataset_size(manifest.shards.len(), manifest.shard_bytes).with_context(|| format!("dataset {root}"))?;
    // Several shards at once: one after another, each costs its round trips.
    let fetches: Vec<_> = manifest
        .shards
        .iter()
        .map(|shard| {
            let (net, key, limit) = (net.clone(), BlobKey::new(BlobKind::Shard, *shard), manifest.shard_bytes);
            async move { net.fetch_until(key, deadline, limit).await }
        })
        .collect();
    let fetched: Vec<Vec<u8>> = futures::stream::iter(fetches)
        .buffered(SHARDS_AT_ONCE)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let mut train = Vec::new();
    for (index, bytes) in fetched.into_iter().enumerate() {
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
    let validation =
        net.fetch_until(BlobKey::new(BlobKind::Data, manifest.validation), deadline, MAX_VALIDATION_BYTES).await?;
    Ok(Dataset::from_parts(train, validation, manifest.shard_bytes as usize))
}

/// The global model θ_r of a job: its initialisation before round 0 commits, else the committed
/// model blob.
pub async fn global_weights(net: &BlobNet, job: &Job) -> anyhow::Result<Vec<f32>> {
    if job.model_hash == Hash::ZERO {
        if let Some(zk) = trellis_verifier::groth16::ZkJob::of(&job.spec)? {
            return Ok(trellis_zk::job::initial_weights(&zk.model, job.spec.init_seed));
        }
        return Ok(trellis_trainer::job::initial_weights(&job.spec)?);
    }
    let deadline = tokio::time::Instant::now() + FETCH_PATIENCE;
    let limit = BlobLimits::of(&job.spec)?.weights;
    let bytes = net.fetch_until(BlobKey::new(BlobKind::Data, job.model_hash), deadline, limit).await?;
    Ok(weights_from_bytes(&bytes)?)
}

/// The outer momentum of a job after its last committed round (zeros before any).
pub async fn momentum(net: &BlobNet, job: &Job, parameters: usize) -> anyhow::Result<Vec<f32>> {
    if job.momentum_hash == Hash::ZERO {
        return Ok(vec![0.0; parameters]);
    }
    let deadline = tokio::time::Instant::now() + FETCH_PATIENCE;
    let bytes =
        net.fetch_until(BlobKey::new(BlobKind::Data, job.momentum_hash), deadline, 4 * parameters as u64).await?;
    let momentum = weights_from_bytes(&bytes)?;
    if momentum.len() != parameters {
        bail!("momentum blob has {} values, the model {}", momentum.len(), parameters);
    }
    Ok(momentum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dataset_may_hold_up_to_the_limit_and_not_a_byte_more() {
        let shard = 64 * 1024;
        let at_limit = (MAX_DATASET_BYTES / shard) as usize;
        assert!(check_dataset_size(at_limit, shard).is_ok());
        let error = check_dataset_size(at_limit + 1, shard).unwrap_err().to_string();
        assert!(error.contains("over the limit"), "{error}");
        assert!(check_dataset_size(usize::MAX, u64::MAX).is_err(), "no overflow");
    }

    /// A job submitter's manifest listing one shard over and over (4 GiB and one shard more, in a
    /// manifest of 4 MiB) is refused before a shard is fetched: every miner would otherwise read
    /// it all into memory and abort.
    #[tokio::test]
    async fn a_manifest_listing_more_than_a_node_can_hold_is_refused_before_any_shard_is_fetched() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let shard = vec![7u8; 64 * 1024];
        let shard_hash = trellis_proto::merkle::leaf_hash(&shard);
        store.put(&BlobKey::new(BlobKind::Shard, shard_hash), &shard).unwrap();
        let copies = (MAX_DATASET_BYTES / shard.len() as u64) as usize + 1;
        let validation = store.put_data(b"validation text").unwrap();
        let manifest = DatasetManifest {
            shard_bytes: shard.len() as u64,
            shards: vec![shard_hash; copies],
            validation: validation.hash,
        };
        let root = manifest.root();
        store.put(&BlobKey::new(BlobKind::Dataset, root), &manifest.to_bytes()).unwrap();
        let (net, _) = crate::p2p::exchange::start([3; 32], "/ip4/127.0.0.1/tcp/0", &[], store).await.unwrap();
        let error = format!("{:#}", fetch_dataset(&net, root).await.unwrap_err());
        assert!(error.contains("over the limit") && error.contains(&root.to_string()), "{error}");
    }
}
