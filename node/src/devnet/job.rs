//! The devnet's demo job: publish a dataset, submit a job, follow it round by round in a live
//! table (validation loss, accepted miners, verdicts, rewards, slashes) with a progress bar, and
//! at the end write the loss curve (PNG), the final model (safetensors, its hash checked against
//! the chain) and where each round's time went.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use jsonrpsee::http_client::HttpClient;
use trellis_contracts::state::{JobStatus, Phase, RoundState};
use trellis_contracts::Event;
use trellis_proto::{TxKind, VerdictOutcome};
use trellis_trainer::data::{validation_windows, Dataset, REPOSITORY_TEXT};
use trellis_trainer::worker::evaluate;

use crate::devnet::report::{miner_outcomes, model_extension, read_wire, report, wire_between, RoundRow};
use crate::devnet::{DevnetArgs, DevnetInfo};
use crate::home::Home;
use crate::rpc::api::TrellisRpcClient as _;
use crate::rpc::client::{client, explain, RpcArg, SignerArgs};
use crate::storage::blobs::BlobStore;

/// The longest a demo job may take before the devnet gives up on it.
const JOB_TIME_LIMIT: Duration = Duration::from_secs(30 * 60);

/// A demo job ready to submit.
pub struct DemoJob {
    dataset: PathBuf,
    job_toml: String,
    model: String,
    rounds: u32,
    /// A groth16 demo job's zk model and checkpoint interval (its keys are made in `run`).
    zk: Option<(trellis_zk::ModelSpec, u32)>,
}

/// The parameters of a preset model (`None` for a zk model).
fn preset_parameters(model: &str) -> Option<u64> {
    let preset: trellis_trainer::model::Preset = model.parse().ok()?;
    Some(trellis_protocol::model::parameter_count(&preset.config()))
}

/// The repository's own docs and sources, when the devnet runs from a checkout.
fn default_dataset() -> anyhow::Result<PathBuf> {
    let cwd = std::env::current_dir()?;
    let mut dir = cwd.as_path();
    loop {
        if dir.join("docs").is_dir() && dir.join("node").join("src").is_dir() {
            return Ok(dir.to_path_buf());
        }
        dir = match dir.parent() {
            Some(parent) => parent,
            None => bail!(
                "no --dataset given and {} is not inside a trellis checkout (whose docs/ and sources are the default)",
                cwd.display()
            ),
        };
    }
}

/// Copies the checkout's own text ([`REPOSITORY_TEXT`]: `docs/` and every crate's `src/`) at
/// `repo` into `into`.
fn snapshot_sources(repo: &Path, into: &Path) -> anyhow::Result<()> {
    let sources: Vec<PathBuf> = REPOSITORY_TEXT.iter().map(|part| repo.join(part)).collect();
    for source in sources.iter().filter(|s| s.is_dir()) {
        let name = source.strip_prefix(repo).unwrap_or(source).to_string_lossy().replace('/', "-");
        copy_tree(source, &into.join(name))?;
    }
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

impl DemoJob {
    /// Checks the arguments and writes nothing yet.
    pub fn prepare(args: &DevnetArgs) -> anyhow::Result<Self> {
        let dataset = match &args.dataset {
            Some(path) if path.exists() => path.canonicalize()?,
            Some(path) => bail!("--dataset {} does not exist", path.display()),
            None => default_dataset()?,
        };
        let zk =
            match args.model.parse::<trellis_trainer::model::Preset>() {
                Ok(_) => None,
                Err(preset) => Some(args.model.parse::<trellis_zk::ModelSpec>().map_err(|zk| {
                    anyhow::anyhow!("--model: {preset}; nor is it a zk model for a groth16 job ({zk})")
                })?),
            };
        let encoding: trellis_proto::DeltaEncoding =
            args.encoding.parse().map_err(|e| anyhow::anyhow!("--encoding: {e}"))?;
        if !matches!(args.inner_optimizer.as_str(), "adamw" | "muon")
            || (zk.is_some() && args.inner_optimizer == "muon")
        {
            bail!("--inner-optimizer '{}': use adamw or muon (muon is not for groth16 jobs)", args.inner_optimizer);
        }
        if args.rounds == 0 || args.inner_steps == 0 {
            bail!("--rounds and --inner-steps must be positive");
        }
        let min_inner_steps = args.min_inner_steps.unwrap_or(args.inner_steps);
        if min_inner_steps == 0
            || min_inner_steps > args.inner_steps
            || (zk.is_some() && min_inner_steps != args.inner_steps)
        {
            bail!(
                "--min-inner-steps must be in 1..=--inner-steps ({}), and equal to it in a groth16 job",
                args.inner_steps
            );
        }
        if args.fragments == 0
            || args.fragments > trellis_protocol::fragments::MAX_FRAGMENTS
            || (args.fragments > 1
                && (zk.is_some() || encoding.has_error_feedback() || min_inner_steps != args.inner_steps))
        {
            bail!(
                "--fragments must be in 1..={}; a streaming job (above 1) takes --encoding f32 or f16, no --min-inner-steps and no groth16 model",
                trellis_protocol::fragments::MAX_FRAGMENTS
            );
        }
        let workers = args.all_miners().min(8);
        // A groth16 proof covers a whole segment, so its interval divides the inner steps.
        // Otherwise the interval keeps checking within 5% of training (docs/scaling.md): each
        // round, 2 checkers × 1 segment × c steps per worker, spread over the validators, is at
        // most a twentieth of a worker's H steps when c ≤ V·H / (40·K).
        let interval = match (&zk, args.checkpoint_interval) {
            (None, Some(c)) if c == 0 || c > args.inner_steps => {
                bail!("--checkpoint-interval must be in 1..=--inner-steps ({})", args.inner_steps)
            }
            (None, Some(c)) => c,
            (None, None) => checking_interval(args.validators, workers, args.inner_steps),
            (Some(_), Some(c)) if c == 0 || args.inner_steps % c != 0 => {
                bail!("--checkpoint-interval of a groth16 job must divide --inner-steps ({})", args.inner_steps)
            }
            (Some(_), Some(c)) => c,
            (Some(_), None) => {
                (1..=(args.inner_steps / 4).max(1)).rev().find(|c| args.inner_steps % c == 0).unwrap_or(1)
            }
        };
        let (batch_size, sequence_length, learning_rate, mode) = match &zk {
            None => (8, 64, "0.003".to_string(), "mode = \"exact\"\n".to_string()),
            Some(model) => (
                model.batch(),
                model.inputs(),
                model.learning_rate(),
                "mode = \"groth16\"\nzk_keys = \"zk-keys\"\n".to_string(),
            ),
        };
        // Proving every segment takes several times the training (docs/zk.md §8), on CPUs the
        // devnet shares with its validators: a groth16 round gets four times the window. A
        // window is only waited out when a worker fails to commit; otherwise the round closes
        // as soon as every slot has committed.
        let commit_blocks = if zk.is_some() { 960 } else { 240 };
        // A miner serves its Δ to validators and start checkpoints to its checkers, at most 24
        // bytes a parameter a round: the verification window leaves a miner on 50 Mbit/s time for that
        // twice over (`small` across continents needed it: docs/benchmarks.md). A round still
        // moves on as soon as every verdict is in.
        let verify_blocks = 120 + preset_parameters(&args.model).unwrap_or(0) / (1 << 16);
        let job_toml = format!(
            "# The devnet's demo job (written by `trellis devnet`).\n\
             name = \"devnet-demo\"\nmodel = \"{model}\"\ndataset = \"dataset\"\nseed = 7\n\
             escrow = {escrow}\nreward_per_round = 10000\nmin_miner_stake = 1000\n\
             commit_blocks = {commit_blocks}\nverify_blocks = {verify_blocks}\naggregation = \"mean\"\n\n\
             [diloco]\nworkers_per_round = {workers}\ninner_steps = {steps}\nrounds = {rounds}\n\
             batch_size = {batch_size}\nsequence_length = {sequence_length}\nlearning_rate = {learning_rate}\nwarmup_steps = {warmup}\n\
             outer = \"nesterov\"\nouter_learning_rate = 0.7\nouter_momentum = 0.9\nencoding = \"{encoding}\"\n\
             inner_optimizer = \"{inner}\"\nmin_inner_steps = {min_inner_steps}\nfragments = {fragments}\n\n\
             [verification]\ncheckpoint_interval = {interval}\nsegments_per_miner = 1\n{mode}",
            model = args.model,
            encoding = args.encoding,
            inner = args.inner_optimizer,
            fragments = args.fragments,
            escrow = 10_000 * u64::from(args.rounds) + 1,
            steps = args.inner_steps,
            rounds = args.rounds,
            // A job's warm-up fits in its steps (a one-round benchmark may take fewer than 5).
            warmup = 5u64.min(u64::from(args.inner_steps) * u64::from(args.rounds)),
        );
        Ok(Self {
            dataset,
            job_toml,
            model: args.model.clone(),
            rounds: args.rounds,
            zk: zk.map(|model| (model, interval)),
        })
    }

    /// The job's model and AdamW state in memory, 12 bytes a parameter (`None` for a zk model).
    pub fn state_bytes(&self) -> Option<u64> {
        Some(12 * preset_parameters(&self.model)?)
    }

    /// Submits the job and follows it to the end. `children` are watched: a node that exits
    /// stops the run.
    pub fn run(self, root: &Path, info: &DevnetInfo, children: &mut [Child], stop: &AtomicBool) -> anyhow::Result<()> {
        let dataset_dir = root.join("dataset");
        if self.dataset.is_dir() && self.dataset.join("docs").is_dir() && self.dataset.join("node").is_dir() {
            snapshot_sources(&self.dataset, &dataset_dir)?;
        } else if self.dataset.is_dir() {
            copy_tree(&self.dataset, &dataset_dir)?;
        } else {
            std::fs::create_dir_all(&dataset_dir)?;
            std::fs::copy(&self.dataset, dataset_dir.join(self.dataset.file_name().unwrap_or_default()))?;
        }
        let job_file = root.join("job.toml");
        std::fs::write(&job_file, &self.job_toml)?;
        if let Some((model, interval)) = &self.zk {
            // The trusted setup, done here by the submitter (fine for a devnet; docs/zk.md §6).
            let began = Instant::now();
            let (proving_key, verifying_key) = trellis_zk::setup(model, *interval, &mut rand_core::OsRng)?;
            trellis_zk::io::write_keys(&root.join("zk-keys"), &proving_key, &verifying_key)?;
            println!(
                "groth16 job: trusted setup for {model} × {interval} steps done in {:.1} s (keys in {})",
                began.elapsed().as_secs_f64(),
                root.join("zk-keys").display()
            );
        }
        let node0 = &info.nodes[0];
        let store = BlobStore::open(&Home::new(&node0.home).data().join("blobs"))?;
        let (spec, escrow) = crate::commands::job::prepare(&job_file, &store)?;
        let dataset = Dataset::load(&dataset_dir)?;
        println!(
            "demo job: {} model, {} rounds × {} inner steps, {} workers; dataset {} ({} shards, {} KiB) from {}",
            self.model,
            self.rounds,
            spec.diloco.inner_steps,
            spec.diloco.workers_per_round,
            spec.dataset_root,
            spec.dataset_shards,
            (dataset.train().len() + dataset.validation().len()) / 1024,
            self.dataset.display()
        );
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let url = node0.rpc.clone();
        wait_for_height(&rt, &url, 2, children, stop)?;
        let signer = SignerArgs {
            key: Some(root.join("submitter.key")),
            home: None,
            fee: 10,
            wait: true,
            rpc: RpcArg { rpc: url.clone() },
        };
        // Every job event from before the submission on: rewards and slashes are summed from them.
        let job_events = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Event>::new()));
        {
            let ws =
                rt.block_on(jsonrpsee::ws_client::WsClientBuilder::default().build(url.replace("http://", "ws://")))?;
            let mut events = rt.block_on(ws.subscribe_job_events(None))?;
            let job_events = job_events.clone();
            rt.spawn(async move {
                let _keep = ws;
                while let Some(Ok(message)) = events.next().await {
                    job_events.lock().unwrap_or_else(|p| p.into_inner()).push(message.event);
                }
            });
        }
        crate::rpc::client::sign_and_submit(
            trellis_proto::TxKind::SubmitJob { spec: spec.clone(), escrow: trellis_proto::Amount(escrow) },
            &signer,
        )?;
        let rpc = client(&url)?;
        let jobs = rt.block_on(rpc.jobs()).map_err(|e| explain(&url, "job_list", e))?;
        let job_id = jobs.last().map(|j| j.id.0).context("the submitted job is not listed")?;
        println!("job {job_id} submitted; follow it with `trellis job status {job_id} --rpc {url}`\n");

        let (val_inputs, val_targets) = validation_windows(&dataset, spec.diloco.sequence_length as usize, 64);
        let zk_model = self.zk.as_ref().map(|(model, _)| model.clone());
        let initial_loss = match &zk_model {
            Some(model) => trellis_verifier::groth16::validation_loss(
                model,
                &trellis_zk::job::initial_weights(model, spec.init_seed),
                &dataset,
                64,
            )?,
            None => {
                let initial = trellis_trainer::model::Gpt::new(&spec.model, spec.init_seed, tch::Device::Cpu)?;
                evaluate(&initial, &val_inputs, &val_targets, spec.diloco.sequence_length as usize, 8)
            }
        };
        println!(
            "{:>5}  {:>8}  {:>8}  {:>8}  {:>10}  {:>8}  {:>8}  {:>24}  steps",
            "round", "val loss", "accepted", "commits", "verdicts", "paid", "slashed", "time train/verify/agg s"
        );
        println!("{:>5}  {:>8.4}", "init", initial_loss);
        let bar = indicatif::ProgressBar::new(u64::from(self.rounds));
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} rounds {pos}/{len} [{bar:30}] {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let peers: Vec<String> = info.nodes.iter().map(|n| n.blobs.clone()).collect();
        let everyone: Vec<String> = info.nodes.iter().map(|n| n.address.clone()).collect();
        let mut stakes = rt.block_on(bonded_stakes(&rpc, &everyone));
        let initial_stakes = stakes.clone();
        let mut rows: Vec<RoundRow> = Vec::new();
        let mut wire = rt.block_on(read_wire(info));
        let started = Instant::now();
        let models = root.join("models");
        std::fs::create_dir_all(&models)?;
        loop {
            check_children(children, info)?;
            if stop.load(Ordering::SeqCst) {
                bar.abandon_with_message("stopped");
                return Ok(());
            }
            if started.elapsed() > JOB_TIME_LIMIT {
                bail!("the demo job did not finish within {} minutes", JOB_TIME_LIMIT.as_secs() / 60);
            }
            let job = rt.block_on(rpc.job(job_id)).map_err(|e| explain(&url, "job_get", e))?;
            let settled = job.rounds_settled;
            let current = job.current_round;
            let active = job.status == JobStatus::Active;
            let done_rounds = rows.len() as u32;
            if settled > done_rounds || !active {
                // Rounds that ended since the last look (settled, or lapsed with no change).
                let last = if active { current } else { current + 1 };
                for round in done_rounds..last.min(self.rounds) {
                    let state = rt.block_on(rpc.round(job_id, round)).map_err(|e| explain(&url, "job_getRound", e))?;
                    if state.phase != Phase::Settled && state.phase != Phase::Lapsed {
                        break;
                    }
                    let new_stakes = rt.block_on(bonded_stakes(&rpc, &everyone));
                    let slashed: u64 = stakes.iter().zip(&new_stakes).map(|(a, b)| a.saturating_sub(*b)).sum();
                    stakes = new_stakes;
                    let out = models.join(format!("round-{round}.{}", self.model_extension()));
                    let hash = rt.block_on(crate::commands::job::export_model(job_id, &out, &peers, &url))?;
                    let loss = match &zk_model {
                        Some(model) => {
                            let weights = trellis_zk::io::read_weights(&out, model)?;
                            trellis_verifier::groth16::validation_loss(
                                model,
                                &trellis_zk::job::from_fixed(&weights.flatten()),
                                &dataset,
                                64,
                            )?
                        }
                        None => {
                            let model = trellis_trainer::model_io::load(&out, tch::Device::Cpu)?;
                            evaluate(&model, &val_inputs, &val_targets, spec.diloco.sequence_length as usize, 8)
                        }
                    };
                    let (training_s, verification_s, aggregation_s) = rt.block_on(round_times(&rpc, &spec, &state));
                    let valid = state.verdicts.iter().filter(|v| v.outcome == VerdictOutcome::Valid).count();
                    let wire_now = rt.block_on(read_wire(info));
                    let round_wire = wire_between(&wire, &wire_now);
                    wire = wire_now;
                    let events_now = job_events.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    let row = RoundRow {
                        round,
                        validation_loss: loss,
                        accepted: state.accepted.len(),
                        commits: state.commits.len(),
                        verdicts_valid: valid,
                        verdicts_other: state.verdicts.len() - valid,
                        paid: events_now
                            .iter()
                            .filter_map(|e| match e {
                                Event::Rewarded { job, round: of, amount, .. } if job.0 == job_id && *of == round => {
                                    Some(amount.0)
                                }
                                _ => None,
                            })
                            .sum(),
                        slashed,
                        model_hash: hash.to_hex(),
                        training_s,
                        verification_s,
                        aggregation_s,
                        wire: round_wire,
                        work: revealed_work(&state, &events_now),
                        continued: state
                            .commits
                            .iter()
                            .filter(|c| c.reveal.as_ref().is_some_and(|r| r.continues != trellis_proto::Hash::ZERO))
                            .count(),
                    };
                    let steps: Vec<String> = row.work.iter().map(|w| w.steps.to_string()).collect();
                    bar.suspend(|| {
                        println!(
                            "{:>5}  {:>8.4}  {:>8}  {:>8}  {:>4} ok {:>2} x  {:>8}  {:>8}  {:>8.1}/{:.1}/{:.1}  {}",
                            row.round,
                            row.validation_loss,
                            row.accepted,
                            row.commits,
                            row.verdicts_valid,
                            row.verdicts_other,
                            row.paid,
                            row.slashed,
                            row.training_s,
                            row.verification_s,
                            row.aggregation_s,
                            steps.join(",")
                        )
                    });
                    rows.push(row);
                    bar.set_position(rows.len() as u64);
                }
            }
            if !active && rows.len() as u32 >= settled.min(self.rounds) {
                bar.finish_with_message(format!("job {}", job.status.name()));
                break;
            }
            let phase = rt.block_on(rpc.round(job_id, current)).map_or("", |r| r.phase.name());
            bar.set_message(format!("round {current}: {phase}"));
            bar.tick();
            std::thread::sleep(Duration::from_millis(500));
        }
        let events = job_events.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let job = rt.block_on(rpc.job(job_id)).map_err(|e| explain(&url, "job_get", e))?;
        let miners = rt.block_on(miner_outcomes(&rpc, info, &initial_stakes, &job, &events));
        report(root, &spec, self.zk.as_ref().map(|(model, _)| model), initial_loss, &rows, &miners)
    }

    /// What the exported models are: safetensors of a GPT, or trellis-zk weights.
    fn model_extension(&self) -> &'static str {
        model_extension(self.zk.is_some())
    }
}

fn check_children(children: &mut [Child], info: &DevnetInfo) -> anyhow::Result<()> {
    for (i, child) in children.iter_mut().enumerate() {
        if let Ok(Some(status)) = child.try_wait() {
            bail!("node{i} exited ({status}); see {}/node.log", info.nodes[i].home.display());
        }
    }
    Ok(())
}

fn wait_for_height(
    rt: &tokio::runtime::Runtime,
    url: &str,
    height: u64,
    children: &mut [Child],
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(90);
    let rpc = client(url)?;
    loop {
        if let Ok(head) = rt.block_on(rpc.head()) {
            if head.height >= height {
                return Ok(());
            }
        }
        for child in children.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                bail!("a node exited ({status}) before the chain started");
            }
        }
        if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
            bail!("the chain did not reach height {height} within 90 s");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Every account's bonded stake, miner and validator together (a drop is a slash).
async fn bonded_stakes(rpc: &HttpClient, accounts: &[String]) -> Vec<u64> {
    let mut stakes = Vec::new();
    for account in accounts {
        let bonded = match rpc.account(account.clone()).await {
            Ok(view) => [view.miner_stake, view.validator_stake].iter().flatten().map(|s| s.bonded.0).sum(),
            Err(_) => 0,
        };
        stakes.push(bonded);
    }
    stakes
}

async fn block_time_s(rpc: &HttpClient, height: u64) -> Option<f64> {
    let block = rpc.block(height).await.ok()?;
    Some(block.header.time_ms as f64 / 1000.0)
}

/// Each revealed commitment of a settled round, with what the chain paid its miner for it.
fn revealed_work(state: &RoundState, events: &[Event]) -> Vec<super::report::RevealedWork> {
    state
        .commits
        .iter()
        .filter_map(|commit| {
            let reveal = commit.reveal.as_ref()?;
            let paid = events
                .iter()
                .filter_map(|e| match e {
                    Event::Rewarded { job, round, who, amount, as_miner: true }
                        if *job == state.job && *round == state.round && *who == commit.miner =>
                    {
                        Some(amount.0)
                    }
                    _ => None,
                })
                .sum();
            Some(super::report::RevealedWork {
                miner: commit.miner.to_string(),
                steps: reveal.steps,
                accepted: state.accepted.contains(&commit.miner),
                paid,
            })
        })
        .collect()
}

/// (training, verification, aggregation) seconds of a settled round, from block times: the
/// round's opening, its last commitment, its tally and the block that committed its aggregate.
/// (The aggregate's block, not the monitor's look at the chain: the look comes after the previous
/// round's model was exported and evaluated, up to seconds later.)
async fn round_times(rpc: &HttpClient, spec: &trellis_proto::JobSpec, state: &RoundState) -> (f64, f64, f64) {
    let opened = state.opened_at;
    let last_commit = state.commits.iter().map(|c| c.height).max().unwrap_or(opened);
    let window = trellis_contracts::rounds::aggregate_window(&trellis_contracts::Params::default(), spec);
    let tallied = state.aggregate_deadline.before(window);
    let (Some(t_open), Some(t_commit), Some(t_tally)) =
        (block_time_s(rpc, opened.0).await, block_time_s(rpc, last_commit.0).await, block_time_s(rpc, tallied.0).await)
    else {
        return (0.0, 0.0, 0.0);
    };
    let t_aggregate = match aggregate_block_time_s(rpc, state, tallied.0, state.aggregate_deadline.0).await {
        Some(t) => t,
        // A lapsed round has no aggregate: its aggregation column is the window it waited.
        None => block_time_s(rpc, state.aggregate_deadline.0).await.unwrap_or(t_tally),
    };
    (t_commit - t_open, t_tally - t_commit, (t_aggregate - t_tally).max(0.0))
}

/// The time of the first block in `from..=to` that holds the round's `CommitAggregate`, if any.
async fn aggregate_block_time_s(rpc: &HttpClient, state: &RoundState, from: u64, to: u64) -> Option<f64> {
    let head = rpc.head().await.ok()?.height;
    for height in from..=to.min(head) {
        let block = rpc.block(height).await.ok()?;
        let settles = block.txs.iter().any(
            |t| matches!(&t.tx.tx.kind, TxKind::CommitAggregate(a) if a.job == state.job && a.round == state.round),
        );
        if settles {
            return Some(block.header.time_ms as f64 / 1000.0);
        }
    }
    None
}

/// The longest checkpoint interval at which each of `validators` checkers re-executes at most 5%
/// of what each of `workers` miners trains in a round of `inner_steps` (one segment sampled per
/// miner, two checkers each): c ≤ V·H / (40·K), at least 1.
pub fn checking_interval(validators: usize, workers: usize, inner_steps: u32) -> u32 {
    let bound = (validators as u64 * u64::from(inner_steps)) / (40 * workers.max(1) as u64);
    bound.clamp(1, u64::from(inner_steps.max(1))) as u32
}

#[cfg(test)]
mod interval_tests {
    use super::checking_interval;

    #[test]
    fn checking_stays_within_five_percent_of_training() {
        for (v, k, h) in [(4, 3, 40), (4, 4, 500), (16, 4, 500), (4, 8, 100), (7, 1, 40)] {
            let c = checking_interval(v, k, h);
            let checked = 2.0 * k as f64 * f64::from(c) / v as f64;
            assert!(c == 1 || checked <= 0.05 * f64::from(h), "V={v} K={k} H={h}: c={c}, {checked} steps");
            assert!(checking_interval(v, k, h) <= h);
        }
        assert_eq!(checking_interval(4, 3, 40), 1);
        assert_eq!(checking_interval(16, 4, 500), 50);
    }
}
