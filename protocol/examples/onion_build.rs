//! How long a validator takes to build its beacon onion, and to find a reveal in it.
//! `cargo run --release -p trellis-protocol --example onion_build`

use std::time::Instant;

use trellis_proto::Hash;
use trellis_protocol::beacon::{Onion, CHECKPOINT_EVERY, DEFAULT_LAYERS};

fn main() {
    let started = Instant::now();
    let onion = Onion::new(Hash([1; 32]), DEFAULT_LAYERS).expect("default layers are valid");
    let built = started.elapsed();
    let started = Instant::now();
    let worst = onion.reveal(CHECKPOINT_EVERY).expect("a layer below the tip");
    let revealed = started.elapsed();
    println!(
        "onion of {DEFAULT_LAYERS} layers built in {:.3} s; the slowest reveal ({} hashes from a checkpoint) in {:.1} µs ({})",
        built.as_secs_f64(),
        CHECKPOINT_EVERY - 1,
        revealed.as_secs_f64() * 1e6,
        worst
    );
}
