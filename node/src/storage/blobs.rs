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
//!
//! Blobs stream: a [`BlobWriter`] takes a blob's bytes piece by piece (a fetch, chunk after
//! chunk), checks them against the address and hashes the exchange's chunks on the way, and moves
//! the file into place only if it matches; files are hashed in pieces too. Nothing here holds a
//! whole blob in memory except [`BlobStore::get`], which callers use for what they parse.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use trellis_proto::hash::Hash;
use trellis_proto::merkle::MerkleTree;
use trellis_proto::JobId;
use trellis_trainer::checkpoint::CheckpointHasher;

/// Largest blob stored or fetched: a checkpoint (weights and both AdamW moments, 12 bytes a
/// parameter) of a model of about 5.7 billion parameters.
pub const MAX_BLOB_BYTES: u64 = 64 * 1024 * 1024 * 1024;

/// Bytes per chunk of the blob exchange: what a manifest hashes and a request moves.
pub const CHUNK_BYTES: usize = 1 << 20;

/// Largest dataset manifest: the one kind checked by parsing, so held whole while it arrives.
/// A manifest lists one hash per shard (about 70 bytes of JSON each).
pub const MAX_DATASET_MANIFEST_BYTES: u64 = 64 * 1024 * 1024;

pub use trellis_proto::blobwire::{data_hash, BlobKey, BlobKind};

/// Checking bytes against a [`BlobKey`]: node-side, because dataset manifests are the node's format.
pub trait VerifyBlob {
    /// Whether `bytes` is the blob this key names.
    fn verify(&self, bytes: &[u8]) -> bool;
}

impl VerifyBlob for BlobKey {
    fn verify(&self, bytes: &[u8]) -> bool {
        let mut verifier = BlobVerifier::new(*self);
        verifier.update(bytes);
        verifier.matches()
    }
}

/// Checks a blob against its address as its bytes arrive, in any pieces: the one place that
/// decides whether bytes are the blob a key names. A checkpoint's address is its checkpoint hash
/// ([`CheckpointHasher`]: a compact checkpoint's in two parts); every other kind but a dataset
/// manifest is a hash of the whole bytes in the kind's domain ([`BlobKind::hash_domain`]; every
/// byte counts: a miner answers for exactly the trail it revealed, decodable or not); a manifest
/// is parsed and its Merkle root compared, so it is held, up to [`MAX_DATASET_MANIFEST_BYTES`].
pub struct BlobVerifier {
    key: BlobKey,
    state: Verifying,
}

enum Verifying {
    Checkpoint(Box<CheckpointHasher>),
    Hashing(Box<blake3::Hasher>),
    Holding(Vec<u8>),
    /// A manifest over its limit: never a match.
    Overflowed,
}

impl BlobVerifier {
    pub fn new(key: BlobKey) -> Self {
        let state = match (key.kind, key.kind.hash_domain()) {
            (BlobKind::Checkpoint, _) => Verifying::Checkpoint(Box::default()),
            (_, Some(domain)) => Verifying::Hashing(Box::new(domain.hasher())),
            (_, None) => Verifying::Holding(Vec::new()),
        };
        Self { key, state }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        match &mut self.state {
            Verifying::Checkpoint(hasher) => hasher.update(bytes),
            Verifying::Hashing(hasher) => {
                hasher.update(bytes);
            }
            Verifying::Holding(held) if (held.len() + bytes.len()) as u64 <= MAX_DATASET_MANIFEST_BYTES => {
                held.extend_from_slice(bytes)
            }
            Verifying::Holding(_) | Verifying::Overflowed => self.state = Verifying::Overflowed,
        }
    }

    /// Whether the bytes given so far are the blob the key names.
    pub fn matches(self) -> bool {
        match self.state {
            Verifying::Checkpoint(hasher) => hasher.finalize() == self.key.hash,
            Verifying::Hashing(hasher) => Hash(*hasher.finalize().as_bytes()) == self.key.hash,
            Verifying::Holding(held) => DatasetManifest::is_canonical_at(&held, self.key.hash),
            Verifying::Overflowed => false,
        }
    }
}

/// The blob exchange's manifest of a blob as its bytes arrive: the blake3 hash of every
/// [`CHUNK_BYTES`] chunk (one chunk, empty, for an empty blob).
#[derive(Default)]
pub struct ChunkHasher {
    current: blake3::Hasher,
    in_current: usize,
    chunks: Vec<Hash>,
    size: u64,
}

impl ChunkHasher {
    pub fn update(&mut self, mut bytes: &[u8]) {
        self.size += bytes.len() as u64;
        while !bytes.is_empty() {
            let take = bytes.len().min(CHUNK_BYTES - self.in_current);
            self.current.update(&bytes[..take]);
            self.in_current += take;
            bytes = &bytes[take..];
            if self.in_current == CHUNK_BYTES {
                self.chunks.push(Hash(*self.current.finalize().as_bytes()));
                self.current.reset();
                self.in_current = 0;
            }
        }
    }

    /// The blob's size and chunk hashes.
    pub fn finish(mut self) -> (u64, Vec<Hash>) {
        if self.in_current > 0 || self.chunks.is_empty() {
            self.chunks.push(Hash(*self.current.finalize().as_bytes()));
        }
        (self.size, self.chunks)
    }
}

/// The manifest of `bytes`: its size and the hash of each chunk.
pub fn manifest_of(bytes: &[u8]) -> (u64, Vec<Hash>) {
    let mut chunks = ChunkHasher::default();
    chunks.update(bytes);
    chunks.finish()
}

/// How many chunks a blob of `size` bytes has.
pub fn chunk_count(size: u64) -> usize {
    (size.div_ceil(CHUNK_BYTES as u64) as usize).max(1)
}

/// What a dataset is made of: its shards, their size and its validation split, all bound by its
/// root (the job's dataset root, [`trellis_proto::blobwire::dataset_root`]); stored and served as
/// one canonical JSON encoding ([`DatasetManifest::is_canonical_at`]).
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

    /// The manifest's address: [`trellis_proto::blobwire::dataset_root`], binding every field.
    pub fn root(&self) -> Hash {
        let shards = MerkleTree::from_leaf_hashes(self.shards.clone()).root();
        trellis_proto::blobwire::dataset_root(shards, self.shard_bytes, self.validation)
    }

    /// Whether `bytes` is the one encoding of a manifest at `root`: parsed, of that root, and
    /// written back to exactly these bytes (so that every holder serves the same bytes).
    pub fn is_canonical_at(bytes: &[u8], root: Hash) -> bool {
        Self::parse(bytes).is_ok_and(|m| m.root() == root && m.to_bytes() == bytes)
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

/// Removes the temporary file at `path` if no writer holds it: every writer holds an exclusive
/// `flock` on its temporary from creating it until it is moved into place or removed, and the
/// kernel releases the lock when the writer exits however it exits. A process id in the name
/// would not do: another PID namespace (a container sharing the store) has other numbers, and a
/// node that is PID 1 sees its own number in its crash leftovers. The file is removed while
/// the lock is held here, so a writer that locks it afterwards finds it unlinked
/// ([`create_locked`]) and starts again under another name.
fn remove_if_abandoned(path: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(file) = std::fs::OpenOptions::new().read(true).open(path) else { return };
    if flock(&file, libc::LOCK_EX | libc::LOCK_NB).is_err() {
        return;
    }
    // The name may have moved on since it was opened (renamed into place, then taken by a new
    // writer of another PID namespace with the same id and counter): remove only the file locked.
    let same = |a: std::fs::Metadata, b: std::fs::Metadata| a.dev() == b.dev() && a.ino() == b.ino();
    if let (Ok(locked), Ok(named)) = (file.metadata(), std::fs::metadata(path)) {
        if same(locked, named) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// `flock(2)` on `file` (std's `File::lock` needs a newer Rust than the workspace's 1.85).
fn flock(file: &std::fs::File, operation: libc::c_int) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is open for as long as `file` is borrowed; flock touches no memory.
    #[allow(unsafe_code)]
    let answer = unsafe { libc::flock(file.as_raw_fd(), operation) };
    if answer == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Creates a temporary file beside `path` (see [`BlobStore::temporary`]) and locks it for as
/// long as the returned file is open. A store opening between the creation and the lock may
/// take the file for abandoned and remove it: then this tries another name.
fn create_locked(path: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    use std::os::unix::fs::MetadataExt;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let temporary = BlobStore::temporary(path);
        let file = match std::fs::OpenOptions::new().write(true).create_new(true).open(&temporary) {
            Ok(file) => file,
            // Another PID namespace's writer may have the same process id and counter.
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists && attempts < 8 => continue,
            Err(error) => return Err(error),
        };
        flock(&file, libc::LOCK_EX)?;
        if file.metadata()?.nlink() > 0 {
            return Ok((temporary, file));
        }
        if attempts >= 8 {
            return Err(std::io::Error::other("temporary files keep being removed by another process"));
        }
    }
}

/// Blobs as files under one directory: `KIND/HEX`; beside each, `chunks/KIND/HEX`, the hashes
/// of its exchange chunks (written before the blob is moved into place, so a stored blob always
/// has them, computed while its bytes were checked); and `rounds/JOB-ROUND` listing the blobs
/// that belong to a round.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
    max_blob_bytes: u64,
}

impl BlobStore {
    /// Opens (creating) the store at `root`, removing the temporary files a crashed process left
    /// (a write cut short by a kill never completes, and nothing else would delete it). A
    /// temporary whose writer still runs (it holds its lock: [`remove_if_abandoned`]) is left
    /// alone: a node and a `job submit` pointed at its home share the store, and each opens it
    /// while the other may be writing.
    pub fn open(root: &Path) -> Result<Self, BlobError> {
        for kind in BlobKind::ALL {
            for dir in [root.join(kind.name()), root.join("chunks").join(kind.name())] {
                std::fs::create_dir_all(&dir).map_err(|source| BlobError::Io { path: dir.clone(), source })?;
                let entries = std::fs::read_dir(&dir).map_err(|source| BlobError::Io { path: dir.clone(), source })?;
                for entry in entries.flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if name.contains(".tmp-") {
                        remove_if_abandoned(&entry.path());
                    }
                }
            }
        }
        let rounds = root.join("rounds");
        std::fs::create_dir_all(&rounds).map_err(|source| BlobError::Io { path: rounds, source })?;
        Ok(Self { root: root.to_path_buf(), max_blob_bytes: MAX_BLOB_BYTES })
    }

    /// The same store with a smaller size limit, so that tests can cross it.
    #[cfg(test)]
    pub fn with_blob_limit(mut self, max_blob_bytes: u64) -> Self {
        self.max_blob_bytes = max_blob_bytes;
        self
    }

    fn too_large(&self, key: &BlobKey, size: u64) -> Result<(), BlobError> {
        if size > self.max_blob_bytes {
            return Err(BlobError::TooLarge { key: *key, size, max: self.max_blob_bytes });
        }
        Ok(())
    }

    fn chunks_path(&self, key: &BlobKey) -> PathBuf {
        self.root.join("chunks").join(key.kind.name()).join(key.hash.to_hex())
    }

    /// A temporary path beside `path`, named `HEX.tmp-PID-N`, that no other writer of this process
    /// uses: its tasks may store the same blob at once. Writers create it exclusively
    /// ([`create_locked`]): a process in another PID namespace may use the same name.
    fn temporary(path: &Path) -> PathBuf {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let unique = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        path.with_extension(format!("tmp-{}-{unique}", std::process::id()))
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
        self.too_large(key, bytes.len() as u64)?;
        if self.contains(key) {
            return if key.verify(bytes) { Ok(()) } else { Err(BlobError::Mismatch(*key)) };
        }
        let mut writer = self.writer(*key)?;
        writer.write(bytes)?;
        writer.finish().map(|_| ())
    }

    /// Starts writing the blob `key`: see [`BlobWriter`].
    pub fn writer(&self, key: BlobKey) -> Result<BlobWriter, BlobError> {
        let path = self.path(&key);
        let (temporary, file) = create_locked(&path).map_err(|source| BlobError::Io { path: path.clone(), source })?;
        Ok(BlobWriter {
            store: self.clone(),
            key,
            file: Some(std::io::BufWriter::with_capacity(CHUNK_BYTES, file)),
            temporary,
            verifier: BlobVerifier::new(key),
            chunks: ChunkHasher::default(),
        })
    }

    /// Checks the file at `path` against `key`, reading it in chunks, and moves it into the
    /// store (copying when the store is on another file system); the file is gone afterwards
    /// unless it does not match.
    pub fn put_file(&self, key: &BlobKey, path: &Path) -> Result<(), BlobError> {
        let io = |source| BlobError::Io { path: path.to_path_buf(), source };
        let size = std::fs::metadata(path).map_err(io)?.len();
        self.too_large(key, size)?;
        let mut verifier = BlobVerifier::new(*key);
        let mut chunks = ChunkHasher::default();
        read_in_chunks(path, |piece| {
            verifier.update(piece);
            chunks.update(piece);
        })
        .map_err(io)?;
        if !verifier.matches() {
            return Err(BlobError::Mismatch(*key));
        }
        let destination = self.path(key);
        if destination.is_file() {
            let _ = std::fs::remove_file(path);
            return Ok(());
        }
        let (_, hashes) = chunks.finish();
        self.write_chunk_hashes(key, &hashes)?;
        if std::fs::rename(path, &destination).is_err() {
            let mut writer = self.writer(*key)?;
            read_in_chunks(path, |piece| writer.pending(piece)).map_err(io)?;
            writer.finish()?;
            let _ = std::fs::remove_file(path);
        }
        Ok(())
    }

    /// The exchange's manifest of a stored blob: its size and chunk hashes, as recorded when it
    /// was stored (computed from the file, in chunks, for a blob stored without them).
    pub fn manifest(&self, key: &BlobKey) -> Result<(u64, Vec<Hash>), BlobError> {
        let size = self.size(key)?;
        let recorded = std::fs::read(self.chunks_path(key)).unwrap_or_default();
        if recorded.len() == 32 * chunk_count(size) {
            let hashes = recorded.chunks_exact(32).map(|h| Hash(h.try_into().expect("32 bytes"))).collect();
            return Ok((size, hashes));
        }
        let path = self.path(key);
        let mut chunks = ChunkHasher::default();
        read_in_chunks(&path, |piece| chunks.update(piece)).map_err(|source| BlobError::Io { path, source })?;
        let (size, hashes) = chunks.finish();
        self.write_chunk_hashes(key, &hashes)?;
        Ok((size, hashes))
    }

    fn write_chunk_hashes(&self, key: &BlobKey, hashes: &[Hash]) -> Result<(), BlobError> {
        let path = self.chunks_path(key);
        let (temporary, mut file) =
            create_locked(&path).map_err(|source| BlobError::Io { path: path.clone(), source })?;
        let bytes: Vec<u8> = hashes.iter().flat_map(|h| h.0).collect();
        let io = |source| BlobError::Io { path: temporary.clone(), source };
        let written = file.write_all(&bytes).and_then(|()| std::fs::rename(&temporary, &path));
        if written.is_err() {
            let _ = std::fs::remove_file(&temporary);
        }
        // The lock goes with the file, after the rename: until then the temporary is in use.
        drop(file);
        written.map_err(io)
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

    /// The jobs some round of which has blobs listed here (what garbage collection must visit).
    pub fn listed_jobs(&self) -> std::collections::BTreeSet<JobId> {
        self.round_lists().into_iter().map(|(job, _)| job).collect()
    }

    /// Every (job, round) with a list of blobs.
    fn round_lists(&self) -> Vec<(JobId, u32)> {
        std::fs::read_dir(self.root.join("rounds"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name();
                let (listed_job, round) = name.to_str()?.split_once('-')?;
                Some((JobId(listed_job.parse().ok()?), round.parse().ok()?))
            })
            .collect()
    }

    /// The keys listed for round `round` of `job` (nothing when the list is gone).
    fn round_keys(&self, job: JobId, round: u32) -> Vec<BlobKey> {
        let Ok(text) = std::fs::read_to_string(self.round_list(job, round)) else { return Vec::new() };
        text.lines()
            .filter_map(|line| {
                let mut parts = line.split(' ');
                let (tag, hex) = (parts.next()?, parts.next()?);
                Some(BlobKey::new(tag.parse().ok().and_then(BlobKind::from_tag)?, hex.parse::<Hash>().ok()?))
            })
            .collect()
    }

    /// Deletes the blobs of every round of `job` before `keep_from` (rounds that are settled and
    /// can no longer be verified), but those another round still listed also lists: a later round
    /// of the job (a streaming miner's final checkpoint, which its next round continues and serves
    /// again) or any round of another job (two jobs from the same model share their θ₀ and
    /// checkpoints; a miner may name another job's blob as its own). Returns how many blobs were
    /// removed.
    pub fn collect_settled(&self, job: JobId, keep_from: u32) -> usize {
        let listed = self.round_lists();
        let kept: std::collections::HashSet<BlobKey> = listed
            .iter()
            .filter(|(listed_job, round)| *listed_job != job || *round >= keep_from)
            .flat_map(|(listed_job, round)| self.round_keys(*listed_job, *round))
            .collect();
        let mut removed = 0;
        for round in 0..keep_from {
            let list = self.round_list(job, round);
            if !list.exists() {
                continue;
            }
            for key in self.round_keys(job, round) {
                if kept.contains(&key) {
                    continue;
                }
                let _ = std::fs::remove_file(self.chunks_path(&key));
                if std::fs::remove_file(self.path(&key)).is_ok() {
                    removed += 1;
                }
            }
            let _ = std::fs::remove_file(&list);
        }
        removed
    }
}

/// Reads the file at `path` in [`CHUNK_BYTES`] pieces.
fn read_in_chunks(path: &Path, mut each: impl FnMut(&[u8])) -> std::io::Result<()> {
    let mut file = std::fs::File::open(path)?;
    let mut buffer = vec![0u8; CHUNK_BYTES];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            return Ok(());
        }
        each(&buffer[..read]);
    }
}

/// A blob being written into the store as its bytes arrive: checked against its address and
/// chunk-hashed on the way, over the size limit refused as soon as it crosses it, and moved into
/// place by [`BlobWriter::finish`] only if it matches. Dropped unfinished, it leaves nothing.
pub struct BlobWriter {
    store: BlobStore,
    key: BlobKey,
    file: Option<std::io::BufWriter<std::fs::File>>,
    temporary: PathBuf,
    verifier: BlobVerifier,
    chunks: ChunkHasher,
}

impl BlobWriter {
    /// Appends `bytes`.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), BlobError> {
        self.store.too_large(&self.key, self.chunks.size + bytes.len() as u64)?;
        let io = |source| BlobError::Io { path: self.temporary.clone(), source };
        let Some(file) = self.file.as_mut() else {
            return Err(io(std::io::Error::other("a write to this blob failed earlier")));
        };
        file.write_all(bytes).map_err(io)?;
        self.verifier.update(bytes);
        self.chunks.update(bytes);
        Ok(())
    }

    /// [`BlobWriter::write`] from a callback that cannot return an error: the first error is
    /// kept and returned by [`BlobWriter::finish`].
    fn pending(&mut self, bytes: &[u8]) {
        if self.file.is_some() && self.write(bytes).is_err() {
            self.file = None;
        }
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.chunks.size
    }

    /// Checks what was written against the key and moves it into the store; returns its size.
    pub fn finish(mut self) -> Result<u64, BlobError> {
        let Some(file) = self.file.take() else {
            return Err(BlobError::Io {
                path: self.temporary.clone(),
                source: std::io::Error::other("a write to this blob failed earlier"),
            });
        };
        let io = |source| BlobError::Io { path: self.temporary.clone(), source };
        let file = file.into_inner().map_err(|e| io(e.into_error()))?;
        let verifier = std::mem::replace(&mut self.verifier, BlobVerifier::new(self.key));
        if !verifier.matches() {
            return Err(BlobError::Mismatch(self.key));
        }
        file.sync_all().map_err(io)?;
        let (size, hashes) = std::mem::take(&mut self.chunks).finish();
        self.store.write_chunk_hashes(&self.key, &hashes)?;
        let path = self.store.path(&self.key);
        if let Err(source) = std::fs::rename(&self.temporary, &path) {
            if !path.is_file() {
                return Err(BlobError::Io { path, source });
            }
        }
        // Held (and locked) until the temporary is in place: see `remove_if_abandoned`. The name
        // is no longer ours to remove.
        drop(file);
        self.temporary = PathBuf::new();
        Ok(size)
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // Finished: renamed away already (and forgotten). Otherwise: a partial or refused blob,
        // never kept.
        if !self.temporary.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.temporary);
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use trellis_proto::merkle::leaf_hash;
    use trellis_proto::Trail;

    use super::*;

    /// The names in a store directory that are not finished blobs (temporary files).
    fn leftovers(dir: &Path) -> Vec<String> {
        let mut names = Vec::new();
        for kind in BlobKind::ALL {
            for dir in [dir.join(kind.name()), dir.join("chunks").join(kind.name())] {
                for entry in std::fs::read_dir(dir).unwrap() {
                    let name = entry.unwrap().file_name().to_string_lossy().into_owned();
                    if name.contains(".tmp-") {
                        names.push(name);
                    }
                }
            }
        }
        names
    }

    #[test]
    fn a_blob_written_in_pieces_is_checked_and_chunk_hashed_as_if_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let bytes: Vec<u8> = (0..(2 * CHUNK_BYTES + 4321)).map(|i| (i * 7 % 253) as u8).collect();
        for key in [BlobKey::data(&bytes), BlobKey::new(BlobKind::Trail, Trail::hash_bytes(&bytes))] {
            let mut writer = store.writer(key).unwrap();
            // Pieces that straddle the chunk boundaries.
            for piece in bytes.chunks(CHUNK_BYTES / 3 + 17) {
                writer.write(piece).unwrap();
            }
            assert_eq!(writer.finish().unwrap(), bytes.len() as u64);
            assert_eq!(store.get(&key).unwrap(), bytes);
            assert_eq!(store.manifest(&key).unwrap(), manifest_of(&bytes));
            assert_eq!(store.manifest(&key).unwrap().1.len(), 3);
        }
        // A blob stored without its chunk hashes (an older store) gets them from its file.
        let key = BlobKey::data(&bytes);
        std::fs::remove_file(store.chunks_path(&key)).unwrap();
        assert_eq!(store.manifest(&key).unwrap(), manifest_of(&bytes));
        assert!(leftovers(dir.path()).is_empty());
    }

    /// A compact checkpoint's address is the hash of its two parts: the store takes it under that
    /// address, written in pieces that cut across the drift section, and not under the hash of
    /// its whole bytes, nor with its drift changed.
    #[test]
    fn a_compact_checkpoint_is_stored_under_the_hash_of_its_parts() {
        use trellis_trainer::checkpoint::{capture_compact, checkpoint_hash, compact_parts, CompactBase};
        use trellis_trainer::model::{Gpt, Preset};
        use trellis_trainer::optim::{AdamW, AdamWConfig};
        let mut model = Gpt::new(&Preset::Nano.config(), 3, tch::Device::Cpu).unwrap();
        let start = model.flat_weights();
        let mut optimizer = AdamW::new(AdamWConfig::with_schedule(1e-3, 0, 10), model.parameters());
        model.set_flat_weights(&start.iter().map(|w| w + 1e-3).collect::<Vec<_>>());
        let bytes = capture_compact(&mut model, &mut optimizer, CompactBase::new(&start, 0.9, 0.95).unwrap());
        let key = BlobKey::new(BlobKind::Checkpoint, checkpoint_hash(&bytes));
        assert_eq!(Some(key.hash), compact_parts(&bytes).map(|parts| parts.hash()));
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let mut writer = store.writer(key).unwrap();
        for piece in bytes.chunks(bytes.len() / 3 + 1) {
            writer.write(piece).unwrap();
        }
        writer.finish().unwrap();
        assert_eq!(store.get(&key).unwrap(), bytes);
        let whole = BlobKey::new(BlobKind::Checkpoint, Hash::digest(trellis_proto::HashDomain::Checkpoint, &bytes));
        assert!(!whole.verify(&bytes), "a compact checkpoint is not addressed by its whole bytes");
        let mut drifted = bytes.clone();
        drifted[bytes.len() / 2 - 1000] ^= 1;
        assert!(!key.verify(&drifted));
    }

    #[test]
    fn a_writer_keeps_nothing_that_does_not_match_or_crosses_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap().with_blob_limit(1000);
        let key = BlobKey::data(b"the real bytes");
        let mut writer = store.writer(key).unwrap();
        writer.write(b"other bytes").unwrap();
        assert!(matches!(writer.finish(), Err(BlobError::Mismatch(_))));

        let big = vec![1u8; 1001];
        let mut writer = store.writer(BlobKey::data(&big)).unwrap();
        writer.write(&big[..600]).unwrap();
        assert!(matches!(writer.write(&big[600..]), Err(BlobError::TooLarge { size: 1001, max: 1000, .. })));
        drop(writer);
        assert!(matches!(store.put_data(&big), Err(BlobError::TooLarge { .. })));

        // Dropped part-way (a fetch that gave up): nothing is left either.
        let mut writer = store.writer(key).unwrap();
        writer.write(b"the real").unwrap();
        drop(writer);
        assert!(!store.contains(&key));
        assert!(leftovers(dir.path()).is_empty(), "{:?}", leftovers(dir.path()));
    }

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
    fn opening_removes_the_temporaries_a_crashed_process_left() {
        let dir = std::env::temp_dir().join(format!("trellis-blobs-crash-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = BlobStore::open(&dir).unwrap();
        let key = BlobKey::new(BlobKind::Data, data_hash(b"kept"));
        store.put(&key, b"kept").unwrap();
        // Writes cut short by a crash: nobody holds them, whatever process id their names carry
        // (this very process's; 1, what a node in a container often is).
        let dead = dir.join("data").join(format!("{}.tmp-4294967295-7", Hash([3; 32]).to_hex()));
        let ours = BlobStore::temporary(&dir.join("data").join(Hash([4; 32]).to_hex()));
        let init = dir.join("checkpoint").join(format!("{}.tmp-1-0", Hash([6; 32]).to_hex()));
        for leftover in [&dead, &ours, &init] {
            std::fs::write(leftover, b"half a blob").unwrap();
        }
        // A write of this process still at work, and one of another process writing into the
        // same store (a `job submit` beside its node, perhaps in another PID namespace): each
        // holds its lock, and its temporary stays until it has finished or exited.
        let mut live = store.writer(BlobKey::new(BlobKind::Data, data_hash(b"being written"))).unwrap();
        live.write(b"being").unwrap();
        let neighbours = dir.join("shard").join(format!("{}.tmp-4294967295-0", Hash([5; 32]).to_hex()));
        std::fs::write(&neighbours, b"another writer").unwrap();
        // flock(1) holds the lock while `cat` runs, and `cat` runs until its input closes.
        let mut neighbour = std::process::Command::new("flock")
            .arg(&neighbours)
            .arg("cat")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let locked = std::time::Instant::now();
        while flock(&std::fs::File::open(&neighbours).unwrap(), libc::LOCK_EX | libc::LOCK_NB).is_ok() {
            assert!(locked.elapsed() < std::time::Duration::from_secs(10), "flock(1) never took its lock");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let reopened = BlobStore::open(&dir).unwrap();
        for leftover in [&dead, &ours, &init] {
            assert!(!leftover.exists(), "an abandoned temporary stays: {}", leftover.display());
        }
        assert_eq!(leftovers(&dir).len(), 2, "a live writer's temporary was removed: {:?}", leftovers(&dir));
        assert!(neighbours.exists(), "a running neighbour's temporary was removed");
        assert_eq!(reopened.get(&key).unwrap(), b"kept");
        live.write(b" written").unwrap();
        live.finish().unwrap();
        assert_eq!(reopened.get(&BlobKey::new(BlobKind::Data, data_hash(b"being written"))).unwrap(), b"being written");
        drop(neighbour.stdin.take());
        neighbour.wait().unwrap();
        BlobStore::open(&dir).unwrap();
        assert!(!neighbours.exists(), "an exited neighbour's temporary stays");
        assert!(leftovers(&dir).is_empty(), "{:?}", leftovers(&dir));
        std::fs::remove_dir_all(&dir).unwrap();
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
        // Every field is bound: a peer answering first cannot name other validation text or
        // another shard size under the same address, nor serve the same manifest spelt otherwise.
        let other_validation = DatasetManifest { validation: Hash([7; 32]), ..manifest.clone() };
        assert!(!key.verify(&other_validation.to_bytes()));
        let other_shard_size = DatasetManifest { shard_bytes: 12, ..manifest.clone() };
        assert!(!key.verify(&other_shard_size.to_bytes()));
        let mut spaced = manifest.to_bytes();
        spaced.push(b' ');
        assert_eq!(DatasetManifest::parse(&spaced).unwrap(), manifest);
        assert!(!key.verify(&spaced), "a second spelling of the same manifest");
    }

    /// A check tags each blob with its round before fetching it, so that one that ends early
    /// leaves nothing the round's collection misses: a blob tagged before it arrives (or never
    /// arrives) is collected like any other.
    #[test]
    fn a_blob_tagged_before_it_arrives_is_collected_with_its_round() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let arriving = BlobKey::data(b"fetched after its tag");
        let never = BlobKey::data(b"never arrives");
        store.tag_round(JobId(5), 0, &[arriving, never]).unwrap();
        store.put(&arriving, b"fetched after its tag").unwrap();
        assert_eq!(store.collect_settled(JobId(5), 1), 1);
        assert!(!store.contains(&arriving));
        assert!(!store.contains(&never));
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
        assert_eq!(store.listed_jobs(), std::collections::BTreeSet::from([JobId(3)]));
        assert_eq!(store.collect_settled(JobId(3), 1), 1);
        assert!(!store.contains(&old));
        assert!(store.contains(&new));
        assert!(store.contains(&model));
        assert_eq!(store.collect_settled(JobId(3), 1), 0);
        assert_eq!(store.listed_jobs().len(), 1, "round 1's list stays");
        store.collect_settled(JobId(3), 2);
        assert!(store.listed_jobs().is_empty(), "a job collected whole is listed no more");
    }

    #[test]
    fn a_blob_a_later_round_also_lists_outlives_the_earlier_round() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let carried = store.put_data(b"final state, continued next round").unwrap();
        let only_old = store.put_data(b"round zero only").unwrap();
        store.tag_round(JobId(4), 0, &[carried, only_old]).unwrap();
        store.tag_round(JobId(4), 1, &[carried]).unwrap();
        assert_eq!(store.collect_settled(JobId(4), 1), 1);
        assert!(store.contains(&carried) && !store.contains(&only_old));
        assert_eq!(store.collect_settled(JobId(4), 2), 1, "gone once its last round goes");
        assert!(!store.contains(&carried));
    }

    #[test]
    fn a_blob_another_jobs_round_lists_outlives_this_jobs_rounds() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let shared = store.put_data(b"a checkpoint both jobs hold").unwrap();
        let ours = store.put_data(b"job 4's alone").unwrap();
        store.tag_round(JobId(4), 0, &[shared, ours]).unwrap();
        store.tag_round(JobId(40), 7, &[shared]).unwrap();
        assert_eq!(store.collect_settled(JobId(4), 1), 1, "job 40's round still needs the shared blob");
        assert!(store.contains(&shared) && !store.contains(&ours));
        // Job 40's collection reads its own lists only (not job 4's, whose name it prefixes).
        assert_eq!(store.collect_settled(JobId(40), 7), 0, "round 7 is kept");
        assert!(store.contains(&shared));
        assert_eq!(store.collect_settled(JobId(40), 8), 1, "gone once the last round listing it goes");
        assert!(!store.contains(&shared));
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

        // However a blob's bytes arrive, the verdict is the one on the whole bytes, for every kind.
        #[test]
        fn a_blob_checked_in_pieces_gets_the_verdict_of_the_whole(
            bytes in proptest::collection::vec(any::<u8>(), 0..2048),
            cuts in proptest::collection::vec(any::<usize>(), 0..6),
            tamper in any::<bool>(),
        ) {
            let manifest = DatasetManifest { shard_bytes: 3, shards: vec![leaf_hash(&bytes)], validation: Hash::ZERO };
            let keys = [
                BlobKey::new(BlobKind::Checkpoint, trellis_trainer::checkpoint::checkpoint_hash(&bytes)),
                BlobKey::data(&bytes),
                BlobKey::new(BlobKind::Shard, leaf_hash(&bytes)),
                BlobKey::new(BlobKind::Trail, Trail::hash_bytes(&bytes)),
            ];
            let mut cases: Vec<(BlobKey, Vec<u8>)> = keys.into_iter().map(|k| (k, bytes.clone())).collect();
            cases.push((BlobKey::new(BlobKind::Dataset, manifest.root()), manifest.to_bytes()));
            for (key, mut blob) in cases {
                if tamper && !blob.is_empty() {
                    let at = cuts.first().copied().unwrap_or(0) % blob.len();
                    blob[at] ^= 0x40;
                }
                let mut points: Vec<usize> = cuts.iter().map(|c| c % (blob.len() + 1)).collect();
                points.sort_unstable();
                let mut verifier = BlobVerifier::new(key);
                let mut from = 0;
                for point in points.into_iter().chain([blob.len()]) {
                    verifier.update(&blob[from..point]);
                    from = point;
                }
                prop_assert_eq!(verifier.matches(), key.verify(&blob));
                prop_assert_eq!(key.verify(&blob), !tamper || blob.is_empty());
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
                let verified = BlobKey::new(BlobKind::Dataset, parsed.root()).verify(&bytes);
                prop_assert_eq!(verified, parsed.to_bytes() == bytes);
            }
        }
    }
}
