//! What the devnet shows of its demo job: the per-round table's rows (`rounds.json`), each
//! miner's fate as the chain recorded it (`miners.json`: bond before and after, pay, slashes,
//! ejection), and the closing summary (loss, bytes against data-parallel, where the checkers'
//! time went, the loss curve and the final model's path).

use std::path::Path;

use anyhow::bail;
use jsonrpsee::http_client::HttpClient;
use trellis_contracts::state::Job;
use trellis_contracts::Event;
use trellis_proto::Address;

use crate::devnet::DevnetInfo;
use crate::rpc::api::TrellisRpcClient as _;

/// What the exported models are: safetensors of a GPT, or trellis-zk weights.
pub fn model_extension(zk: bool) -> &'static str {
    if zk {
        "weights"
    } else {
        "safetensors"
    }
}

/// One settled round as the table shows it (and `rounds.json` holds it).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RoundRow {
    pub round: u32,
    pub validation_loss: f64,
    pub accepted: usize,
    pub commits: usize,
    pub verdicts_valid: usize,
    pub verdicts_other: usize,
    pub paid: u64,
    pub slashed: u64,
    pub model_hash: String,
    /// Seconds from the round's opening to its last commitment.
    pub training_s: f64,
    /// From the last commitment to the tally.
    pub verification_s: f64,
    /// From the tally to the committed aggregate.
    pub aggregation_s: f64,
}

/// The closing summary: the miners' table, `miners.json`, `rounds.json`, the loss curve, the
/// final model, and the figures of the run.
pub fn report(
    root: &Path,
    spec: &trellis_proto::JobSpec,
    zk_model: Option<&trellis_zk::ModelSpec>,
    initial_loss: f64,
    rows: &[RoundRow],
    miners: &[MinerOutcome],
) -> anyhow::Result<()> {
    println!(
        "\n{:>6}  {:<17}  {:>6}  {:>6}  {:>8}  {:>8}  status",
        "node", "behaviour", "bond", "now", "paid", "slashed"
    );
    for m in miners {
        let slashed: u64 = m.slashes.iter().map(|s| s.amount).sum();
        let reasons: Vec<&str> = m.slashes.iter().map(|s| s.reason.as_str()).collect();
        let status = if m.ejected {
            "ejected"
        } else if m.joined {
            "in the job"
        } else {
            "never joined"
        };
        let why = if reasons.is_empty() { String::new() } else { format!(" ({})", reasons.join(", ")) };
        println!(
            "{:>6}  {:<17}  {:>6}  {:>6}  {:>8}  {:>8}  {status}{why}",
            m.node, m.behaviour, m.bond_before, m.bond_after, m.paid, slashed
        );
    }
    std::fs::write(root.join("miners.json"), serde_json::to_string_pretty(miners)?)?;
    let Some(last) = rows.iter().rev().find(|r| r.accepted > 0) else {
        bail!("no round of the demo job was accepted; see the node logs under {}", root.display());
    };
    let extension = model_extension(zk_model.is_some());
    let final_model = root.join(format!("model.{extension}"));
    std::fs::copy(root.join("models").join(format!("round-{}.{extension}", last.round)), &final_model)?;
    let mut points = vec![(0.0, initial_loss)];
    points.extend(rows.iter().map(|r| (f64::from(r.round + 1), r.validation_loss)));
    let png = root.join("loss.png");
    crate::commands::plot::write_line_chart(
        &png,
        "devnet demo job",
        "round",
        "validation loss",
        &[crate::commands::plot::Series { label: "global model".into(), points }],
    )?;
    std::fs::write(root.join("rounds.json"), serde_json::to_string_pretty(rows)?)?;
    let parameters = match zk_model {
        Some(model) => model.num_parameters() as u64,
        None => trellis_trainer::model::parameter_count(&spec.model),
    };
    let d = &spec.diloco;
    let delta_bytes = parameters * if d.encoding == trellis_proto::DeltaEncoding::F16 { 2 } else { 4 };
    let k = u64::from(d.workers_per_round.max(2));
    let ddp_bytes = u64::from(d.inner_steps) * 2 * (k - 1) * 4 * parameters / k;
    let verify_steps =
        2 * u64::from(spec.verification.segments_per_miner) * u64::from(spec.verification.checkpoint_interval);
    println!("\nvalidation loss {:.4} → {:.4} over {} rounds", initial_loss, last.validation_loss, rows.len());
    println!(
        "bytes per miner per round: {} (Δ) vs {} for data-parallel over the same tokens: {:.0}× less",
        delta_bytes,
        ddp_bytes,
        ddp_bytes as f64 / delta_bytes as f64
    );
    if zk_model.is_some() {
        println!(
            "verification checks {} Groth16 proof(s) of {} steps per miner per round (× 2 checkers) instead of re-executing",
            spec.verification.segments_per_miner, spec.verification.checkpoint_interval
        );
    } else {
        println!(
            "verification re-executes {} of {} steps per miner per round ({:.0}%: {} segments × {} steps × 2 checkers)",
            verify_steps,
            d.inner_steps,
            100.0 * verify_steps as f64 / f64::from(d.inner_steps),
            spec.verification.segments_per_miner,
            spec.verification.checkpoint_interval
        );
    }
    let (train_s, check_s) = logged_seconds(root);
    if train_s > 0.0 {
        println!(
            "measured: miners trained {train_s:.1} s in all, checkers spent {check_s:.1} s (fetch + replay + Δ check): {:.0}% of training",
            100.0 * check_s / train_s
        );
    }
    println!(
        "wrote {} (model {}), {}, {}/rounds.json",
        final_model.display(),
        last.model_hash,
        png.display(),
        root.display()
    );
    Ok(())
}

/// One miner's fate in the demo job, as the chain recorded it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct MinerOutcome {
    pub node: String,
    pub address: String,
    pub behaviour: String,
    /// Bonded miner stake at genesis and at the end.
    pub bond_before: u64,
    pub bond_after: u64,
    /// Rewards from the job's rounds.
    pub paid: u64,
    pub slashes: Vec<SlashRecord>,
    pub joined: bool,
    pub ejected: bool,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SlashRecord {
    pub reason: String,
    pub amount: u64,
}

pub async fn miner_outcomes(
    rpc: &HttpClient,
    info: &DevnetInfo,
    initial_stakes: &[u64],
    job: &Job,
    events: &[Event],
) -> Vec<MinerOutcome> {
    let mut outcomes = Vec::new();
    for (i, node) in info.nodes.iter().enumerate().filter(|(_, n)| n.role == "miner") {
        let Ok(address) = node.address.parse::<Address>() else { continue };
        let account = rpc.account(node.address.clone()).await.ok();
        let entry = job.miners.iter().find(|m| m.address == address);
        let paid = events
            .iter()
            .filter_map(|e| match e {
                Event::Rewarded { job: of, who, amount, .. } if *of == job.id && *who == address => Some(amount.0),
                _ => None,
            })
            .sum();
        let slashes = events
            .iter()
            .filter_map(|e| match e {
                Event::Slashed { who, amount, reason, .. } if *who == address => {
                    Some(SlashRecord { reason: reason.name().to_string(), amount: amount.0 })
                }
                _ => None,
            })
            .collect();
        outcomes.push(MinerOutcome {
            node: format!("node{i}"),
            address: node.address.clone(),
            behaviour: node.behaviour.map_or_else(|| "honest".to_string(), |b| b.to_string()),
            bond_before: initial_stakes.get(i).copied().unwrap_or(0),
            bond_after: account.and_then(|a| a.miner_stake).map_or(0, |s| s.bonded.0),
            paid,
            slashes,
            joined: entry.is_some(),
            ejected: entry.is_some_and(|m| m.ejected),
        });
    }
    outcomes
}

/// Seconds the nodes logged for training (`train_s`, miners) and checking (`check_s`, validators).
fn logged_seconds(root: &Path) -> (f64, f64) {
    let mut totals = (0.0, 0.0);
    let Ok(entries) = std::fs::read_dir(root) else { return totals };
    for entry in entries.flatten() {
        let Ok(log) = std::fs::read_to_string(entry.path().join("node.log")) else { continue };
        for line in log.lines() {
            for (field, total) in [("train_s=\"", &mut totals.0), ("check_s=\"", &mut totals.1)] {
                if let Some(rest) = line.split(field).nth(1) {
                    *total += rest.split('"').next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
                }
            }
        }
    }
    totals
}
