//! blake3 throughput on checkpoint-sized buffers, as the trail hashes them (one thread).
//!   cargo run --release -p trellis-trainer --example bench_hash -- [MIB] [REPEATS]

use std::time::Instant;

use trellis_trainer::checkpoint::checkpoint_hash;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mib: usize = args.get(1).map_or(64, |s| s.parse().expect("MIB is a number"));
    let repeats: usize = args.get(2).map_or(10, |s| s.parse().expect("REPEATS is a number"));
    let buffer: Vec<u8> = (0..mib * 1024 * 1024).map(|i| ((i.wrapping_mul(2654435761usize)) >> 13) as u8).collect();
    let mut best = f64::MAX;
    let mut digest = checkpoint_hash(&buffer);
    for _ in 0..repeats {
        let began = Instant::now();
        digest = checkpoint_hash(&buffer);
        best = best.min(began.elapsed().as_secs_f64());
    }
    println!(
        "blake3 over {mib} MiB: best of {repeats}: {:.3} s, {:.2} GB/s (digest {})",
        best,
        buffer.len() as f64 / best / 1e9,
        &digest.to_hex()[..16]
    );
}
