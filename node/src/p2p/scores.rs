//! How much the node trusts each peer of its peer network, and which peers it has dropped.
//!
//! A pure ledger: callers report [`Offence`]s with the time they happened, and ask whether a
//! peer is banned. Offences an honest peer can never commit (serving bytes that do not match
//! their own manifest, greeting us for another chain) ban at once; gossip that does not decode
//! or carries a bad signature costs [`Offence::InvalidGossip`]'s points, and a peer whose score
//! falls to [`BAN_SCORE`] is banned. Scores heal by [`HEAL_PER_MINUTE`] points a minute, so a
//! peer that once relayed something we could not read is not dropped for it forever; a ban lasts
//! [`BAN`]. The swarm driver disconnects banned peers and refuses their connections until the ban
//! is lifted. At most [`MAX_TRACKED`] peers are tracked (the longest-unpenalized peer that is not
//! banned gives way, so a flood of new offenders lifts no ban).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;

/// How long a banned peer stays disconnected.
pub const BAN: Duration = Duration::from_secs(600);
/// A score at or below this bans the peer.
pub const BAN_SCORE: i64 = -100;
/// Points a score regains per minute, up to 0.
pub const HEAL_PER_MINUTE: i64 = 10;
/// Most peers with a score or a ban at once.
const MAX_TRACKED: usize = 4096;

/// Something a peer did that costs it trust.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offence {
    /// Served blob bytes that do not match its own manifest or the blob's address, or claimed a
    /// blob larger than any node may hold.
    LyingBlob,
    /// Greeted us as a node of another chain (another id or another genesis).
    WrongChain,
    /// Gossiped a batch that does not decode, or a transaction whose signature is bad.
    InvalidGossip,
}

impl Offence {
    /// Points the offence costs.
    pub fn cost(self) -> i64 {
        match self {
            Offence::LyingBlob | Offence::WrongChain => -BAN_SCORE,
            Offence::InvalidGossip => 50,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Standing {
    score: i64,
    updated: Instant,
    banned_until: Option<Instant>,
}

impl Standing {
    fn healed(mut self, now: Instant) -> Self {
        let minutes = now.saturating_duration_since(self.updated).as_secs() / 60;
        if minutes > 0 {
            self.score = (self.score + HEAL_PER_MINUTE.saturating_mul(minutes as i64)).min(0);
            self.updated += Duration::from_secs(minutes * 60);
        }
        self
    }
}

/// Every peer's score and ban.
#[derive(Debug, Default)]
pub struct PeerScores {
    peers: HashMap<PeerId, Standing>,
}

impl PeerScores {
    /// Records `offence` by `peer` at `now`; true when this bans the peer.
    pub fn penalize(&mut self, peer: PeerId, offence: Offence, now: Instant) -> bool {
        if !self.peers.contains_key(&peer) && self.peers.len() >= MAX_TRACKED {
            // Make room with the longest-unpenalized peer that is not banned: a flood of new
            // offenders must not lift a standing ban. Only when every tracked peer is banned does
            // the ban that ends first go.
            let active = |s: &Standing| s.banned_until.is_some_and(|until| until > now);
            let evicted = self
                .peers
                .iter()
                .filter(|(_, s)| !active(s))
                .min_by_key(|(_, s)| s.updated)
                .or_else(|| self.peers.iter().min_by_key(|(_, s)| s.banned_until))
                .map(|(p, _)| *p);
            if let Some(evicted) = evicted {
                self.peers.remove(&evicted);
            }
        }
        let standing =
            self.peers.get(&peer).copied().unwrap_or(Standing { score: 0, updated: now, banned_until: None });
        let mut standing = standing.healed(now);
        standing.score = standing.score.saturating_sub(offence.cost());
        let newly_banned = standing.score <= BAN_SCORE && standing.banned_until.is_none_or(|until| until <= now);
        if standing.score <= BAN_SCORE {
            standing.banned_until = Some(now + BAN);
            // The ban is the punishment: once it is lifted the peer starts again from a low score.
            standing.score = BAN_SCORE / 2;
        }
        self.peers.insert(peer, standing);
        newly_banned
    }

    /// Whether `peer` is banned at `now`.
    pub fn is_banned(&self, peer: &PeerId, now: Instant) -> bool {
        self.peers.get(peer).and_then(|s| s.banned_until).is_some_and(|until| until > now)
    }

    /// The peer's score at `now` (0 for a peer never penalized).
    pub fn score(&self, peer: &PeerId, now: Instant) -> i64 {
        self.peers.get(peer).map_or(0, |s| s.healed(now).score)
    }

    /// Every peer banned at `now`.
    pub fn banned(&self, now: Instant) -> Vec<PeerId> {
        self.peers.iter().filter(|(_, s)| s.banned_until.is_some_and(|until| until > now)).map(|(p, _)| *p).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_gossip_twice_bans_lies_ban_at_once_and_bans_lapse() {
        let mut scores = PeerScores::default();
        let (relay, liar, stranger) = (PeerId::random(), PeerId::random(), PeerId::random());
        let start = Instant::now();
        assert!(!scores.penalize(relay, Offence::InvalidGossip, start), "one bad batch does not ban");
        assert_eq!(scores.score(&relay, start), -50);
        assert!(!scores.is_banned(&relay, start));
        assert!(scores.penalize(relay, Offence::InvalidGossip, start + Duration::from_secs(1)));
        assert!(scores.is_banned(&relay, start + Duration::from_secs(2)));
        assert!(scores.penalize(liar, Offence::LyingBlob, start));
        assert!(scores.penalize(stranger, Offence::WrongChain, start));
        assert_eq!(scores.banned(start + Duration::from_secs(5)).len(), 3);
        // Once banned, more offences extend the ban but do not report a new one.
        assert!(!scores.penalize(liar, Offence::LyingBlob, start + Duration::from_secs(10)));
        let later = start + BAN + Duration::from_secs(11);
        assert!(!scores.is_banned(&relay, later), "a ban lasts BAN");
        assert!(scores.is_banned(&liar, start + BAN + Duration::from_secs(9)), "the second lie extended it");
        assert!(scores.banned(later).is_empty());
    }

    #[test]
    fn a_flood_of_new_offenders_does_not_lift_a_ban() {
        let mut scores = PeerScores::default();
        let start = Instant::now();
        let liar = PeerId::random();
        assert!(scores.penalize(liar, Offence::LyingBlob, start));
        // MAX_TRACKED fresh identities, each with one bad batch, all after the liar's ban.
        for i in 0..MAX_TRACKED {
            scores.penalize(PeerId::random(), Offence::InvalidGossip, start + Duration::from_millis(1 + i as u64));
        }
        assert!(scores.is_banned(&liar, start + Duration::from_secs(10)), "the flood lifted the liar's ban");
        assert!(scores.peers.len() <= MAX_TRACKED);
    }

    #[test]
    fn scores_heal_with_time() {
        let mut scores = PeerScores::default();
        let peer = PeerId::random();
        let start = Instant::now();
        scores.penalize(peer, Offence::InvalidGossip, start);
        assert_eq!(scores.score(&peer, start + Duration::from_secs(120)), -50 + 2 * HEAL_PER_MINUTE);
        // Healed enough that a second bad batch, ten minutes on, does not ban.
        assert!(!scores.penalize(peer, Offence::InvalidGossip, start + Duration::from_secs(600)));
        assert_eq!(scores.score(&peer, start + Duration::from_secs(600)), -50);
        assert_eq!(scores.score(&peer, start + Duration::from_secs(3600)), 0, "healing stops at 0");
    }
}
