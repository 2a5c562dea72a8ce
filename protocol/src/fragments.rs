//! Streaming DiLoCo on chain (Douillard et al., 2025): the flat parameters in `F` contiguous
//! fragments of about equal size, and round `r` of a job synchronises fragment `r mod F` only.
//!
//! A miner whose work of round `r − 1` was accepted may continue from its own final state of
//! that round, with the fragment round `r − 1` synchronised taken from θ_r (its other fragments
//! go on training without a reset, moments kept); any other miner starts from θ_r. Either way
//! its Δ is `θ_r − θ_final` over the round's fragment alone, and the outer step moves that
//! fragment of θ and of the outer momentum alone. Since θ changes only in the fragment a round
//! synchronises, θ_r's values of any other fragment are the ones the miner last took, so every
//! Δ is still "global minus local" over the steps since that fragment was taken.
//!
//! With `F = 1` (every job that does not ask for fragments) the fragment is the whole model
//! and nothing continues: plain DiLoCo.

use std::ops::Range;

use trellis_proto::JobSpec;

/// The most fragments a job may have (each fragment is synchronised every `F` rounds).
pub const MAX_FRAGMENTS: u32 = 64;

/// Coordinates of fragment `fragment` of `fragments` in a flat vector of `parameters` values:
/// `⌊f·n/F⌋ .. ⌊(f+1)·n/F⌋` (the same split as `trellis train --fragments`). Empty when
/// `fragment ≥ fragments` or `fragments == 0`.
pub fn span(parameters: usize, fragments: u32, fragment: u32) -> Range<usize> {
    if fragments == 0 || fragment >= fragments {
        return 0..0;
    }
    let at = |f: u32| (parameters as u128 * u128::from(f) / u128::from(fragments)) as usize;
    at(fragment)..at(fragment + 1)
}

/// Whether the job is Streaming DiLoCo (more than one fragment).
pub fn is_streaming(spec: &JobSpec) -> bool {
    spec.diloco.fragments > 1
}

/// The fragment round `round` of a job synchronises: `round mod F` (0 for plain DiLoCo).
pub fn round_fragment(spec: &JobSpec, round: u32) -> u32 {
    round % spec.diloco.fragments.max(1)
}

/// The coordinates round `round` synchronises in a model of `parameters` values: its Δ holds
/// exactly these, and its outer step moves exactly these.
pub fn round_span(spec: &JobSpec, round: u32, parameters: usize) -> Range<usize> {
    span(parameters, spec.diloco.fragments.max(1), round_fragment(spec, round))
}

/// The coordinates a start state continued into round `round` takes from θ_r: those the
/// previous round synchronised. `None` for round 0 (nothing precedes it).
pub fn taken_from_global(spec: &JobSpec, round: u32, parameters: usize) -> Option<Range<usize>> {
    let previous = round.checked_sub(1)?;
    Some(round_span(spec, previous, parameters))
}

/// The weight of a Δ in round `round`'s mean: the inner steps its fragment trained since the
/// miner took it. A miner whose state began at round `since` (a fresh start from θ_since, then
/// continued without a break) took round `round`'s fragment at the later of `since` and the round
/// after that fragment's last synchronisation, so its Δ holds `min(F, round − since + 1)` rounds of
/// `steps` each; a fresh start's holds one. Weighing both alike let a newcomer's short Δ pull a
/// fragment back toward θ by as much as a miner's `F` rounds of training moved it. Plain DiLoCo:
/// the steps alone (every Δ covers its round).
pub fn merge_weight(spec: &JobSpec, round: u32, since: u32, steps: u32) -> u32 {
    if !is_streaming(spec) {
        return steps;
    }
    let rounds = round.saturating_sub(since).saturating_add(1).min(spec.diloco.fragments);
    steps.saturating_mul(rounds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delta_weighs_the_rounds_its_fragment_trained_up_to_f() {
        let mut spec =
            crate::outer::tests::spec(trellis_proto::OuterOptimizer::Average, trellis_proto::AggregationRule::Mean);
        spec.diloco.fragments = 1;
        assert_eq!(merge_weight(&spec, 9, 0, 30), 30, "plain DiLoCo: the steps alone");
        spec.diloco.fragments = 4;
        assert_eq!(merge_weight(&spec, 9, 9, 30), 30, "a fresh start: one round");
        assert_eq!(merge_weight(&spec, 9, 8, 30), 60, "continued once");
        assert_eq!(merge_weight(&spec, 9, 6, 30), 120, "continued for F rounds: the whole cycle");
        assert_eq!(merge_weight(&spec, 9, 0, 30), 120, "capped at F: the fragment was taken F rounds ago");
        assert_eq!(merge_weight(&spec, 3, 7, 30), 30, "a start after the round (never on chain): one round");
    }

    #[test]
    fn fragments_tile_the_model_without_gap_or_overlap() {
        for parameters in [0usize, 1, 7, 64, 1_000_003] {
            for fragments in 1..=9u32 {
                let spans: Vec<_> = (0..fragments).map(|f| span(parameters, fragments, f)).collect();
                assert_eq!(spans[0].start, 0);
                assert_eq!(spans.last().map(|s| s.end), Some(parameters));
                assert!(spans.windows(2).all(|w| w[0].end == w[1].start), "{parameters} / {fragments}");
                let (min, max) = spans.iter().fold((usize::MAX, 0), |(lo, hi), s| (lo.min(s.len()), hi.max(s.len())));
                assert!(max - min <= 1, "fragments differ by at most one value");
            }
        }
        assert_eq!(span(10, 2, 2), 0..0, "a fragment past the last is empty");
        assert_eq!(span(10, 0, 0), 0..0);
    }

    #[test]
    fn a_huge_model_splits_without_overflow() {
        let parameters = usize::MAX / 2;
        assert_eq!(span(parameters, MAX_FRAGMENTS, MAX_FRAGMENTS - 1).end, parameters);
    }
}
