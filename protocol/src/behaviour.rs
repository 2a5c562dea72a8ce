//! How a participant behaves: the one vocabulary of misbehaviour that the node's devnets and
//! end-to-end tests stage with real processes and the simulator stages in its seeded runs.
//! Everything but `Honest` and `Straggler` (a slow machine) is an attack, kept so that tests and devnets can show what the
//! protocol does to cheaters: a node can only be told to misbehave when its `trellis` binary is
//! built with the `adversary` feature (`make devnet` and `make test` build it so; a plain
//! `cargo build` and `make build` do not), through `trellis run --behaviour` or
//! `trellis devnet --adversary KIND=COUNT`. The simulator stages the miners' kinds it models
//! ([`SIMULATED_MINERS`]).
//!
//! What each one does and what should catch it (docs/threat-model.md has the full table):
//! - `poison-sign-flip`, `poison-noise`: train honestly, publish the trail, send −Δ or noise
//!   with Δ's norm; the checkers' Δ link check fails (`Invalid`): poisoner.
//! - `fake-trail`: trains nothing; publishes checkpoints that hash correctly but were never
//!   computed (the start state plus noise) and the Δ they imply; any sampled segment fails to
//!   replay (`Invalid`): poisoner.
//! - `unit-gap`: trains only ⌈H/c⌉ of its H steps, checkpointing after every one of them, and
//!   pads the losses to H: every one-step segment would replay, but the checkpoints are not where
//!   a round's checkpoints sit (`Invalid(TrailMismatch)`): poisoner.
//! - `skip-work`: commits and reveals made-up hashes and serves nothing (`Unavailable`): slashed
//!   as much as a poisoner, ejected (withholding costs what faking costs).
//! - `copy`: waits for another worker's commitment and commits it as its own: the binding covers
//!   the original's address, so the copy can never be revealed: freeloader.
//! - `withhold`: trains, commits and reveals honestly but never publishes its blobs
//!   (`Unavailable`): slashed as a poisoner, ejected.
//! - `lying-peer`: trains honestly, but its blob exchange lies to everyone: doctored copies of
//!   the other miners' trails it fetched, and manifests over the size limit for anything else.
//!   Checkers move on to honest holders and stop asking it; nobody honest is punished.
//! - `forged-start`: in a streaming job (`fragments > 1`), a round that continues its accepted
//!   state names that state but starts from one of its own making (every weight shifted), then
//!   trains honestly; every checker derives the start from the named state and finds the trail's
//!   first checkpoint another (`Invalid(StartMismatch)`): poisoner. Elsewhere it trains honestly.
//!
//! - `straggler`: not an attack but a slow machine: trains honestly at a third of its speed
//!   (after each step it waits twice that step's time). In a job with `min_inner_steps < H` it
//!   commits what it trained once the other workers have committed, and is paid for it; with
//!   `min_inner_steps = H` the round waits for it (or it misses the commit deadline).
//!
//! And a validator's:
//! - `forge-aggregate`: a validator that takes a forged outer update (a model hash nobody
//!   computed) for its own, sends it and proposes blocks carrying it; every honest validator
//!   recomputes the aggregate, votes nil on those blocks, and commits the honest one.
//! - `double-propose`: a validator that, whenever it proposes, signs and sends a second valid
//!   block for the same height and round (the proposal flood's first step); every honest
//!   validator reports the two signed parts, and the contracts slash and jail it.

use std::fmt;
use std::str::FromStr;

/// A participant's behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Behaviour {
    #[default]
    Honest,
    /// Sends −Δ.
    PoisonSignFlip,
    /// Sends noise with the norm of its honest Δ.
    PoisonNoise,
    /// Publishes checkpoints that were never computed.
    FakeTrail,
    /// Commits without training.
    SkipWork,
    /// Commits another worker's commitment.
    Copy,
    /// Never serves its blobs.
    Withhold,
    /// Trains ⌈H/c⌉ steps and checkpoints after each.
    UnitGap,
    /// Serves doctored blobs and oversized manifests to its peers.
    LyingPeer,
    /// (A validator) proposes an aggregate it never computed.
    ForgeAggregate,
    /// (A validator) says `Invalid` about every segment it checks, quoting a checkpoint the
    /// miner never claimed.
    Frame,
    /// (A miner) trains honestly, three times slower than it could.
    Straggler,
    /// (A miner of a streaming job) names its accepted state as the one it continues, but starts
    /// from a state of its own making.
    ForgedStart,
    /// (A validator) signs two blocks for every round it proposes.
    DoublePropose,
}

/// The miners' behaviours the simulator stages (it does not train, so those it models are
/// the ones whose outcome a checker's verdict or the chain's rules decide).
pub const SIMULATED_MINERS: [Behaviour; 5] =
    [Behaviour::Honest, Behaviour::FakeTrail, Behaviour::Copy, Behaviour::SkipWork, Behaviour::Withhold];

impl Behaviour {
    pub const ALL: [Behaviour; 14] = [
        Behaviour::Honest,
        Behaviour::PoisonSignFlip,
        Behaviour::PoisonNoise,
        Behaviour::FakeTrail,
        Behaviour::SkipWork,
        Behaviour::Copy,
        Behaviour::Withhold,
        Behaviour::UnitGap,
        Behaviour::LyingPeer,
        Behaviour::ForgeAggregate,
        Behaviour::Frame,
        Behaviour::Straggler,
        Behaviour::ForgedStart,
        Behaviour::DoublePropose,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Behaviour::Honest => "honest",
            Behaviour::PoisonSignFlip => "poison-sign-flip",
            Behaviour::PoisonNoise => "poison-noise",
            Behaviour::FakeTrail => "fake-trail",
            Behaviour::SkipWork => "skip-work",
            Behaviour::Copy => "copy",
            Behaviour::Withhold => "withhold",
            Behaviour::UnitGap => "unit-gap",
            Behaviour::LyingPeer => "lying-peer",
            Behaviour::ForgeAggregate => "forge-aggregate",
            Behaviour::Frame => "frame",
            Behaviour::Straggler => "straggler",
            Behaviour::ForgedStart => "forged-start",
            Behaviour::DoublePropose => "double-propose",
        }
    }

    /// Whether a validator (rather than a miner) behaves this way.
    pub fn is_validators(self) -> bool {
        matches!(self, Behaviour::ForgeAggregate | Behaviour::Frame | Behaviour::DoublePropose)
    }

    /// Whether the miner produces a trail of its own (trained, partly trained or faked).
    pub fn works(self) -> bool {
        !matches!(self, Behaviour::SkipWork | Behaviour::Copy)
    }
}

impl fmt::Display for Behaviour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Behaviour {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Behaviour::ALL.into_iter().find(|b| b.name() == text).ok_or_else(|| {
            let names: Vec<_> = Behaviour::ALL.iter().map(|b| b.name()).collect();
            format!("unknown miner behaviour '{text}' (one of: {})", names.join(", "))
        })
    }
}

/// `KIND=COUNT` (or `KIND`, meaning one), as `trellis devnet --adversary` takes it.
pub fn parse_adversary(text: &str) -> Result<(Behaviour, usize), String> {
    let (kind, count) = match text.split_once('=') {
        Some((kind, count)) => {
            let count: usize =
                count.parse().map_err(|_| format!("'{count}' in '{text}' is not a count (KIND=COUNT)"))?;
            (kind, count)
        }
        None => (text, 1),
    };
    let behaviour: Behaviour = kind.parse()?;
    if behaviour == Behaviour::Honest {
        return Err("honest miners are set with --miners, not --adversary".into());
    }
    if count == 0 || count > 16 {
        return Err(format!("{count} adversaries of kind {kind}: between 1 and 16 please"));
    }
    Ok((behaviour, count))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_parses_back_and_adversary_specs_are_checked() {
        for behaviour in Behaviour::ALL {
            assert_eq!(behaviour.name().parse::<Behaviour>(), Ok(behaviour));
            let json = serde_json::to_value(behaviour).unwrap();
            assert_eq!(json, behaviour.name(), "serde and FromStr agree on {behaviour}");
        }
        assert_eq!(parse_adversary("copy=2"), Ok((Behaviour::Copy, 2)));
        assert_eq!(parse_adversary("fake-trail"), Ok((Behaviour::FakeTrail, 1)));
        assert!(parse_adversary("honest=1").unwrap_err().contains("--miners"));
        assert!(parse_adversary("sneaky=1").unwrap_err().contains("one of: honest"));
        assert!(parse_adversary("copy=x").unwrap_err().contains("not a count"));
        assert!(parse_adversary("copy=0").is_err());
    }
}
