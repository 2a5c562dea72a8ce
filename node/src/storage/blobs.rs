//! The content-addressed blob store: datasets, checkpoints, models, pseudo-gradients and trails
//! as files named by their hash, checked against that hash before they are stored.
//!
//! A blob's address is a [`BlobKey`]: a kind and a hash. The kind says how the hash is computed,
//! because the protocol hashes different things in different domains (a checkpoint under the
//! checkpoint domain, a shard as a Merkle leaf, a dataset by the Merkle root over its shards, a
//! trail by the hash of its whole bytes in the trail domain). [`VerifyBlob::verify`] is the one place that checks bytes against an address,
//! used on every blob received from the network and before every write.
//!
//! Blobs that belong to one round of one job (checkpoints, trails, deltas) are tagged with the
//! round; [`BlobStore::collect_settled`] deletes them once the round is settled. Models, momenta
//! and datasets are kept: they are what a user exports or a late node needs.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use trellis_proto::hash::Hash;
use trellis_proto::merkle::{leaf_hash, MerkleTree};
use trellis_proto::JobId;
use trellis_proto::Trail;
use trellis_trainer::checkpoint::checkpoint_hash;

/// Largest blob stored or fetched (a 124M-parameter checkpoint with AdamW moments is ~1.5 GB).
pub const MAX_BLOB_BYTES: u64 = 2 * 1024 * 1024 * 1024;

pub use trellis_proto::blobwire::{data_hash, BlobKey, BlobKind};

/// Checking bytes against a [`BlobKey`]: node-side, because checkpoints and trails are the
/// trainer's formats.
pub trait VerifyBlob {
    /// Whether `bytes` is the blob this key names.
    fn verify(&self, bytes: &[u8]) -> bool;
}

impl VerifyBlob for BlobKey {
    fn verify(&self, bytes: &[u8]) -> bool {
        match self.kind {
            BlobKind::Checkpoint => checkpoint_hash(bytes) == self.hash,
            BlobKind::Data => data_hash(bytes) == self.hash,
            BlobKind::Shard => leaf_hash(bytes) == self.hash,
            BlobKind::Dataset => DatasetManifest::parse(bytes).is_ok_and(|m| m.root() == self.hash),
            // Every byte counts: a miner answers for exactly the trail it revealed, decodable or not.
            BlobKind::Trail => Trail::hash_bytes(bytes) == self.hash,
        }
    }
}

/// What a dataset is made of: its shards (whose Merkle root is the job's dataset root) and its
/// validation split. Only the shards are bound by the root; the validation split is used for the
/// losses people read, never for anything the chain decides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetManifest {
    /// Size of every shard but the last.
    pub shard_bytes: u64,
    pub shards: Vec<Hash>,
    /// `Data` key of the validation bytes.
    pub validation: Hash,
}

impl DatasetManifest {
    pub fn parse(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a manifest serialises")
    }

    pub fn root(&self) -> Hash {
        MerkleTree::from_leaf_hashes(self.shards.clone()).root()
    }
}

#[derive(Debug, Error)]
pub enum BlobError {
    #[error("blob {0} is not in the store")]
    Missing(BlobKey),
    #[error("bytes do not match blob address {0}")]
    Mismatch(BlobKey),
    #[error("blob {key} has {size} bytes, more than the limit of {max}")]
    TooLarge { key: BlobKey, size: u64, max: u64 },
    #[error("blob store at {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// Blobs as files under one directory: `KIND/HEX`, and `rounds/JOB-ROUND` listing the blobs
/// that belong to a round.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

impl BlobStore {
    pub fn open(root: &Path) -> Result<Self, BlobError> {
        for kind in BlobKind::ALL {
            let dir = root.join(kind.name());
            std::fs::create_dir_all(&dir).map_err(|source| BlobError::Io { path: dir, source })?;
        }
        let rounds = root.join("rounds");
        std::fs::create_dir_all(&rounds).map_err(|source| BlobError::Io { path: rounds, source })?;
        Ok(Self { root: root.to_path_buf() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path(&self, key: &BlobKey) -> PathBuf {
        self.root.join(key.kind.name()).join(key.hash.to_hex())
    }

    pub fn contains(&self, key: &BlobKey) -> bool {
        self.path(key).is_file()
    }

    pub fn size(&self, key: &BlobKey) -> Result<u64, BlobError> {
        std::fs::metadata(self.path(key)).map(|m| m.len()).map_err(|_| BlobError::Missing(*key))
    }

    /// Reads a stored blob (stored blobs were checked when written).
    pub fn get(&self, key: &BlobKey) -> Result<Vec<u8>, BlobError> {
        std::fs::read(self.path(key)).map_err(|_| BlobError::Missing(*key))
    }

    /// Reads `len` bytes at `offset` of a stored blob.
    pub fn read_range(&self, key: &BlobKey, offset: u64, len: usize) -> Result<Vec<u8>, BlobError> {
        use std::io::{Read as _, Seek as _, SeekFrom};
        let path = self.path(key);
        let mut file = std::fs::File::open(&path).map_err(|_| BlobError::Missing(*key))?;
        let io = |source| BlobError::Io { path: path.clone(), source };
        file.seek(SeekFrom::Start(offset)).map_err(io)?;
        let mut buffer = Vec::with_capacity(len);
        file.take(len as u64).read_to_end(&mut buffer).map_err(io)?;
        Ok(buffer)
    }

    /// Checks `bytes` against `key` and stores them (atomically: a crash leaves no partial blob).
    pub fn put(&self, key: &BlobKey, bytes: &[u8]) -> Result<(), BlobError> {
        if bytes.len() as u64 > MAX_BLOB_BYTES {
            return Err(BlobError::TooLarge { key: *key, size: bytes.len() as u64, max: MAX_BLOB_BYTES });
        }
        if !key.verify(bytes) {
            return Err(BlobError::Mismatch(*key));
        }
        let path = self.path(key);
        if path.is_file() {
            return Ok(());
        }
        // A name no other writer uses: tasks of this process may store the same blob at once.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let unique = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let temporary = path.with_extension(format!("tmp-{}-{unique}", std::process::id()));
        let io = |source| BlobError::Io { path: temporary.clone(), source };
        let mut file = std::fs::File::create(&temporary).map_err(io)?;
        file.write_all(bytes).map_err(io)?;
        file.sync_all().map_err(io)?;
        if let Err(source) = std::fs::rename(&temporary, &path) {
            let _ = std::fs::remove_file(&temporary);
            if !path.is_file() {
                return Err(BlobError::Io { path, source });
            }
        }
        Ok(())
    }

    /// Checks the file at `path` against `key` and moves it into the store (copying when the
    /// store is on another file system); the file is gone afterwards either way.
    pub fn put_file(&self, key: &BlobKey, path: &Path) -> Result<(), BlobError> {
        let io = |source| BlobError::Io { path: path.to_path_buf(), source };
        let size = std::fs::metadata(path).map_err(io)?.len();
        if size > MAX_BLOB_BYTES {
            return Err(BlobError::TooLarge { key: *key, size, max: MAX_BLOB_BYTES });
        }
        let bytes = std::fs::read(path).map_err(io)?;
        if !key.verify(&bytes) {
            return Err(BlobError::Mismatch(*key));
        }
        let destination = self.path(key);
        if destination.is_file() || std::fs::rename(path, &destination).is_err() {
            self.put(key, &bytes)?;
            let _ = std::fs::remove_file(path);
        }
        Ok(())
    }

    /// Stores opaque bytes and returns their key.
    pub fn put_data(&self, bytes: &[u8]) -> Result<BlobKey, BlobError> {
        let key = BlobKey::data(bytes);
        self.put(&key, bytes)?;
        Ok(key)
    }

    /// Records that `keys` belong to round `round` of `job` (for garbage collection).
    pub fn tag_round(&self, job: JobId, round: u32, keys: &[BlobKey]) -> Result<(), BlobError> {
        let path = self.round_list(job, round);
        let io = |source| BlobError::Io { path: path.clone(), source };
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(io)?;
        let lines: String = keys.iter().map(|k| format!("{} {}\n", k.kind.tag(), k.hash.to_hex())).collect();
        file.write_all(lines.as_bytes()).map_err(io)
    }

    fn round_list(&self, job: JobId, round: u32) -> PathBuf {
        self.root.join("rounds").join(format!("{}-{}", job.0, round))
    }

    /// Deletes the blobs of every round of `job` before `keep_from` (rounds that are settled and
    /// can no longer be verified). Returns how many blobs were removed.
    pub fn collect_settled(&self, job: JobId, keep_from: u32) -> usize {
        let mut removed = 0;
        for round in 0..keep_from {
            let list = self.round_list(job, round);
            let Ok(text) = std::fs::read_to_string(&list) else { continue };
            for line in text.lines() {
                let mut parts = line.split(' ');
                let (Some(tag), Some(hex)) = (parts.next(), parts.next()) else { continue };
                let (Some(kind), Ok(hash)) = (tag.parse().ok().and_then(BlobKind::from_tag), hex.parse::<Hash>())
                else {
                    continue;
                };
                if std::fs::remove_file(self.path(&BlobKey::new(kind, hash))).is_ok() {
                    removed += 1;
                }
            }
            let _ = std::fs::remove_file(&list);
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn stores_only_what_matches_its_address() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let key = store.put_data(b"weights").unwrap();
        assert_eq!(store.get(&key).unwrap(), b"weights");
        assert_eq!(store.read_range(&key, 2, 3).unwrap(), b"igh");
        let wrong = BlobKey::new(BlobKind::Checkpoint, key.hash);
        assert!(matches!(store.put(&wrong, b"weights"), Err(BlobError::Mismatch(_))));
        assert!(matches!(store.get(&wrong), Err(BlobError::Missing(_))));
    }

    #[test]
    fn files_move_into_the_store_only_when_they_match_their_address() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(&dir.path().join("blobs")).unwrap();
        let staged = dir.path().join("staged");
        std::fs::write(&staged, b"a delta").unwrap();
        assert!(matches!(store.put_file(&BlobKey::data(b"another"), &staged), Err(BlobError::Mismatch(_))));
        let key = BlobKey::data(b"a delta");
        store.put_file(&key, &staged).unwrap();
        assert_eq!(store.get(&key).unwrap(), b"a delta");
        assert!(!staged.exists());
    }

    #[test]
    fn dataset_manifests_are_addressed_by_their_root() {
        let shards = [b"first shard".as_slice(), b"second"];
        let manifest = DatasetManifest {
            shard_bytes: 11,
            shards: shards.iter().map(|s| leaf_hash(s)).collect(),
            validation: Hash::ZERO,
        };
        let key = BlobKey::new(BlobKind::Dataset, manifest.root());
        assert!(key.verify(&manifest.to_bytes()));
        let mut other = manifest.clone();
        other.shards.swap(0, 1);
        assert!(!key.verify(&other.to_bytes()));
        assert!(!key.verify(b"not json"));
    }

    #[test]
    fn settled_rounds_are_collected_and_kept_rounds_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let old = store.put_data(b"round zero delta").unwrap();
        let new = store.put_data(b"round one delta").unwrap();
        let model = store.put_data(b"model").unwrap();
        store.tag_round(JobId(3), 0, &[old]).unwrap();
        store.tag_round(JobId(3), 1, &[new]).unwrap();
        assert_eq!(store.collect_settled(JobId(3), 1), 1);
        assert!(!store.contains(&old));
        assert!(store.contains(&new));
        assert!(store.contains(&model));
        assert_eq!(store.collect_settled(JobId(3), 1), 0);
    }

    #[test]
    fn concurrent_writers_of_one_blob_all_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let bytes: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let key = BlobKey::data(&bytes);
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| store.put(&key, &bytes).unwrap());
            }
        });
        assert_eq!(store.get(&key).unwrap(), bytes);
        let leftovers = std::fs::read_dir(dir.path().join("data")).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary file is left behind");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

        // Blob contents come from peers (a miner's trail, a submitter's dataset manifest, weights
        // and momenta): checking them against any address, and reading them as what they claim
        // to be, never panics.
        #[test]
        fn peer_blob_contents_never_panic_their_readers(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
            hash in any::<[u8; 32]>(),
        ) {
            for kind in BlobKind::ALL {
                let _ = BlobKey::new(kind, Hash(hash)).verify(&bytes);
            }
            if let Ok(manifest) = DatasetManifest::parse(&bytes) {
                let _ = manifest.root();
            }
            match trellis_protocol::model::weights_from_bytes(&bytes) {
                Ok(weights) => prop_assert_eq!(weights.len() * 4, bytes.len()),
                Err(_) => prop_assert!(bytes.len() % 4 != 0),
            }
        }

        #[test]
        fn edited_dataset_manifests_never_panic(
            edits in proptest::collection::vec((any::<usize>(), prop::sample::select(b"0123456789-.e,:[]{}\"af ".to_vec())), 1..4),
        ) {
            let manifest = DatasetManifest { shard_bytes: 11, shards: vec![Hash([1; 32]), Hash([2; 32])], validation: Hash::ZERO };
            let mut bytes = manifest.to_bytes();
            for (at, byte) in edits {
                let at = at % bytes.len();
                bytes[at] = byte;
            }
            if let Ok(parsed) = DatasetManifest::parse(&bytes) {
                prop_assert!(BlobKey::new(BlobKind::Dataset, parsed.root()).verify(&bytes));
            }
        }
    }
}
