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

/// The state root: blake3 (domain "state root") over every entry in key order, each as
/// `len32(key) ‖ key ‖ len32(value) ‖ value`. Linear in the state's size, which is fine at the
/// scale of jobs and accounts this chain holds; a Merkle trie can replace it without changing
/// any other module.
pub fn state_root<S: KvStore + ?Sized>(store: &S) -> Hash {
    let mut hasher = HashDomain::StateRoot.hasher();
    for (key, value) in store.scan_prefix(&[]) {
        hasher.update(&(key.len() as u32).to_le_bytes());
        hasher.update(&key);
        hasher.update(&(value.len() as u32).to_le_bytes());
        hasher.update(&value);
    }
    Hash(*hasher.finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_reads_its_writes_and_leaves_the_base_alone_until_applied() {
        let mut base = MemoryKv::new();
        base.put(b"a/1".to_vec(), b"x".to_vec());
        base.put(b"a/2".to_vec(), b"y".to_vec());
        let root = state_root(&base);
        let mut overlay = Overlay::new(&base);
        overlay.put(b"a/3".to_vec(), b"z".to_vec());
        overlay.delete(b"a/1");
        assert_eq!(overlay.get(b"a/1"), None);
        assert_eq!(overlay.scan_prefix(b"a/").len(), 2);
        let changes = overlay.into_changes();
        assert_eq!(state_root(&base), root, "base untouched before apply");
        apply_changes(&mut base, changes);
        assert_eq!(base.get(b"a/3"), Some(b"z".to_vec()));
        assert_ne!(state_root(&base), root);
    }

    #[test]
    fn state_root_is_independent_of_insertion_order() {
        let mut a = MemoryKv::new();
        let mut b = MemoryKv::new();
        a.put(b"k1".to_vec(), b"v1".to_vec());
        a.put(b"k2".to_vec(), b"v2".to_vec());
        b.put(b"k2".to_vec(), b"v2".to_vec());
        b.put(b"k1".to_vec(), b"v1".to_vec());
        assert_eq!(state_root(&a), state_root(&b));
    }
}
