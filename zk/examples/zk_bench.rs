//! Benchmark of the training-step circuit: constraints per step as the model grows, Groth16
//! setup and proving time, peak memory, verification time, proof size, and the largest model
//! whose one-step proof takes at most the time limit on this machine.
//!
//! ```text
//! cargo run --release -p trellis-zk --example zk_bench [-- --limit-seconds 60 --batch 4]
//! ```
//!
//! Peak memory is the process's `VmHWM` from `/proc/self/status`, reset before each measured
//! phase by writing 5 to `/proc/self/clear_refs` (Linux); where the reset is not allowed the
//! figure is the peak so far and says so. Keys come from an OS-seeded RNG, as real keys would.

use std::time::{Duration, Instant};

use trellis_zk::{circuit_size, prove, setup, Batch, ModelSpec, PreparedVerifier, Weights, ZkError};

struct Options {
    limit: Duration,
    batch: usize,
}

fn options() -> Options {
    let mut options = Options { limit: Duration::from_secs(60), batch: 4 };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut iter = args.iter();
    while let Some(flag) = iter.next() {
        let value = iter.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--limit-seconds" => {
                options.limit = Duration::from_secs(value.parse().expect("--limit-seconds takes an integer"))
            }
            "--batch" => options.batch = value.parse().expect("--batch takes an integer"),
            other => panic!("unknown flag {other}: flags are --limit-seconds N and --batch N"),
        }
    }
    options
}

/// Reset the peak-RSS counter; false where the kernel refuses.
fn reset_peak_memory() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// `VmHWM` in MiB.
fn peak_memory_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn spec(text: &str) -> ModelSpec {
    text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn main() -> Result<(), ZkError> {
    let options = options();
    let batch = options.batch;
    println!("# trellis-zk benchmark");
    println!(
        "machine: {} cores; batch {batch}; rayon threads {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "default".into())
    );

    println!("\n## Constraints per step (R1CS), batch {batch}");
    println!("| model | parameters | constraints, 1 step | constraints, 2 steps | per step | per parameter-step |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let counted = [
        format!("softmax:4x3,batch={batch}"),
        format!("softmax:16x10,batch={batch}"),
        format!("softmax:64x10,batch={batch}"),
        format!("mlp:4x8x3,batch={batch}"),
        format!("mlp:16x16x10,batch={batch}"),
        format!("mlp:32x32x10,batch={batch}"),
        format!("mlp:64x64x10,batch={batch}"),
        format!("mlp:128x128x10,batch={batch}"),
    ];
    for text in &counted {
        let spec = spec(text);
        let one = circuit_size(&spec, 1)?.constraints;
        let two = circuit_size(&spec, 2)?.constraints;
        let per_step = two - one;
        println!(
            "| {} | {} | {one} | {two} | {per_step} | {:.1} |",
            text.split(',').next().unwrap_or(text),
            spec.num_parameters(),
            per_step as f64 / spec.num_parameters() as f64
        );
    }

    println!(
        "\n## Groth16 on BN254, one step, models of growing size (stop past {} s of proving)",
        options.limit.as_secs()
    );
    println!("| model | parameters | constraints | setup s | prove s | peak MiB (prove) | verify ms | proof bytes |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let widths = [4usize, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256];
    let mut largest_within_limit: Option<(String, usize, f64)> = None;
    let mut verify_ms_samples = Vec::new();
    for &width in &widths {
        let text = format!("mlp:{width}x{width}x10,batch={batch}");
        let spec = spec(&text);
        let constraints = circuit_size(&spec, 1)?.constraints;

        let started = Instant::now();
        let (pk, vk) = setup(&spec, 1, &mut rand_core::OsRng)?;
        let setup_seconds = started.elapsed().as_secs_f64();

        let weights = Weights::random(&spec, 1);
        let batches = vec![Batch::random(&spec, 2)];
        let reset = reset_peak_memory();
        let started = Instant::now();
        let proven = prove(&pk, &weights, &batches)?;
        let prove_elapsed = started.elapsed();
        let peak = peak_memory_mib().map_or("n/a".to_string(), |m| {
            if reset {
                format!("{m:.0}")
            } else {
                format!("{m:.0} (process peak)")
            }
        });
        drop(pk);

        // Verification: prepared key reused, as a checker would; averaged over many runs.
        let verifier = PreparedVerifier::new(&vk);
        let runs = 200;
        let started = Instant::now();
        for _ in 0..runs {
            verifier.verify(&proven.public_inputs, &proven.proof)?;
        }
        let verify_ms = started.elapsed().as_secs_f64() * 1000.0 / runs as f64;
        verify_ms_samples.push(verify_ms);
        let proof_bytes = proven.proof.to_bytes().len();

        println!(
            "| {} | {} | {constraints} | {setup_seconds:.1} | {:.1} | {peak} | {verify_ms:.2} | {proof_bytes} |",
            text.split(',').next().unwrap_or(&text),
            spec.num_parameters(),
            prove_elapsed.as_secs_f64(),
        );
        if prove_elapsed <= options.limit {
            largest_within_limit = Some((text.clone(), spec.num_parameters(), prove_elapsed.as_secs_f64()));
        } else {
            println!("(proving took more than {} s: stopping the search)", options.limit.as_secs());
            break;
        }
    }

    // Verification including key preparation, as a one-off verifier would run it.
    let small = spec(&format!("softmax:4x3,batch={batch}"));
    let (pk, vk) = setup(&small, 1, &mut rand_core::OsRng)?;
    let proven = prove(&pk, &Weights::random(&small, 1), &[Batch::random(&small, 2)])?;
    let runs = 100;
    let started = Instant::now();
    for _ in 0..runs {
        trellis_zk::verify(&vk, &proven.public_inputs, &proven.proof)?;
    }
    let cold_verify_ms = started.elapsed().as_secs_f64() * 1000.0 / runs as f64;

    println!("\n## Summary");
    if let Some((text, parameters, seconds)) = largest_within_limit {
        println!(
            "largest model proven within {} s: {text} ({parameters} parameters, {seconds:.1} s for one step)",
            options.limit.as_secs()
        );
    } else {
        println!("no model was proven within {} s", options.limit.as_secs());
    }
    let max_verify = verify_ms_samples.iter().cloned().fold(0.0, f64::max);
    println!("verification with a prepared key: at most {max_verify:.2} ms (independent of model size)");
    println!("verification including key preparation: {cold_verify_ms:.2} ms");
    println!("proof size: {} bytes compressed", trellis_zk::groth16::PROOF_BYTES);
    Ok(())
}
