//! The validator's side of the chain's beacon (`trellis_protocol::beacon`, ADR 0004): it
//! commits a hash onion derived from its key and reveals the next layer in every block it
//! proposes.
//!
//! Onion seeds are derived from the validator's secret key and the onion's generation, so a
//! restarted node finds its next reveal from the chain state alone: there is no extra secret
//! to back up and nothing to lose.

use std::sync::{Arc, Mutex};

use trellis_contracts::state::BeaconOnion;
use trellis_proto::{Hash, Height, Keypair, TxKind};
use trellis_protocol::beacon::{self, Onion, OnionError, DEFAULT_LAYERS};

use crate::shared::{NodeEvent, Shared};

/// Blocks a sent commitment may stay unconfirmed before it is sent again.
const RESEND_AFTER_BLOCKS: u64 = 20;

/// A validator's onions: builds the one the chain holds, once, and answers its reveals.
pub struct BeaconKeeper {
    secret: [u8; 32],
    built: Mutex<Option<(u32, Arc<Onion>)>>,
}

impl std::fmt::Debug for BeaconKeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BeaconKeeper").finish_non_exhaustive()
    }
}

impl BeaconKeeper {
    pub fn new(key: &Keypair) -> Self {
        Self { secret: key.seed(), built: Mutex::new(None) }
    }

    /// Onion `generation` with `layers` layers (built on first use: ≈ 0.2 s for 2^20 layers).
    fn onion(&self, generation: u32, layers: u32) -> Result<Arc<Onion>, OnionError> {
        let mut built = self.built.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((held_generation, onion)) = built.as_ref() {
            if *held_generation == generation && onion.layers() == layers {
                return Ok(onion.clone());
            }
        }
        let onion = Arc::new(Onion::new(beacon::onion_seed(&self.secret, generation), layers)?);
        *built = Some((generation, onion.clone()));
        Ok(onion)
    }

    /// What a block this validator proposes at `height` reveals, given the onion the chain holds
    /// for it: the next layer of an active onion, else `Hash::ZERO`. An onion the chain holds
    /// that is not ours (another node with our key committed it) cannot be revealed: we log it
    /// and reveal `Hash::ZERO`, which other validators refuse, rather than propose garbage.
    pub fn reveal(&self, held: Option<&BeaconOnion>, height: Height) -> Hash {
        let Some(held) = held.filter(|o| o.active_at(height)) else {
            return Hash::ZERO;
        };
        let next = self.onion(held.generation, held.layers).ok().and_then(|onion| onion.reveal(held.remaining));
        match next {
            Some(reveal) if beacon::step(&reveal) == held.held => reveal,
            _ => {
                tracing::error!(
                    target: "node::beacon", generation = held.generation,
                    "the chain holds a beacon onion this key did not build (is another node running with this key?); this node cannot propose"
                );
                Hash::ZERO
            }
        }
    }

    /// The commitment to send when the chain holds no onion for us or ours is spent.
    pub fn commitment_due(&self, held: Option<&BeaconOnion>) -> Option<TxKind> {
        let generation = BeaconOnion::due_generation(held)?;
        let onion = self.onion(generation, DEFAULT_LAYERS).ok()?;
        Some(TxKind::CommitBeacon { tip: onion.tip(), layers: DEFAULT_LAYERS })
    }
}

/// Keeps this validator's onion committed: after every committed block, sends a commitment
/// when one is due (and again if it was not included after [`RESEND_AFTER_BLOCKS`]).
pub async fn run(shared: Arc<Shared>, key: Arc<Keypair>, keeper: Arc<BeaconKeeper>) {
    let mut events = shared.events.subscribe();
    let mut sent_at: Option<u64> = None;
    loop {
        let height = shared.ledger.head().map(|h| h.height.0).unwrap_or(0);
        let held = shared.ledger.beacon_onion(&key.address());
        let keeper_for_check = keeper.clone();
        // Building an onion hashes a million times: off the async threads.
        let due =
            tokio::task::spawn_blocking(move || keeper_for_check.commitment_due(held.as_ref())).await.ok().flatten();
        match due {
            None => sent_at = None,
            Some(kind) if sent_at.is_none_or(|at| height >= at + RESEND_AFTER_BLOCKS) => {
                match crate::roles::sign_and_admit(&shared, &key, kind, crate::roles::ROLE_TX_FEE) {
                    Ok(_) => sent_at = Some(height),
                    Err(error) => {
                        tracing::warn!(target: "node::beacon", %error, "could not send the beacon commitment; will retry")
                    }
                }
            }
            Some(_) => {}
        }
        match events.recv().await {
            Ok(NodeEvent::Committed { .. }) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(onion: &Onion, remaining: u32, generation: u32, active_from: Height) -> BeaconOnion {
        let held = if remaining == onion.layers() { onion.tip() } else { onion.reveal(remaining + 1).unwrap() };
        BeaconOnion { held, layers: onion.layers(), remaining, generation, active_from }
    }

    #[test]
    fn a_keeper_reveals_its_onion_layer_by_layer_and_renews_it_when_spent() {
        let key = Keypair::from_seed([8; 32]);
        let keeper = BeaconKeeper::new(&key);
        let Some(TxKind::CommitBeacon { tip, layers }) = keeper.commitment_due(None) else {
            panic!("a first onion is due")
        };
        assert_eq!(layers, DEFAULT_LAYERS);
        let onion = keeper.onion(0, layers).unwrap();
        assert_eq!(onion.tip(), tip);

        let committed = held(&onion, layers, 0, Height(10));
        assert_eq!(keeper.reveal(Some(&committed), Height(9)), Hash::ZERO, "not active yet");
        let first = keeper.reveal(Some(&committed), Height(10));
        assert_eq!(beacon::step(&first), tip);
        assert_eq!(keeper.commitment_due(Some(&committed)), None);

        let after_one = held(&onion, layers - 1, 0, Height(10));
        assert_eq!(beacon::step(&keeper.reveal(Some(&after_one), Height(11))), first);

        let spent = BeaconOnion { remaining: 0, ..committed };
        assert_eq!(keeper.reveal(Some(&spent), Height(12)), Hash::ZERO);
        let Some(TxKind::CommitBeacon { tip: renewed, .. }) = keeper.commitment_due(Some(&spent)) else {
            panic!("renewal is due")
        };
        assert_ne!(renewed, tip, "each generation has its own seed");

        // A restarted node (a new keeper, same key) finds the same layers.
        assert_eq!(
            BeaconKeeper::new(&key).reveal(Some(&after_one), Height(11)),
            keeper.reveal(Some(&after_one), Height(11))
        );
        // Another key cannot reveal this onion.
        assert_eq!(BeaconKeeper::new(&Keypair::from_seed([9; 32])).reveal(Some(&after_one), Height(11)), Hash::ZERO);
    }
}
