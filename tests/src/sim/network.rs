//! Simulated time and the simulated network: a seeded event queue, per-message delay and loss,
//! partitions, and a fault plan of partitions and crashes drawn from the seed.
//!
//! Guarantees:
//! - time is a `u64` of milliseconds that only the queue advances; nothing reads a clock;
//! - events at the same instant run in the order they were scheduled (a sequence number breaks
//!   ties), so a run is a pure function of its seed;
//! - a message crossing a partition is dropped when it would arrive, so a partition that starts
//!   while a message is in flight cuts it, as a real one would;
//! - the fault plan ends every fault before the calm phase: from `calm_from` on, the network is
//!   whole, every node is up, and only the calm loss rate applies (the liveness window).

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::rng::SimRng;

/// Index of a simulated node.
pub type NodeId = usize;
/// Simulated milliseconds since the start of the run.
pub type Time = u64;

struct Entry<E> {
    at: Time,
    seq: u64,
    event: E,
}

impl<E> PartialEq for Entry<E> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl<E> Eq for Entry<E> {}

impl<E> PartialOrd for Entry<E> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<E> Ord for Entry<E> {
    /// Reversed, so the max-heap pops the earliest event (then the earliest scheduled).
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// Events ordered by simulated time, ties broken by scheduling order.
pub struct EventQueue<E> {
    heap: BinaryHeap<Entry<E>>,
    now: Time,
    next_seq: u64,
}

impl<E> Default for EventQueue<E> {
    fn default() -> Self {
        Self { heap: BinaryHeap::new(), now: 0, next_seq: 0 }
    }
}

impl<E> EventQueue<E> {
    /// Schedules `event` at `at`; an instant in the past runs now (time never goes back).
    pub fn schedule(&mut self, at: Time, event: E) {
        let at = at.max(self.now);
        self.heap.push(Entry { at, seq: self.next_seq, event });
        self.next_seq += 1;
    }

    pub fn schedule_in(&mut self, delay: Time, event: E) {
        self.schedule(self.now.saturating_add(delay), event);
    }

    /// The next event, advancing the clock to its time.
    pub fn pop(&mut self) -> Option<(Time, E)> {
        let entry = self.heap.pop()?;
        debug_assert!(entry.at >= self.now, "the queue never runs an event in the past");
        self.now = entry.at;
        Some((entry.at, entry.event))
    }
}

/// How messages travel: delay range, loss, and the current partition.
#[derive(Debug, Clone)]
pub struct Links {
    pub min_delay_ms: Time,
    pub max_delay_ms: Time,
    /// Chance that one message in 1,000 takes `spike_delay_ms` instead (a slow link or a
    /// retransmission), in ppm.
    pub spike_ppm: u64,
    pub spike_delay_ms: Time,
    /// Current loss rate, in ppm.
    pub loss_ppm: u64,
    /// Side of each node while partitioned; `None` when the network is whole.
    partition: Option<Vec<u8>>,
}

/// What happened to one message handed to the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Arrives after this many milliseconds (unless a partition cuts it on arrival).
    Deliver(Time),
    Lost,
}

impl Links {
    pub fn new(min_delay_ms: Time, max_delay_ms: Time, loss_ppm: u64) -> Self {
        Self { min_delay_ms, max_delay_ms, spike_ppm: 5_000, spike_delay_ms: 400, loss_ppm, partition: None }
    }

    /// Draws the fate of one message. Self-addressed messages never travel the network.
    pub fn fate(&self, rng: &mut SimRng, from: NodeId, to: NodeId) -> Fate {
        if from == to {
            return Fate::Deliver(0);
        }
        if rng.chance_ppm(self.loss_ppm) {
            return Fate::Lost;
        }
        let mut delay = rng.between(self.min_delay_ms, self.max_delay_ms);
        if rng.chance_ppm(self.spike_ppm) {
            delay += self.spike_delay_ms;
        }
        Fate::Deliver(delay)
    }

    /// Whether a message from `from` can reach `to` now.
    pub fn connected(&self, from: NodeId, to: NodeId) -> bool {
        match &self.partition {
            None => true,
            Some(sides) => sides.get(from) == sides.get(to),
        }
    }

    pub fn partition(&mut self, sides: Vec<u8>) {
        self.partition = Some(sides);
    }

    pub fn heal(&mut self) {
        self.partition = None;
    }

    pub fn is_partitioned(&self) -> bool {
        self.partition.is_some()
    }
}

/// One scheduled fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Splits the nodes: `sides[i]` is node i's side.
    Partition(Vec<u8>),
    Heal,
    /// The node loses everything not on its "disk" (ledger and WAL).
    Crash(NodeId),
    Restart(NodeId),
    /// Sets the loss rate (ppm).
    Loss(u64),
}

/// Bounds for drawing a fault plan.
#[derive(Debug, Clone)]
pub struct FaultConfig {
    pub partitions: bool,
    pub crashes: bool,
    /// Loss rate drawn per loss burst, up to this (ppm).
    pub max_loss_ppm: u64,
    /// Loss rate in the calm phase (ppm).
    pub calm_loss_ppm: u64,
    /// Mean gap between faults in the chaos phase.
    pub mean_gap_ms: Time,
    /// Longest a partition or a crash lasts.
    pub max_fault_ms: Time,
}

impl FaultConfig {
    /// No partition, crash or loss, ever: for scenarios about Byzantine validators alone.
    pub const NONE: FaultConfig = FaultConfig {
        partitions: false,
        crashes: false,
        max_loss_ppm: 0,
        calm_loss_ppm: 0,
        mean_gap_ms: 1_000,
        max_fault_ms: 1_000,
    };
}

/// Faults with their times, all ended by `calm_from`.
#[derive(Debug, Clone)]
pub struct FaultPlan {
    pub faults: Vec<(Time, Fault)>,
    pub calm_from: Time,
}

impl FaultPlan {
    /// Draws faults for `nodes` nodes over `0..calm_from`, then heals everything at `calm_from`.
    pub fn draw(rng: &mut SimRng, nodes: usize, calm_from: Time, config: &FaultConfig) -> FaultPlan {
        let mut faults = Vec::new();
        let mut down_until = vec![0 as Time; nodes];
        let mut time = rng.between(config.mean_gap_ms / 2, config.mean_gap_ms * 3 / 2);
        while time < calm_from {
            let kind = rng.below(3);
            let length = rng.between(config.max_fault_ms / 10, config.max_fault_ms);
            let end = (time + length).min(calm_from);
            match kind {
                0 if config.partitions => {
                    // A random split; sometimes one node alone, sometimes halves.
                    let mut sides: Vec<u8> = (0..nodes).map(|_| rng.below(2) as u8).collect();
                    if sides.iter().all(|&s| s == sides[0]) {
                        let lone = rng.below(nodes as u64) as usize;
                        sides[lone] ^= 1;
                    }
                    faults.push((time, Fault::Partition(sides)));
                    faults.push((end, Fault::Heal));
                }
                1 if config.crashes => {
                    let node = rng.below(nodes as u64) as usize;
                    if down_until[node] <= time {
                        faults.push((time, Fault::Crash(node)));
                        faults.push((end, Fault::Restart(node)));
                        down_until[node] = end;
                    }
                }
                _ if config.max_loss_ppm > 0 => {
                    faults.push((time, Fault::Loss(rng.between(0, config.max_loss_ppm))));
                    faults.push((end, Fault::Loss(config.calm_loss_ppm)));
                }
                _ => {}
            }
            time += rng.between(config.mean_gap_ms / 2, config.mean_gap_ms * 3 / 2);
        }
        // The calm phase: whatever is still broken is repaired at once.
        faults.push((calm_from, Fault::Heal));
        faults.push((calm_from, Fault::Loss(config.calm_loss_ppm)));
        for node in 0..nodes {
            faults.push((calm_from, Fault::Restart(node)));
        }
        faults.sort_by_key(|(time, _)| *time);
        FaultPlan { faults, calm_from }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_pops_in_time_order_and_fifo_within_an_instant() {
        let mut queue = EventQueue::default();
        queue.schedule(10, "b");
        queue.schedule(5, "a");
        queue.schedule(10, "c");
        assert_eq!(queue.pop(), Some((5, "a")));
        assert_eq!(queue.pop(), Some((10, "b")));
        assert_eq!(queue.pop(), Some((10, "c")));
        assert_eq!(queue.pop(), None);
        queue.schedule(3, "late");
        assert_eq!(queue.pop(), Some((10, "late")), "an event in the past runs now, never before now");
    }

    #[test]
    fn partitions_cut_links_across_sides_only() {
        let mut links = Links::new(1, 5, 0);
        links.partition(vec![0, 0, 1]);
        assert!(links.connected(0, 1));
        assert!(!links.connected(1, 2));
        links.heal();
        assert!(links.connected(1, 2));
    }

    #[test]
    fn fault_plans_end_every_fault_by_the_calm_phase() {
        let config = FaultConfig {
            partitions: true,
            crashes: true,
            max_loss_ppm: 200_000,
            calm_loss_ppm: 10_000,
            mean_gap_ms: 1_000,
            max_fault_ms: 5_000,
        };
        for seed in 0..50 {
            let plan = FaultPlan::draw(&mut SimRng::new(seed), 5, 20_000, &config);
            let mut partitioned = false;
            let mut down = [false; 5];
            let mut loss = 0;
            for (time, fault) in &plan.faults {
                assert!(*time <= plan.calm_from);
                match fault {
                    Fault::Partition(_) => partitioned = true,
                    Fault::Heal => partitioned = false,
                    Fault::Crash(n) => down[*n] = true,
                    Fault::Restart(n) => down[*n] = false,
                    Fault::Loss(l) => loss = *l,
                }
            }
            assert!(!partitioned && down.iter().all(|d| !d) && loss == config.calm_loss_ppm, "seed {seed}");
        }
    }
}
