//! The chain's random beacon: a hash onion per validator, mixed block by block (ADR 0004).
//!
//! A validator picks a secret seed `s` and commits `tip = step^L(s)` on chain. Every block it
//! proposes reveals the next layer down — the value `r` with `step(r)` equal to the layer it
//! revealed last — and the chain mixes it into the beacon:
//! `beacon_h = mix(beacon_{h−1}, h, proposer, r)`. The reveal is fixed the moment the onion is
//! committed, so nothing a proposer chooses (time, transactions, their order) moves the beacon;
//! its one lever is to not propose at all, which hands the block to the next proposer and its
//! own fixed reveal. Nobody but the validator knows its next reveal, so nobody knows `beacon_h`
//! before block `h` is proposed.
//!
//! [`Onion`] is the validator's side: it finds any layer from the seed in at most
//! [`CHECKPOINT_EVERY`] hashes, keeping one checkpoint per that many layers.

use trellis_proto::{Address, Hash, HashDomain};

/// Most layers one onion may have (2^24: ~16.8 million proposals).
pub const MAX_LAYERS: u32 = 1 << 24;
/// Fewest layers the chain accepts in a commitment (2^10). A validator picks a new onion's seed
/// when it commits, after seeing the beacon; were onions short, a validator could renew often
/// and, when it also proposes the blocks in between, grind that seed against a beacon it can
/// predict. With at least 2^10 layers it chooses a seed once per 1024 of its own proposals.
pub const MIN_LAYERS: u32 = 1 << 10;
/// Layers a node commits by default (2^20 proposals; about 0.2 s to build on one core).
pub const DEFAULT_LAYERS: u32 = 1 << 20;
/// One checkpoint kept per this many layers.
pub const CHECKPOINT_EVERY: u32 = 1024;

/// One onion layer outward: `step(layer_{k−1}) = layer_k`.
pub fn step(layer: &Hash) -> Hash {
    Hash::digest(HashDomain::BeaconOnion, &layer.0)
}

/// The seed of onion `generation` of the validator whose secret key is `secret`: nodes derive
/// their onions from their key, so a restart needs nothing stored. 41 bytes are hashed, never 32
/// like an onion layer, so a seed is never another onion's layer.
pub fn onion_seed(secret: &[u8; 32], generation: u32) -> Hash {
    let mut input = Vec::with_capacity(41);
    input.extend_from_slice(b"seed\0");
    input.extend_from_slice(secret);
    input.extend_from_slice(&generation.to_le_bytes());
    Hash::digest(HashDomain::BeaconOnion, &input)
}

/// The beacon after block `height`, proposed by `proposer` with `reveal`.
pub fn mix(previous: &Hash, height: u64, proposer: &Address, reveal: &Hash) -> Hash {
    let mut hasher = HashDomain::BeaconMix.hasher();
    hasher.update(&previous.0);
    hasher.update(&height.to_le_bytes());
    hasher.update(&proposer.0);
    hasher.update(&reveal.0);
    Hash(*hasher.finalize().as_bytes())
}

/// A validator's onion: layer 0 is the seed, layer `layers` the committed tip.
#[derive(Clone)]
pub struct Onion {
    layers: u32,
    /// `checkpoints[i]` is layer `i · CHECKPOINT_EVERY`.
    checkpoints: Vec<Hash>,
}

impl std::fmt::Debug for Onion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The seed is secret: never print it.
        f.debug_struct("Onion").field("layers", &self.layers).field("tip", &self.tip()).finish()
    }
}

impl Onion {
    /// Builds the onion of `layers` layers (1..=[`MAX_LAYERS`]) over `seed`.
    pub fn new(seed: Hash, layers: u32) -> Result<Self, OnionError> {
        if layers == 0 || layers > MAX_LAYERS {
            return Err(OnionError::Layers(layers));
        }
        let mut checkpoints = Vec::with_capacity((layers / CHECKPOINT_EVERY + 1) as usize);
        let mut layer = seed;
        for k in 0..=layers {
            if k % CHECKPOINT_EVERY == 0 {
                checkpoints.push(layer);
            }
            if k < layers {
                layer = step(&layer);
            }
        }
        Ok(Self { layers, checkpoints })
    }

    pub fn layers(&self) -> u32 {
        self.layers
    }

    /// Layer `k` (0 = seed), or `None` past the tip.
    pub fn layer(&self, k: u32) -> Option<Hash> {
        if k > self.layers {
            return None;
        }
        let mut layer = self.checkpoints[(k / CHECKPOINT_EVERY) as usize];
        for _ in 0..k % CHECKPOINT_EVERY {
            layer = step(&layer);
        }
        Some(layer)
    }

    /// The committed value: layer `layers`.
    pub fn tip(&self) -> Hash {
        self.layer(self.layers).expect("the tip is a layer")
    }

    /// What to reveal when `remaining` layers are left unrevealed on chain (the chain holds
    /// layer `remaining`; the reveal is layer `remaining − 1`). `None` when the onion is spent.
    pub fn reveal(&self, remaining: u32) -> Option<Hash> {
        remaining.checked_sub(1).and_then(|k| self.layer(k))
    }
}

/// Why an onion cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OnionError {
    #[error("an onion has 1 to {MAX_LAYERS} layers, not {0}")]
    Layers(u32),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reveal_steps_onto_the_layer_before_it() {
        let onion = Onion::new(Hash([7; 32]), 3 * CHECKPOINT_EVERY + 5).unwrap();
        let mut held = onion.tip();
        for remaining in (1..=onion.layers()).rev() {
            let reveal = onion.reveal(remaining).unwrap();
            assert_eq!(step(&reveal), held, "layer {remaining}");
            held = reveal;
        }
        assert_eq!(held, Hash([7; 32]), "the last reveal is the seed");
        assert_eq!(onion.reveal(0), None, "a spent onion reveals nothing");
    }

    #[test]
    fn onion_sizes_are_bounded() {
        assert_eq!(Onion::new(Hash::ZERO, 0).unwrap_err(), OnionError::Layers(0));
        assert_eq!(Onion::new(Hash::ZERO, MAX_LAYERS + 1).unwrap_err(), OnionError::Layers(MAX_LAYERS + 1));
        assert_eq!(Onion::new(Hash::ZERO, 1).unwrap().tip(), step(&Hash::ZERO));
    }

    #[test]
    fn the_mix_depends_on_every_input() {
        let base = mix(&Hash([1; 32]), 5, &Address([2; 20]), &Hash([3; 32]));
        assert_ne!(base, mix(&Hash([9; 32]), 5, &Address([2; 20]), &Hash([3; 32])));
        assert_ne!(base, mix(&Hash([1; 32]), 6, &Address([2; 20]), &Hash([3; 32])));
        assert_ne!(base, mix(&Hash([1; 32]), 5, &Address([9; 20]), &Hash([3; 32])));
        assert_ne!(base, mix(&Hash([1; 32]), 5, &Address([2; 20]), &Hash([9; 32])));
    }
}
