//! Which jobs a miner works in, with real `trellis run` processes on 127.0.0.1:
//! - its job policy (`[miner]` in `node.toml`, defaults: one job at a time, any pay): a miner that
//!   joined a job paying ten tokens a round leaves it for a job paying ten thousand posted after —
//!   it joins the new job, commits no new work to the old one (which counts its missed
//!   commitments, and drops it after two, unslashed) and is paid by the new one. A rival posting a
//!   cheap job first thus captures no miner for longer than it takes a job that pays to appear;
//! - a job its submitter cancels mid-round: the round runs to its end, and the miner reveals the
//!   work it committed and is paid for it (until 2026-12-04 a miner's node looked away from a job
//!   once its cancellation was asked, left its commitment unrevealed and was slashed 10% as a
//!   freeloader).
//!
//! Every wait is bounded and every process is killed by pid when the test ends.

use std::path::{Path, PathBuf};
use std::time::Duration;

use trellis_contracts::state::{JobStatus, Phase};
use trellis_contracts::Event;
use trellis_node::devnet::DevnetSpec;
use trellis_node::home::{read_key, Home};
use trellis_node::storage::blobs::BlobStore;
use trellis_proto::{Address, Amount, Transaction, TxKind};

mod corpus;
mod harness;
use harness::{base_port, Cluster};

/// One devnet at a time: each trains, and two at once on two cores stretch every round.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A `nano` job of `workers` workers a round, two inner steps, paying `reward` a round, taking
/// commitments for `commit_blocks` blocks after a round opens.
fn job_file(dir: &Path, name: &str, reward: u64, rounds: u32, commit_blocks: u32, workers: u32) -> PathBuf {
    let text = format!(
        "name = \"{name}\"\nmodel = \"nano\"\ndataset = \"{}\"\nseed = 3\nescrow = {}\nreward_per_round = {reward}\n\
         commit_blocks = {commit_blocks}\nverify_blocks = 60\n\n[diloco]\nworkers_per_round = {workers}\ninner_steps = 2\n\
         rounds = {rounds}\nbatch_size = 4\nsequence_length = 32\nlearning_rate = 0.003\nwarmup_steps = 1\n\n\
         [verification]\ncheckpoint_interval = 1\nsegments_per_miner = 1\nmode = \"exact\"\n",
        corpus::path().display(),
        reward * u64::from(rounds)
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn step(name: &str) {
    eprintln!("-- {name}");
}

/// A devnet of four validators and `miners` miners, its chain started.
fn devnet(name: &str, port_seed: u16, miners: usize) -> Cluster {
    let mut spec = DevnetSpec::new(4, base_port(20_000, port_seed), name, 250);
    spec.miners = miners;
    spec.rpc_rate_limit = 100_000;
    let net = Cluster::start(name, &spec);
    net.wait_for_height(&[0], 2, Duration::from_secs(60));
    net
}

/// Signs `kind` with the devnet's submitter key and waits until a block holds it.
fn send(net: &Cluster, kind: TxKind) {
    let submitter = read_key(&net.root.join("submitter.key")).unwrap();
    let nonce = net.account(0, &submitter.address().to_string()).pending_nonce;
    let tx = Transaction { sender: submitter.public_key(), nonce, fee: Amount(10), kind }
        .sign(&net.info.chain_id, &submitter);
    let hash = net.submit(0, &tx).expect("the transaction is admitted");
    net.wait_for_inclusion(0, hash, Duration::from_secs(30));
}

/// Submits the job `file` describes, its dataset stored on node 0.
fn submit(net: &Cluster, file: &Path) {
    let store = BlobStore::open(&Home::new(&net.info.nodes[0].home).data().join("blobs")).unwrap();
    let (spec, escrow) = trellis_node::commands::job::prepare(file, &store).unwrap();
    send(net, TxKind::SubmitJob { spec, escrow: Amount(escrow) });
}

fn miner_rewards(events: Vec<trellis_node::rpc::api::JobEvent>, of_job: u64, miner: Address) -> u64 {
    events
        .into_iter()
        .filter_map(|e| match e.event {
            Event::Rewarded { job, who, amount, as_miner: true, .. } if job.0 == of_job && who == miner => {
                Some(amount.0)
            }
            _ => None,
        })
        .sum()
}

#[test]
fn a_miner_leaves_a_cheap_job_for_one_that_pays_more_and_is_paid_by_it() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut net = devnet("miner-policy", 0, 1);
    let root = net.root.clone();
    let mut events = net.job_events(0);
    let miner_node = net.info.nodes.iter().position(|n| n.role == "miner").unwrap();
    let miner: Address = net.info.nodes[miner_node].address.parse().unwrap();
    let bond = |net: &Cluster| net.account(0, &miner.to_string()).miner_stake.map(|s| s.bonded.0);
    let bond_before = bond(&net);
    let is_in = |net: &Cluster, job: u64| net.job(0, job).is_some_and(|j| j.miners.iter().any(|m| m.address == miner));

    step("a job paying 10 a round is posted first, and the miner joins it");
    submit(&net, &job_file(&root, "cheap", 10, 40, 20, 1));
    net.wait_until("the miner in the cheap job", Duration::from_secs(90), |net| is_in(net, 0).then_some(()));

    step("a job paying 10,000 a round is posted: the miner joins it");
    // Ten rounds of a few seconds each: longer than the cheap job's commit window (5 s), so that
    // the cheap job's round misses the miner while the paying job holds it.
    submit(&net, &job_file(&root, "paying", 10_000, 10, 40, 1));
    net.wait_until("the miner in the paying job", Duration::from_secs(90), |net| is_in(net, 1).then_some(()));

    step("while the paying job runs, the miner commits no new work to the cheap job");
    net.wait_until("a missed commitment in the cheap job", Duration::from_secs(120), |net| {
        let job = net.job(0, 0)?;
        job.miners.iter().find(|m| m.address == miner).filter(|m| m.missed_commits > 0 || m.ejected).map(|_| ())
    });

    step("the paying job finishes with the miner's work, and pays it; nobody slashed it");
    let finished = net.wait_until("the paying job finished", Duration::from_secs(180), |net| {
        net.job(0, 1).filter(|j| j.status == JobStatus::Finished)
    });
    assert_eq!(finished.rounds_settled, 10, "{finished:?}");
    let paid = miner_rewards(net.drain(&mut events), 1, miner);
    assert!(paid > 0, "the paying job paid its miner");
    assert_eq!(bond(&net), bond_before, "the miner's bond is untouched: leaving is not slashed");
}

/// A job cancelled while a round holds a commitment: the round runs to its end (two workers, one
/// of them stopped, so the round waits out its commit window after the other's commitment), the
/// miner reveals, its work is checked and paid, and nobody is slashed for it.
#[test]
fn a_miner_reveals_and_is_paid_for_work_committed_before_its_job_was_cancelled() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut net = devnet("miner-cancel", 0, 2);
    let root = net.root.clone();
    let mut events = net.job_events(0);
    let miners: Vec<usize> = (0..net.info.nodes.len()).filter(|&n| net.info.nodes[n].role == "miner").collect();
    let (working, stopped) = (miners[0], miners[1]);
    let miner: Address = net.info.nodes[working].address.parse().unwrap();
    let bond = |net: &Cluster| net.account(0, &miner.to_string()).miner_stake.map(|s| s.bonded.0);
    let bond_before = bond(&net);

    step("a job of two workers a round; both miners work in round 0");
    // A commit window of 30 s: the round waits that long for the stopped miner's commitment.
    submit(&net, &job_file(&root, "to-cancel", 1_000, 5, 120, 2));
    // Stopped once round 0's verdicts are in (its blobs served to its checkers, so that it stays a
    // worker of round 1) and before it trains round 1.
    let stopped_address: Address = net.info.nodes[stopped].address.parse().unwrap();
    net.wait_until("round 0 checked", Duration::from_secs(90), |net| {
        let job = net.job(0, 0)?;
        let phase = net.round(0, 0, 0).phase;
        (job.current_round > 0 || matches!(phase, Phase::AwaitingAggregate | Phase::Settled)).then_some(())
    });
    net.kill(stopped);

    step("one miner stopped; the other commits round 1, and the submitter cancels the job");
    net.wait_until("the working miner's commitment in round 1", Duration::from_secs(90), |net| {
        let job = net.job(0, 0)?;
        (job.current_round == 1 && net.round(0, 0, 1).commits.iter().any(|c| c.miner == miner)).then_some(())
    });
    let round = net.round(0, 0, 1);
    assert!(round.workers.contains(&stopped_address), "{round:?}");
    assert!(
        !round.commits.iter().any(|c| c.miner == stopped_address),
        "the stopped miner committed round 1 before it was stopped: {round:?}"
    );
    assert_eq!(round.phase, Phase::Open, "the round waits for the stopped miner: {round:?}");
    send(&net, TxKind::CancelJob { job: trellis_proto::JobId(0) });
    assert!(net.job(0, 0).is_some_and(|j| j.cancel_requested && j.status == JobStatus::Active));

    step("the round runs to its end: the working miner reveals, is checked and paid; the job ends");
    let ended = net.wait_until("the job cancelled", Duration::from_secs(120), |net| {
        net.job(0, 0).filter(|j| j.status == JobStatus::Cancelled)
    });
    let round = net.round(0, 0, 1);
    let commit = round.commits.iter().find(|c| c.miner == miner).expect("the commitment");
    assert!(commit.reveal.is_some(), "the committed work was revealed: {round:?}");
    assert!(round.accepted.contains(&miner), "{round:?}");
    assert_eq!(ended.rounds_settled, 2, "{ended:?}");
    let paid = miner_rewards(net.drain(&mut events), 0, miner);
    assert!(paid > 0);
    assert_eq!(bond(&net), bond_before, "nobody slashed the miner that revealed");
}
