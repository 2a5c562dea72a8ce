//! Made-up losses: a trail whose recorded losses do not follow from its start (copied, smoothed
//! or padded). The old checker computed whether they matched and then ignored it; the protocol
//! compares every re-executed step's loss.

mod common;

use common::*;
use trellis_proto::{InvalidReason, VerdictOutcome};
use trellis_verifier::segment::{check_segment, Mode};

#[test]
fn a_recorded_loss_that_replay_does_not_compute_is_a_loss_mismatch() {
    let data = dataset();
    let (mut trail, source, _) = mine(&data, honest);
    trail.losses[5] += 0.25;
    let report = check_segment(&replay(&data), &trail, 1, &source, Mode::Exact);
    assert_eq!(reason(&report.outcome), Some(InvalidReason::LossMismatch));
    assert!(!report.losses_match);
    let tolerance = check_segment(&replay(&data), &trail, 1, &source, Mode::Tolerance { max_distance: 1e-3 });
    assert_eq!(reason(&tolerance.outcome), Some(InvalidReason::LossMismatch), "0.25 is far outside a 1e-3 tolerance");
    for segment in [0, 2] {
        assert_eq!(check_segment(&replay(&data), &trail, segment, &source, Mode::Exact).outcome, VerdictOutcome::Valid);
    }
}
