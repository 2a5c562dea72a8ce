//! The key-value store the state lives in, and a write overlay that makes a transaction's
//! changes all-or-nothing.

use std::collections::BTreeMap;

use trellis_proto::{Hash, HashDomain};

/// Ordered key-value storage. The node implements it over RocksDB; tests use [`MemoryKv`].
pub trait KvStore {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>>;
    fn put(&mut self, key: Vec<u8>, value: Vec<u8>);
    fn delete(&mut self, key: &[u8]);
    /// Every entry whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, prefix: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)>;
}

/// An in-memory store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryKv {
    entries: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl MemoryKv {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl KvStore for MemoryKv {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.entries.get(key).cloned()
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.entries.insert(key, value);
    }

    fn delete(&mut self, key: &[u8]) {
        self.entries.remove(key);
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.entries
            .range(prefix.to_vec()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// Buffered writes over a store: reads see the buffer first; [`Overlay::into_changes`] hands the
/// buffer back to be applied, and dropping the overlay discards it. A rejected transaction's
/// overlay is dropped, so it leaves the state untouched.
pub struct Overlay<'a, S: KvStore + ?Sized> {
    base: &'a S,
    changes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

/// A set of writes (`None` deletes).
pub type Changes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

impl<'a, S: KvStore + ?Sized> Overlay<'a, S> {
    pub fn new(base: &'a S) -> Self {
        Self { base, changes: BTreeMap::new() }
    }

    pub fn into_changes(self) -> Changes {
        self.changes
    }
}

impl<S: KvStore + ?Sized> KvStore for Overlay<'_, S> {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        match self.changes.get(key) {
            Some(change) => change.clone(),
            None => self.base.get(key),
        }
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.changes.insert(key, Some(value));
    }

    fn delete(&mut self, key: &[u8]) {
        self.changes.insert(key.to_vec(), None);
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = self.base.scan_prefix(prefix).into_iter().collect();
        for (key, change) in self.changes.range(prefix.to_vec()..).take_while(|(k, _)| k.starts_with(prefix)) {
            match change {
                Some(value) => merged.insert(key.clone(), value.clone()),
                None => merged.remove(key),
            };
        }
        merged.into_iter().collect()
    }
}

/// Applies `changes` to `store`.
pub fn apply_changes<S: KvStore + ?Sized>(store: &mut S, changes: Changes) {
    for (key, change) in changes {
        match change {
            Some(value) => store.put(key, value),
            None => store.delete(&key),
        }
    }
}

/// Where the state keeps its own [`StateDigest`]. The entry is left out of the digest it holds.
pub const DIGEST_KEY: &[u8] = b"meta/state-digest";

/// Lanes of the digest: 1024 × 16 bits, as in LtHash16 (Bellare–Micciancio's additive hash over
/// a lattice, sized per Lewi et al. 2019 for ≥ 200 bits of collision resistance).
const LANES: usize = 1024;

/// A homomorphic multiset hash of every state entry: each entry `(key, value)` maps to 1024
/// 16-bit lanes (blake3 XOF in domain "state entry" over `len32(key) ‖ key ‖ len32(value) ‖
/// value`), and the digest is their lane-wise sum mod 2¹⁶. Adding and removing an entry costs one
/// 2 KiB hash, so a block updates it in time proportional to the keys it changed, not to the
/// size of the state (`docs/adr/0005-incremental-state-root.md`). The sum does not depend on
/// the order entries were written in.
#[derive(Clone, PartialEq, Eq)]
pub struct StateDigest {
    lanes: Box<[u16; LANES]>,
}

impl Default for StateDigest {
    fn default() -> Self {
        Self { lanes: Box::new([0; LANES]) }
    }
}

impl std::fmt::Debug for StateDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StateDigest({})", self.root())
    }
}

impl StateDigest {
    /// Bytes of [`StateDigest::to_bytes`].
    pub const ENCODED_LEN: usize = LANES * 2;

    fn entry_lanes(key: &[u8], value: &[u8]) -> [u16; LANES] {
        let mut hasher = HashDomain::StateEntry.hasher();
        hasher.update(&(key.len() as u32).to_le_bytes());
        hasher.update(key);
        hasher.update(&(value.len() as u32).to_le_bytes());
        hasher.update(value);
        let mut bytes = [0u8; LANES * 2];
        hasher.finalize_xof().fill(&mut bytes);
        let mut lanes = [0u16; LANES];
        for (lane, pair) in lanes.iter_mut().zip(bytes.chunks_exact(2)) {
            *lane = u16::from_le_bytes([pair[0], pair[1]]);
        }
        lanes
    }

    /// Counts the entry in.
    pub fn insert(&mut self, key: &[u8], value: &[u8]) {
        for (sum, lane) in self.lanes.iter_mut().zip(Self::entry_lanes(key, value)) {
            *sum = sum.wrapping_add(lane);
        }
    }

    /// Takes an entry counted in before back out.
    pub fn remove(&mut self, key: &[u8], value: &[u8]) {
        for (sum, lane) in self.lanes.iter_mut().zip(Self::entry_lanes(key, value)) {
            *sum = sum.wrapping_sub(lane);
        }
    }

    /// The state root a block header carries: blake3 (domain "state root") of the lanes.
    pub fn root(&self) -> Hash {
        Hash::digest(HashDomain::StateRoot, &self.to_bytes())
    }

    /// The lanes, little-endian.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.lanes.iter().flat_map(|lane| lane.to_le_bytes()).collect()
    }

    /// Reads [`StateDigest::to_bytes`]; `None` when the length is wrong.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != Self::ENCODED_LEN {
            return None;
        }
        let mut digest = Self::default();
        for (lane, pair) in digest.lanes.iter_mut().zip(bytes.chunks_exact(2)) {
            *lane = u16::from_le_bytes([pair[0], pair[1]]);
        }
        Some(digest)
    }

    /// The digest of every entry of `store` but its own, computed from scratch (linear in the
    /// state; for genesis and for checking the incremental one).
    pub fn compute<S: KvStore + ?Sized>(store: &S) -> Self {
        let mut digest = Self::default();
        for (key, value) in store.scan_prefix(&[]) {
            if key != DIGEST_KEY {
                digest.insert(&key, &value);
            }
        }
        digest
    }

    /// The digest `store` holds (the empty digest if it holds none).
    pub fn stored<S: KvStore + ?Sized>(store: &S) -> Result<Self, CorruptDigest> {
        match store.get(DIGEST_KEY) {
            None => Ok(Self::default()),
            Some(bytes) => Self::from_bytes(&bytes).ok_or(CorruptDigest(bytes.len())),
        }
    }
}

/// The stored digest does not have [`StateDigest::ENCODED_LEN`] bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the stored state digest has {0} bytes, not {len}", len = StateDigest::ENCODED_LEN)]
pub struct CorruptDigest(pub usize);

/// The digest `store` will hold once `changes` are applied: each changed key's old entry (read
/// from `store`) goes out, its new one comes in. Costs one entry hash per changed key.
pub fn digest_after<S: KvStore + ?Sized>(store: &S, changes: &Changes) -> Result<StateDigest, CorruptDigest> {
    let mut digest = StateDigest::stored(store)?;
    for (key, change) in changes {
        if key == DIGEST_KEY {
            continue;
        }
        let old = store.get(key);
        if old.as_ref() == change.as_ref() {
            continue;
        }
        if let Some(old) = old {
            digest.remove(key, &old);
        }
        if let Some(new) = change {
            digest.insert(key, new);
        }
    }
    Ok(digest)
}

/// Applies `changes` and stores `digest` (from [`digest_after`] on the same changes).
pub fn apply_with_digest<S: KvStore + ?Sized>(store: &mut S, mut changes: Changes, digest: &StateDigest) {
    changes.remove(DIGEST_KEY);
    apply_changes(store, changes);
    store.put(DIGEST_KEY.to_vec(), digest.to_bytes());
}

/// Applies `changes` to `store`, updating the digest it holds; returns the new state root.
pub fn apply_changes_digested<S: KvStore + ?Sized>(store: &mut S, changes: Changes) -> Result<Hash, CorruptDigest> {
    let digest = digest_after(store, &changes)?;
    apply_with_digest(store, changes, &digest);
    Ok(digest.root())
}

/// The state root of `store` as of its last block: the root of the digest it holds, which
/// block execution keeps up to date ([`apply_changes_digested`]).
pub fn state_root<S: KvStore + ?Sized>(store: &S) -> Result<Hash, CorruptDigest> {
    Ok(StateDigest::stored(store)?.root())
}

/// The state root recomputed from every entry: equal to [`state_root`] whenever the state was
/// only changed by blocks (a property the tests and the simulator check).
pub fn recompute_state_root<S: KvStore + ?Sized>(store: &S) -> Hash {
    StateDigest::compute(store).root()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_reads_its_writes_and_leaves_the_base_alone_until_applied() {
        let mut base = MemoryKv::new();
        base.put(b"a/1".to_vec(), b"x".to_vec());
        base.put(b"a/2".to_vec(), b"y".to_vec());
        let root = recompute_state_root(&base);
        let mut overlay = Overlay::new(&base);
        overlay.put(b"a/3".to_vec(), b"z".to_vec());
        overlay.delete(b"a/1");
        assert_eq!(overlay.get(b"a/1"), None);
        assert_eq!(overlay.scan_prefix(b"a/").len(), 2);
        let changes = overlay.into_changes();
        assert_eq!(recompute_state_root(&base), root, "base untouched before apply");
        apply_changes(&mut base, changes);
        assert_eq!(base.get(b"a/3"), Some(b"z".to_vec()));
        assert_ne!(recompute_state_root(&base), root);
    }

    #[test]
    fn state_root_is_independent_of_insertion_order() {
        let mut a = MemoryKv::new();
        let mut b = MemoryKv::new();
        a.put(b"k1".to_vec(), b"v1".to_vec());
        a.put(b"k2".to_vec(), b"v2".to_vec());
        b.put(b"k2".to_vec(), b"v2".to_vec());
        b.put(b"k1".to_vec(), b"v1".to_vec());
        assert_eq!(recompute_state_root(&a), recompute_state_root(&b));
    }

    #[test]
    fn the_digest_kept_up_to_date_by_changes_equals_the_one_computed_from_scratch() {
        let mut store = MemoryKv::new();
        let mut reference = BTreeMap::new();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _block in 0..50 {
            let mut changes = Changes::new();
            for _ in 0..(next() % 12) {
                let key = format!("k/{}", next() % 40).into_bytes();
                let change =
                    (next() % 3 != 0).then(|| (next() % 5).to_le_bytes()[..1 + (next() % 3) as usize].to_vec());
                changes.insert(key, change);
            }
            for (key, change) in &changes {
                match change {
                    Some(value) => reference.insert(key.clone(), value.clone()),
                    None => reference.remove(key),
                };
            }
            let root = apply_changes_digested(&mut store, changes).unwrap();
            assert_eq!(root, recompute_state_root(&store));
            assert_eq!(root, state_root(&store).unwrap());
            let mut fresh = MemoryKv::new();
            reference.iter().for_each(|(k, v)| fresh.put(k.clone(), v.clone()));
            assert_eq!(root, recompute_state_root(&fresh), "the digest is a function of the entries alone");
        }
        let before = state_root(&store).unwrap();
        let changes: Changes = [(b"k/new".to_vec(), Some(b"v".to_vec()))].into_iter().collect();
        assert_ne!(apply_changes_digested(&mut store, changes).unwrap(), before, "a new entry moves the root");
    }

    #[test]
    fn a_digest_of_the_wrong_length_is_reported_not_trusted() {
        let mut store = MemoryKv::new();
        store.put(DIGEST_KEY.to_vec(), vec![0; 7]);
        assert_eq!(state_root(&store), Err(CorruptDigest(7)));
        assert!(apply_changes_digested(&mut store, Changes::new()).is_err());
    }
}
