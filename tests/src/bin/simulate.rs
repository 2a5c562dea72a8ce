//! `simulate`: runs the seeded consensus + contracts simulator over many seeds, or one seed with
//! a full event trace. See `docs/simulator.md`.
//!
//! ```text
//! cargo run -p trellis-tests --release --bin simulate -- --seeds 10000 [--start S] [--scenario standard]
//! cargo run -p trellis-tests --release --bin simulate -- --seed 1234 --verbose
//! ```
//!
//! Exits 1 when any seed broke safety or (where expected) liveness, after listing each failing
//! seed with the command that replays it.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use trellis_tests::sim::{self, SimConfig};

struct Args {
    scenario: SimConfig,
    start: u64,
    seeds: u64,
    verbose: bool,
    quiet: bool,
}

const USAGE: &str =
    "usage: simulate [--scenario standard|split-brain|volatile-wal|proposal-flood] [--seeds N] [--start S] [--seed X] [--verbose] [--quiet]
  --seeds N     seeds to run (default 100), starting at --start (default 0)
  --seed X      run the one seed X (same as --start X --seeds 1)
  --verbose     print every event of each run (use with --seed)
  --quiet       print only failures and the summary";

fn parse() -> Result<Args> {
    let mut args = Args { scenario: SimConfig::standard(), start: 0, seeds: 100, verbose: false, quiet: false };
    let mut iter = std::env::args().skip(1);
    while let Some(flag) = iter.next() {
        let mut value = |name: &str| iter.next().with_context(|| format!("{name} needs a value\n{USAGE}"));
        match flag.as_str() {
            "--scenario" => {
                let name = value("--scenario")?;
                args.scenario = SimConfig::by_name(&name)
                    .with_context(|| format!("unknown scenario '{name}'; choose one of {:?}", SimConfig::NAMES))?;
            }
            "--seeds" => args.seeds = value("--seeds")?.parse().context("--seeds takes a number")?,
            "--start" => args.start = value("--start")?.parse().context("--start takes a number")?,
            "--seed" => {
                args.start = value("--seed")?.parse().context("--seed takes a number")?;
                args.seeds = 1;
            }
            "--verbose" => args.verbose = true,
            "--quiet" => args.quiet = true,
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument '{other}'\n{USAGE}"),
        }
    }
    Ok(args)
}

fn main() -> Result<ExitCode> {
    let args = parse()?;
    let started = Instant::now();
    let mut unsafe_seeds = Vec::new();
    let mut stalled_seeds = Vec::new();
    for seed in args.start..args.start.saturating_add(args.seeds) {
        let report = sim::run(seed, &args.scenario, args.verbose);
        let failed = !report.is_safe() || !report.is_live();
        if failed || !args.quiet {
            println!("{report}");
        }
        if !report.is_safe() {
            println!("  replay: {}", report.replay_command());
            unsafe_seeds.push(seed);
        } else if !report.is_live() {
            println!("  replay: {}", report.replay_command());
            stalled_seeds.push(seed);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{} seeds of '{}' from {} in {:.1} s ({:.2} seeds/s): {} unsafe {:?}, {} not live {:?}",
        args.seeds,
        args.scenario.name,
        args.start,
        elapsed,
        args.seeds as f64 / elapsed.max(1e-9),
        unsafe_seeds.len(),
        unsafe_seeds,
        stalled_seeds.len(),
        stalled_seeds
    );
    Ok(if unsafe_seeds.is_empty() && stalled_seeds.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
