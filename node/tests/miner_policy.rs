//! The miner's job policy with real `trellis run` processes on 127.0.0.1 (`[miner]` in
//! `node.toml`, defaults: one job at a time, any pay): a miner that joined a job paying ten tokens
//! a round leaves it for a job paying ten thousand posted after — it joins the new job, commits no
//! new work to the old one (which counts its missed commitments, and drops it after two,
//! unslashed) and is paid by the new one. A rival posting a cheap job first thus captures no miner for longer than it takes a
//! job that pays to appear.
//!
//! Every wait is bounded and every process is killed by pid when the test ends.

use std::path::{Path, PathBuf};
use std::time::Duration;

use trellis_contracts::state::JobStatus;
use trellis_node::devnet::DevnetSpec;
use trellis_node::home::{read_key, Home};
use trellis_node::storage::blobs::BlobStore;
use trellis_proto::{Address, Amount, Transaction, TxKind};

mod corpus;
mod harness;
use harness::{base_port, Cluster};

/// A `nano` job of one worker a round, two inner steps, paying `reward` a round, taking
/// commitments for `commit_blocks` blocks after a round opens.
fn job_file(dir: &Path, name: &str, reward: u64, rounds: u32, commit_blocks: u32) -> PathBuf {
    let text = format!(
        "name = \"{name}\"\nmodel = \"nano\"\ndataset = \"{}\"\nseed = 3\nescrow = {}\nreward_per_round = {reward}\n\
         commit_blocks = {commit_blocks}\nverify_blocks = 60\n\n[diloco]\nworkers_per_round = 1\ninner_steps = 2\n\
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

#[test]
fn a_miner_leaves_a_cheap_job_for_one_that_pays_more_and_is_paid_by_it() {
    let mut spec = DevnetSpec::new(4, base_port(20_000, 0), "miner-policy", 250);
    spec.miners = 1;
    spec.rpc_rate_limit = 100_000;
    let mut net = Cluster::start("miner-policy", &spec);
    let root = net.root.clone();
    net.wait_for_height(&[0], 2, Duration::from_secs(60));
    let mut events = net.job_events(0);
    let submitter = read_key(&root.join("submitter.key")).unwrap();
    let store = BlobStore::open(&Home::new(&net.info.nodes[0].home).data().join("blobs")).unwrap();
    let submit = |net: &Cluster, file: &Path| {
        let (spec, escrow) = trellis_node::commands::job::prepare(file, &store).unwrap();
        let nonce = net.account(0, &submitter.address().to_string()).pending_nonce;
        let tx = Transaction {
            sender: submitter.public_key(),
            nonce,
            fee: Amount(10),
            kind: TxKind::SubmitJob { spec, escrow: Amount(escrow) },
        }
        .sign("miner-policy", &submitter);
        let hash = net.submit(0, &tx).expect("the job is admitted");
        net.wait_for_inclusion(0, hash, Duration::from_secs(30));
    };
    let miner_node = net.info.nodes.iter().position(|n| n.role == "miner").unwrap();
    let miner: Address = net.info.nodes[miner_node].address.parse().unwrap();
    let bond = |net: &Cluster| net.account(0, &miner.to_string()).miner_stake.map(|s| s.bonded.0);
    let bond_before = bond(&net);
    let is_in = |net: &Cluster, job: u64| net.job(0, job).is_some_and(|j| j.miners.iter().any(|m| m.address == miner));

    step("a job paying 10 a round is posted first, and the miner joins it");
    submit(&net, &job_file(&root, "cheap", 10, 40, 20));
    net.wait_until("the miner in the cheap job", Duration::from_secs(90), |net| is_in(net, 0).then_some(()));

    step("a job paying 10,000 a round is posted: the miner joins it");
    // Ten rounds of a few seconds each: longer than the cheap job's commit window (5 s), so that
    // the cheap job's round misses the miner while the paying job holds it.
    submit(&net, &job_file(&root, "paying", 10_000, 10, 40));
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
    let paid: u64 = net
        .drain(&mut events)
        .into_iter()
        .filter_map(|e| match e.event {
            trellis_contracts::Event::Rewarded { job, who, amount, as_miner: true, .. }
                if job.0 == 1 && who == miner =>
            {
                Some(amount.0)
            }
            _ => None,
        })
        .sum();
    assert!(paid > 0, "the paying job paid its miner");
    assert_eq!(bond(&net), bond_before, "the miner's bond is untouched: leaving is not slashed");
}
