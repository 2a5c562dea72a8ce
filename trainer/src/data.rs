//! Datasets as byte tokens, cut into hashed shards, and the deterministic batch schedule.
//!
//! A text file, or every file under a directory (sorted by path, joined by a newline), becomes
//! a byte string: with the byte-level vocabulary every byte is one token. The last 10% of bytes
//! are the validation split (as is customary for Shakespeare). The training bytes are cut into
//! shards of [`DEFAULT_SHARD_BYTES`]; each shard's hash is a Merkle leaf, and the dataset root is
//! the Merkle root over the shards, in order.
//!
//! The batch schedule is a pure function of (seed, round, worker, step): see
//! [`BatchSchedule`] and `docs/protocol.md`.

use std::path::{Path, PathBuf};

use thiserror::Error;
use trellis_proto::blobwire::data_hash;
use trellis_proto::merkle::{leaf_hash, MerkleTree};
use trellis_proto::Hash;

/// Default shard size: 64 KiB of training bytes.
pub const DEFAULT_SHARD_BYTES: usize = 64 * 1024;
/// Fraction of bytes, at the end, held out for validation.
pub const VALIDATION_FRACTION: f64 = 0.1;
/// Largest dataset accepted, in bytes.
pub const MAX_DATASET_BYTES: u64 = 4 * 1024 * 1024 * 1024;

#[derive(Debug, Error)]
pub enum DataError {
    #[error("dataset {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("dataset {0} does not exist")]
    Missing(PathBuf),
    #[error("dataset {0} is empty")]
    Empty(PathBuf),
    #[error(
        "dataset {path} has {bytes} bytes; at least {needed} are needed for sequences of {sequence_length} tokens"
    )]
    TooSmall { path: PathBuf, bytes: usize, needed: usize, sequence_length: usize },
    #[error("dataset {path} is larger than the limit of {max} bytes")]
    TooLarge { path: PathBuf, max: u64 },
    #[error("{workers} workers need at least {workers} shards, the dataset has {shards}; use fewer workers or a larger dataset")]
    TooFewShards { workers: usize, shards: usize },
}

/// A dataset in memory: training shards and a validation split.
#[derive(Debug, Clone)]
pub struct Dataset {
    train: Vec<u8>,
    validation: Vec<u8>,
    shard_bytes: usize,
}

impl Dataset {
    /// Reads a file, or every regular file under a directory in path order.
    pub fn load(path: &Path) -> Result<Self, DataError> {
        let bytes = read_text_source(path)?;
        if bytes.is_empty() {
            return Err(DataError::Empty(path.to_path_buf()));
        }
        Ok(Self::from_bytes(bytes, DEFAULT_SHARD_BYTES))
    }

    /// Splits `bytes` into training and validation, with shards of `shard_bytes`.
    pub fn from_bytes(mut bytes: Vec<u8>, shard_bytes: usize) -> Self {
        assert!(shard_bytes > 0, "shards must hold at least one byte");
        let validation_len = ((bytes.len() as f64) * VALIDATION_FRACTION).round() as usize;
        let validation = bytes.split_off(bytes.len() - validation_len);
        Self { train: bytes, validation, shard_bytes }
    }

    /// A dataset from its parts, as published on chain (training bytes in shard order, the
    /// validation split, and the shard size).
    pub fn from_parts(train: Vec<u8>, validation: Vec<u8>, shard_bytes: usize) -> Self {
        assert!(shard_bytes > 0, "shards must hold at least one byte");
        Self { train, validation, shard_bytes }
    }

    /// Fails unless both splits and a full shard hold a sequence of `sequence_length` tokens
    /// plus its one-token-shifted target.
    pub fn check_fits(&self, path: &Path, sequence_length: usize) -> Result<(), DataError> {
        let needed = sequence_length + 1;
        if self.train.len() < needed || self.validation.len() < needed || self.shard_bytes < needed {
            return Err(DataError::TooSmall {
                path: path.to_path_buf(),
                bytes: self.train.len() + self.validation.len(),
                needed: (needed as f64 / VALIDATION_FRACTION).ceil() as usize,
                sequence_length,
            });
        }
        Ok(())
    }

    pub fn train(&self) -> &[u8] {
        &self.train
    }

    pub fn validation(&self) -> &[u8] {
        &self.validation
    }

    pub fn shard_bytes(&self) -> usize {
        self.shard_bytes
    }

    pub fn shard_count(&self) -> usize {
        self.train.len().div_ceil(self.shard_bytes).max(1)
    }

    /// The bytes of training shard `index`.
    pub fn shard(&self, index: usize) -> &[u8] {
        let start = index * self.shard_bytes;
        let end = (start + self.shard_bytes).min(self.train.len());
        &self.train[start..end]
    }

    /// Hashes of the training shards, in order (Merkle leaves).
    pub fn shard_hashes(&self) -> Vec<Hash> {
        (0..self.shard_count()).map(|i| leaf_hash(self.shard(i))).collect()
    }

    /// The dataset root ([`trellis_proto::blobwire::dataset_root`]): the Merkle root over the
    /// shards, bound to the shard size and the validation split.
    pub fn root(&self) -> Hash {
        let shards = MerkleTree::from_leaf_hashes(self.shard_hashes()).root();
        trellis_proto::blobwire::dataset_root(shards, self.shard_bytes as u64, data_hash(&self.validation))
    }
}

/// A Trellis checkout's own text, relative to its root: its docs and the sources of its crates,
/// in this order. The devnet's demo job trains on it when no dataset is given, and the tests use
/// it, since a fresh clone holds nothing else to train on.
pub const REPOSITORY_TEXT: [&str; 7] =
    ["docs", "proto/src", "contracts/src", "consensus/src", "trainer/src", "verifier/src", "node/src"];

/// The bytes of [`REPOSITORY_TEXT`] under the checkout at `repo`, each part read as
/// [`Dataset::load`] reads a path.
pub fn repository_text(repo: &Path) -> Result<Vec<u8>, DataError> {
    let mut out = Vec::new();
    for part in REPOSITORY_TEXT {
        out.extend(read_text_source(&repo.join(part))?);
    }
    Ok(out)
}

fn read_text_source(path: &Path) -> Result<Vec<u8>, DataError> {
    let io = |source| DataError::Io { path: path.to_path_buf(), source };
    if !path.exists() {
        return Err(DataError::Missing(path.to_path_buf()));
    }
    if path.is_file() {
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > MAX_DATASET_BYTES {
            return Err(DataError::TooLarge { path: path.to_path_buf(), max: MAX_DATASET_BYTES });
        }
        return std::fs::read(path).map_err(io);
    }
    let mut files = Vec::new();
    collect_files(path, &mut files).map_err(io)?;
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let bytes = std::fs::read(&file).map_err(|source| DataError::Io { path: file.clone(), source })?;
        out.extend_from_slice(&bytes);
        out.push(b'\n');
        if out.len() as u64 > MAX_DATASET_BYTES {
            return Err(DataError::TooLarge { path: path.to_path_buf(), max: MAX_DATASET_BYTES });
        }
    }
    Ok(out)
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            collect_files(&entry.path(), out)?;
        } else if kind.is_file() {
            out.push(entry.path());
        }
    }
    Ok(())
}

/// The counter-based generator behind every random choice in training
/// ([`trellis_proto::hash::draw`] with the job seed as the seed bytes).
pub fn draw(purpose: &str, seed: u64, counters: &[u64]) -> u64 {
    trellis_proto::hash::draw(purpose, &seed.to_le_bytes(), counters)
}

/// Which shards each worker trains on in a round, and where every sequence of every step starts.
///
/// - Shard assignment: the shards are permuted (Fisher-Yates with `draw("shards", seed,
///   [round, i])`), and worker `w` of `K` gets the permuted shards at positions `w, w+K, …`.
///   Workers of a round therefore train on disjoint shards, so two workers never draw the same
///   batch in a round.
/// - Sequence `b` of step `s`: shard `j = draw("shard", seed, [round, w, s, b]) mod |shards(w)|`,
///   start `o = draw("offset", seed, [round, w, s, b]) mod (len(shard j) − T)`; the input is
///   bytes `o..o+T` of that shard and the target is `o+1..o+T+1`.
#[derive(Debug, Clone)]
pub struct BatchSchedule {
    pub seed: u64,
    pub workers: usize,
    pub batch_size: usize,
    pub sequence_length: usize,
}

impl BatchSchedule {
    /// The shards worker `worker` trains on in `round`, in order.
    pub fn shards_of(&self, dataset: &Dataset, round: u64, worker: usize) -> Result<Vec<usize>, DataError> {
        let count = dataset.shard_count();
        if count < self.workers {
            return Err(DataError::TooFewShards { workers: self.workers, shards: count });
        }
        let mut order: Vec<usize> = (0..count).collect();
        for i in (1..count).rev() {
            let j = (draw("shards", self.seed, &[round, i as u64]) % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
        // A shard too short for one sequence (only ever the last) cannot be drawn from.
        let usable = |&shard: &usize| dataset.shard(shard).len() > self.sequence_length;
        let shards: Vec<usize> = order.into_iter().skip(worker).step_by(self.workers).filter(usable).collect();
        if shards.is_empty() {
            return Err(DataError::TooFewShards { workers: self.workers, shards: count });
        }
        Ok(shards)
    }

    /// The (input, target) token rows of one step, each `batch_size × sequence_length` long.
    pub fn batch(
        &self,
        dataset: &Dataset,
        shards: &[usize],
        round: u64,
        worker: usize,
        step: u64,
    ) -> (Vec<i64>, Vec<i64>) {
        assert!(!shards.is_empty(), "a worker needs at least one usable shard");
        let t = self.sequence_length;
        let mut inputs = Vec::with_capacity(self.batch_size * t);
        let mut targets = Vec::with_capacity(self.batch_size * t);
        for row in 0..self.batch_size as u64 {
            let counters = [round, worker as u64, step, row];
            let shard = shards[(draw("shard", self.seed, &counters) % shards.len() as u64) as usize];
            let bytes = dataset.shard(shard);
            let start = (draw("offset", self.seed, &counters) % (bytes.len() - t) as u64) as usize;
            inputs.extend(bytes[start..start + t].iter().map(|&b| i64::from(b)));
            targets.extend(bytes[start + 1..start + t + 1].iter().map(|&b| i64::from(b)));
        }
        (inputs, targets)
    }
}

/// Fixed validation windows: `count` sequences evenly spaced over the validation split.
pub fn validation_windows(dataset: &Dataset, sequence_length: usize, count: usize) -> (Vec<i64>, Vec<i64>) {
    let bytes = dataset.validation();
    let span = bytes.len().saturating_sub(sequence_length + 1);
    let mut inputs = Vec::with_capacity(count * sequence_length);
    let mut targets = Vec::with_capacity(count * sequence_length);
    for i in 0..count {
        let start = if count > 1 { span * i / (count - 1) } else { 0 };
        inputs.extend(bytes[start..start + sequence_length].iter().map(|&b| i64::from(b)));
        targets.extend(bytes[start + 1..start + sequence_length + 1].iter().map(|&b| i64::from(b)));
    }
    (inputs, targets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dataset() -> Dataset {
        let text: Vec<u8> = (0..20_000u32).map(|i| b'a' + (i * 7 % 26) as u8).collect();
        Dataset::from_bytes(text, 1024)
    }

    #[test]
    fn splits_last_tenth_for_validation() {
        let d = dataset();
        assert_eq!(d.validation().len(), 2_000);
        assert_eq!(d.train().len(), 18_000);
        assert_eq!(d.shard_count(), 18);
    }

    #[test]
    fn root_changes_with_any_byte() {
        let d = dataset();
        let mut bytes = d.train().to_vec();
        bytes.extend_from_slice(d.validation());
        bytes[5000] ^= 1;
        assert_ne!(Dataset::from_bytes(bytes.clone(), 1024).root(), d.root());
        // The validation split and the shard size count too: a dataset's readers use both.
        bytes[5000] ^= 1;
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert_ne!(Dataset::from_bytes(bytes, 1024).root(), d.root(), "validation byte");
        let resharded = Dataset::from_parts(d.train().to_vec(), d.validation().to_vec(), 2048);
        assert_ne!(resharded.root(), d.root(), "shard size");
        assert_eq!(Dataset::from_parts(d.train().to_vec(), d.validation().to_vec(), 1024).root(), d.root());
    }

    #[test]
    fn workers_get_disjoint_shards_covering_the_dataset() {
        let d = dataset();
        let schedule = BatchSchedule { seed: 9, workers: 4, batch_size: 2, sequence_length: 16 };
        let mut seen = Vec::new();
        for w in 0..4 {
            seen.extend(schedule.shards_of(&d, 3, w).unwrap());
        }
        seen.sort();
        assert_eq!(seen, (0..18).collect::<Vec<_>>());
        // Another round permutes differently.
        assert_ne!(schedule.shards_of(&d, 3, 0).unwrap(), schedule.shards_of(&d, 4, 0).unwrap());
    }

    #[test]
    fn batches_are_pure_functions_of_their_coordinates() {
        let d = dataset();
        let schedule = BatchSchedule { seed: 9, workers: 2, batch_size: 4, sequence_length: 32 };
        let shards = schedule.shards_of(&d, 1, 0).unwrap();
        let a = schedule.batch(&d, &shards, 1, 0, 5);
        assert_eq!(a, schedule.batch(&d, &shards, 1, 0, 5));
        assert_ne!(a, schedule.batch(&d, &shards, 1, 0, 6));
        assert_eq!(a.0.len(), 4 * 32);
        // Targets are inputs shifted by one.
        assert_eq!(a.0[1..32], a.1[..31]);
    }

    #[test]
    fn too_few_shards_for_the_workers_is_an_error() {
        let d = Dataset::from_bytes(vec![b'x'; 3000], 1024);
        let schedule = BatchSchedule { seed: 1, workers: 4, batch_size: 1, sequence_length: 8 };
        assert!(matches!(schedule.shards_of(&d, 0, 0), Err(DataError::TooFewShards { .. })));
    }

    #[test]
    fn missing_and_empty_files_are_errors() {
        let dir = std::env::temp_dir().join(format!("trellis-data-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(matches!(Dataset::load(&dir.join("nope.txt")), Err(DataError::Missing(_))));
        let empty = dir.join("empty.txt");
        std::fs::write(&empty, b"").unwrap();
        assert!(matches!(Dataset::load(&empty), Err(DataError::Empty(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
