//! The WAN testbed (`scripts/wan-testbed.sh`): what a network profile says, and the link model
//! that turns it into a fate for every packet.
//!
//! The kernel the project runs on has no `netem` qdisc, so delay, jitter and loss cannot be set
//! with `tc`. Instead every node of a testbed devnet lives in its own network namespace whose only
//! interface is a TUN device held by one relay process (`wan-relay`); the relay reads each IP
//! packet a node sends and writes it into the receiver's TUN device when [`LinkModel::admit`]
//! says, or drops it. The model is pure (time is an argument, randomness a seeded generator), so
//! what it does to a packet is tested here without a network.
//!
//! What a packet from node `a` to node `b` of `len` bytes goes through, in order:
//! 1. **loss**: dropped with the profile's probability;
//! 2. **`a`'s uplink**: it waits for the packets `a` sent before it, then takes `len·8/rate`;
//!    dropped if it would wait longer than the profile's `queue_ms` (a full queue);
//! 3. **propagation**: half the round-trip time between the two regions, plus the path's jitter:
//!    an offset that moves in straight lines between targets drawn uniformly from ±`jitter_ms`,
//!    a new one every [`jitter_period_ns`] (at least 50 ms). It changes more slowly than time
//!    passes, so a later packet never overtakes an earlier one (a real path mostly keeps order;
//!    per-packet jitter would reorder TCP segments and trigger spurious retransmissions), and its
//!    mean is zero, so the mean round trip is the profile's;
//! 4. **`b`'s downlink**: as the uplink, at `b`'s rate.
//!
//! A profile's rate is a node's access link in each direction; the regions' core is not a
//! bottleneck. The control address ([`CONTROL_HOST`]) is how the devnet's monitor reaches the
//! nodes' RPC from the host: its packets are carried at once and never dropped.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use serde::Deserialize;

/// The testbed's subnet: node `i` is `10.77.0.(i + 1)`.
pub const SUBNET: [u8; 3] = [10, 77, 0];
/// The host's own end (the devnet's monitor), outside every profile's shaping.
pub const CONTROL_HOST: u8 = 254;
/// Nodes a profile may hold (addresses 10.77.0.1 to 10.77.0.200).
pub const MAX_NODES: usize = 200;

/// Node `index`'s address.
pub fn node_address(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], (index + 1) as u8)
}

/// The host's address on the testbed's subnet.
pub fn control_address() -> Ipv4Addr {
    Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], CONTROL_HOST)
}

/// Where an address is on the testbed: a node, the control end, or elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Node(usize),
    Control,
}

impl Endpoint {
    /// The endpoint an IPv4 destination names, if it is on the testbed.
    pub fn of(address: Ipv4Addr, nodes: usize) -> Option<Endpoint> {
        let [a, b, c, d] = address.octets();
        if [a, b, c] != SUBNET {
            return None;
        }
        match d {
            CONTROL_HOST => Some(Endpoint::Control),
            1..=200 if usize::from(d) <= nodes => Some(Endpoint::Node(usize::from(d) - 1)),
            _ => None,
        }
    }
}

/// A network profile, as `testbed/profiles/NAME.toml` writes it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub name: String,
    /// What the profile stands for, for the testbed's report.
    pub description: String,
    /// Each packet's extra delay is drawn uniformly from ±this (milliseconds).
    #[serde(default)]
    pub jitter_ms: f64,
    /// Probability that a packet is lost, each packet on its own.
    #[serde(default)]
    pub loss: f64,
    /// The longest a packet waits in a node's uplink or downlink queue before it is dropped.
    #[serde(default = "default_queue_ms")]
    pub queue_ms: f64,
    /// Region names, in the order of `rtt_ms`'s rows and columns.
    pub regions: Vec<String>,
    /// Round-trip times between regions (milliseconds); the diagonal is the time within a region.
    pub rtt_ms: Vec<Vec<f64>>,
    /// One entry per node, in the devnet's order (validators first, then miners).
    pub nodes: Vec<NodeLink>,
}

fn default_queue_ms() -> f64 {
    200.0
}

/// One node's place and access link.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeLink {
    pub region: String,
    /// Access link rate in each direction, megabits per second.
    pub mbit: f64,
}

/// Why a profile cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} is not a profile: {source}")]
    Parse { path: String, source: Box<toml::de::Error> },
    #[error("profile {name}: {problem}")]
    Invalid { name: String, problem: String },
}

impl Profile {
    /// Reads and checks a profile file.
    pub fn load(path: &Path) -> Result<Profile, ProfileError> {
        let shown = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|source| ProfileError::Read { path: shown.clone(), source })?;
        Profile::parse(&text).map_err(|error| match error {
            ProfileError::Parse { source, .. } => ProfileError::Parse { path: shown, source },
            other => other,
        })
    }

    /// Parses and checks a profile.
    pub fn parse(text: &str) -> Result<Profile, ProfileError> {
        let profile: Profile = toml::from_str(text)
            .map_err(|source| ProfileError::Parse { path: "profile".into(), source: Box::new(source) })?;
        profile.check()?;
        Ok(profile)
    }

    fn check(&self) -> Result<(), ProfileError> {
        let invalid = |problem: String| Err(ProfileError::Invalid { name: self.name.clone(), problem });
        let regions = self.regions.len();
        if regions == 0 || self.rtt_ms.len() != regions || self.rtt_ms.iter().any(|row| row.len() != regions) {
            return invalid(format!("rtt_ms must be a {regions} × {regions} matrix, one row and column per region"));
        }
        for (i, row) in self.rtt_ms.iter().enumerate() {
            for (j, rtt) in row.iter().enumerate() {
                if !(rtt.is_finite() && *rtt >= 0.0 && *rtt <= 10_000.0) {
                    return invalid(format!("rtt_ms[{i}][{j}] = {rtt} is not between 0 and 10,000"));
                }
                if (rtt - self.rtt_ms[j][i]).abs() > 1e-9 {
                    return invalid(format!("rtt_ms is not symmetric at [{i}][{j}]"));
                }
            }
        }
        if self.nodes.is_empty() || self.nodes.len() > MAX_NODES {
            return invalid(format!("{} nodes; a profile holds 1 to {MAX_NODES}", self.nodes.len()));
        }
        for (i, node) in self.nodes.iter().enumerate() {
            if !self.regions.contains(&node.region) {
                return invalid(format!("node {i} is in region {:?}, which is not in `regions`", node.region));
            }
            if !(node.mbit.is_finite() && node.mbit >= 0.01 && node.mbit <= 100_000.0) {
                return invalid(format!("node {i}'s rate {} Mbit/s is not between 0.01 and 100,000", node.mbit));
            }
        }
        if !(self.loss.is_finite() && (0.0..0.5).contains(&self.loss)) {
            return invalid(format!("loss {} is not a probability below 0.5", self.loss));
        }
        if !(self.jitter_ms.is_finite() && (0.0..=1_000.0).contains(&self.jitter_ms)) {
            return invalid(format!("jitter_ms {} is not between 0 and 1,000", self.jitter_ms));
        }
        if !(self.queue_ms.is_finite() && self.queue_ms >= 1.0 && self.queue_ms <= 10_000.0) {
            return invalid(format!("queue_ms {} is not between 1 and 10,000", self.queue_ms));
        }
        Ok(())
    }

    /// The round-trip time between two nodes, milliseconds.
    pub fn rtt_between(&self, a: usize, b: usize) -> f64 {
        let region = |node: usize| self.regions.iter().position(|r| *r == self.nodes[node].region).unwrap_or(0);
        self.rtt_ms[region(a)][region(b)]
    }
}

/// What happens to one packet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fate {
    /// Written to the receiver at this time (nanoseconds on the model's clock).
    Deliver(u64),
    Lost,
    /// A queue on the way held more than `queue_ms` of traffic.
    QueueFull,
}

/// Counts of what the model did, for the relay's report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkCounts {
    pub delivered: u64,
    pub lost: u64,
    pub queue_full: u64,
    pub bytes: u64,
}

/// The profile applied: per-node queues, per-path order, and the loss and jitter draws.
#[derive(Debug)]
pub struct LinkModel {
    profile: Profile,
    /// When each node's uplink and downlink are next free (ns).
    uplink_free: Vec<u64>,
    downlink_free: Vec<u64>,
    /// Each path's jitter and the latest arrival it handed out.
    paths: BTreeMap<(usize, usize), PathState>,
    random: SplitMix64,
    pub counts: LinkCounts,
}

const NS_PER_MS: f64 = 1e6;

impl LinkModel {
    /// The model of `profile`, its draws seeded with `seed`.
    pub fn new(profile: Profile, seed: u64) -> LinkModel {
        let nodes = profile.nodes.len();
        LinkModel {
            profile,
            uplink_free: vec![0; nodes],
            downlink_free: vec![0; nodes],
            paths: BTreeMap::new(),
            random: SplitMix64(seed),
            counts: LinkCounts::default(),
        }
    }

    /// The fate of a `len`-byte packet that `from` sends to `to` at `now` (ns). Packets to or
    /// from the control end are delivered at once.
    pub fn admit(&mut self, from: Endpoint, to: Endpoint, len: usize, now: u64) -> Fate {
        let (Endpoint::Node(a), Endpoint::Node(b)) = (from, to) else {
            self.counts.delivered += 1;
            self.counts.bytes += len as u64;
            return Fate::Deliver(now);
        };
        if self.profile.loss > 0.0 && self.random.unit() < self.profile.loss {
            self.counts.lost += 1;
            return Fate::Lost;
        }
        let queue = (self.profile.queue_ms * NS_PER_MS) as u64;
        let serialise = |mbit: f64| (len as f64 * 8.0 / (mbit * 1e6) * 1e9) as u64;
        let up_start = now.max(self.uplink_free[a]);
        if up_start - now > queue {
            self.counts.queue_full += 1;
            return Fate::QueueFull;
        }
        let sent = up_start + serialise(self.profile.nodes[a].mbit);
        let amplitude = self.profile.jitter_ms * NS_PER_MS;
        let period = jitter_period_ns(self.profile.jitter_ms);
        let random = &mut self.random;
        let path = self.paths.entry((a, b)).or_insert_with(|| PathState::new(sent, period, amplitude, random));
        let jitter = path.offset(sent, period, amplitude, random);
        let one_way = self.profile.rtt_between(a, b) / 2.0 * NS_PER_MS;
        let arrival = (sent as f64 + (one_way + jitter).max(0.0)) as u64;
        let arrival = arrival.max(path.last_arrival);
        let down_start = arrival.max(self.downlink_free[b]);
        if down_start - arrival > queue {
            self.counts.queue_full += 1;
            return Fate::QueueFull;
        }
        let delivered = down_start + serialise(self.profile.nodes[b].mbit);
        // Only a packet that goes through takes its place in the queues.
        self.uplink_free[a] = sent;
        path.last_arrival = arrival;
        self.downlink_free[b] = delivered;
        self.counts.delivered += 1;
        self.counts.bytes += len as u64;
        Fate::Deliver(delivered)
    }
}

/// How often a path's jitter draws a new target: at least 50 ms, and long enough that the offset
/// moves at most half as fast as time (`2·jitter/period ≤ 0.5`).
pub fn jitter_period_ns(jitter_ms: f64) -> f64 {
    (4.0 * jitter_ms).max(50.0) * NS_PER_MS
}

/// One path's jitter: the offset runs in a straight line from `(from_at, from)` to `(to_at, to)`.
#[derive(Debug, Clone)]
struct PathState {
    from_at: f64,
    from: f64,
    to_at: f64,
    to: f64,
    last_arrival: u64,
}

impl PathState {
    fn new(now: u64, period: f64, amplitude: f64, random: &mut SplitMix64) -> PathState {
        let draw = |random: &mut SplitMix64| (random.unit() * 2.0 - 1.0) * amplitude;
        let from = draw(random);
        PathState { from_at: now as f64, from, to_at: now as f64 + period, to: draw(random), last_arrival: 0 }
    }

    /// The offset at `now` (ns), drawing new targets as time passes them.
    fn offset(&mut self, now: u64, period: f64, amplitude: f64, random: &mut SplitMix64) -> f64 {
        if amplitude == 0.0 {
            return 0.0;
        }
        let now = now as f64;
        if now >= self.to_at + period {
            // Idle for more than a period: start a new line from where the last one ended.
            self.from_at = now;
            self.from = self.to;
            self.to_at = now + period;
            self.to = (random.unit() * 2.0 - 1.0) * amplitude;
        }
        while now >= self.to_at {
            self.from_at = self.to_at;
            self.from = self.to;
            self.to_at += period;
            self.to = (random.unit() * 2.0 - 1.0) * amplitude;
        }
        self.from + (self.to - self.from) * (now - self.from_at) / (self.to_at - self.from_at)
    }
}

/// A small, seeded generator (SplitMix64): the draws of a testbed run repeat with its seed.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(loss: f64, jitter_ms: f64) -> Profile {
        Profile {
            name: "test".into(),
            description: String::new(),
            jitter_ms,
            loss,
            queue_ms: 100.0,
            regions: vec!["eu".into(), "asia".into()],
            rtt_ms: vec![vec![10.0, 150.0], vec![150.0, 10.0]],
            nodes: vec![
                NodeLink { region: "eu".into(), mbit: 100.0 },
                NodeLink { region: "asia".into(), mbit: 50.0 },
                NodeLink { region: "eu".into(), mbit: 1000.0 },
            ],
        }
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn a_lone_packet_takes_half_the_rtt_and_both_links_serialisation() {
        let mut model = LinkModel::new(profile(0.0, 0.0), 1);
        // 1,250 bytes: 0.1 ms at 100 Mbit/s, 0.2 ms at 50 Mbit/s, plus 75 ms one way.
        let Fate::Deliver(at) = model.admit(Endpoint::Node(0), Endpoint::Node(1), 1_250, 0) else { panic!() };
        assert_eq!(at, 75 * MS + MS / 10 + MS / 5);
        // Within a region: 5 ms one way.
        let Fate::Deliver(at) = model.admit(Endpoint::Node(2), Endpoint::Node(0), 1_250, 10 * MS) else { panic!() };
        assert_eq!(at, 10 * MS + 5 * MS + MS / 100 + MS / 10);
        // The control end is not shaped.
        assert_eq!(model.admit(Endpoint::Control, Endpoint::Node(1), 9_000, 3), Fate::Deliver(3));
    }

    #[test]
    fn a_burst_is_carried_at_the_slower_links_rate_and_a_full_queue_drops() {
        let mut model = LinkModel::new(profile(0.0, 0.0), 1);
        // 2,000 packets of 1,250 bytes at once from node 0 (100 Mbit/s) to node 1 (50 Mbit/s).
        let fates: Vec<Fate> =
            (0..2_000).map(|_| model.admit(Endpoint::Node(0), Endpoint::Node(1), 1_250, 0)).collect();
        let delivered: Vec<u64> =
            fates.iter().filter_map(|f| if let Fate::Deliver(t) = f { Some(*t) } else { None }).collect();
        assert!(delivered.windows(2).all(|w| w[0] < w[1]), "in order");
        // The downlink takes 0.2 ms a packet; packets arrive every 0.1 ms, so its queue grows by
        // 0.1 ms a packet and is full (100 ms) after about 1,000 (as is the uplink's, by then).
        let gaps: Vec<u64> = delivered.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.iter().all(|g| *g == MS / 5), "{:?}", &gaps[..5]);
        assert!(delivered.len() > 990 && delivered.len() < 1_010, "{} delivered", delivered.len());
        assert_eq!(model.counts.queue_full as usize, 2_000 - delivered.len());
        // Once drained, the path carries again.
        assert!(matches!(model.admit(Endpoint::Node(0), Endpoint::Node(1), 1_250, 10_000 * MS), Fate::Deliver(_)));
    }

    #[test]
    fn loss_and_jitter_follow_the_profile_without_reordering_a_path() {
        let mut model = LinkModel::new(profile(0.01, 20.0), 7);
        let mut last = 0;
        let mut delays = Vec::new();
        let trials = 100_000u64;
        for i in 0..trials {
            // A small packet every 0.5 ms (far below the jitter): the links are idle, only
            // propagation and jitter remain.
            let now = i * MS / 2;
            if let Fate::Deliver(at) = model.admit(Endpoint::Node(0), Endpoint::Node(1), 100, now) {
                assert!(at >= last, "packet {i} overtook the one before it");
                last = at;
                // Less the two links' serialisation (8 µs at 100 Mbit/s, 16 µs at 50).
                delays.push((at - now - 24_000) as f64 / MS as f64);
            }
        }
        let lost = model.counts.lost as f64 / trials as f64;
        assert!((lost - 0.01).abs() < 0.002, "lost {lost}");
        // 75 ms one way ± 20 ms, centred on 75.
        let mean = delays.iter().sum::<f64>() / delays.len() as f64;
        let max = delays.iter().cloned().fold(0.0, f64::max);
        let min = delays.iter().cloned().fold(f64::MAX, f64::min);
        assert!(max > 90.0 && max <= 95.0 + 1e-6, "max {max}");
        assert!((55.0 - 1e-6..60.0).contains(&min), "min {min}");
        assert!((mean - 75.0).abs() < 2.0, "mean {mean}");
        // The same seed makes the same run.
        let mut again = LinkModel::new(profile(0.01, 20.0), 7);
        let first: Vec<Fate> =
            (0..100).map(|i| again.admit(Endpoint::Node(0), Endpoint::Node(2), 100, i * 3 * MS)).collect();
        let mut third = LinkModel::new(profile(0.01, 20.0), 7);
        let second: Vec<Fate> =
            (0..100).map(|i| third.admit(Endpoint::Node(0), Endpoint::Node(2), 100, i * 3 * MS)).collect();
        assert_eq!(first, second);
    }

    #[test]
    fn bad_profiles_are_refused_with_the_reason() {
        let good = include_str!("../profiles/continents.toml");
        let profile = Profile::parse(good).unwrap();
        assert_eq!(profile.nodes.len(), 8);
        for (from, to, says) in [
            ("loss = 0.001", "loss = 0.7", "loss"),
            ("jitter_ms = 5.0", "jitter_ms = -1.0", "jitter_ms"),
            ("region = \"asia\"\nmbit = 50.0", "region = \"mars\"\nmbit = 50.0", "mars"),
            ("mbit = 50.0", "mbit = 0.0", "rate"),
        ] {
            assert!(good.contains(from), "{from}");
            let error = Profile::parse(&good.replacen(from, to, 1)).unwrap_err().to_string();
            assert!(error.contains(says), "{error}");
        }
        let asymmetric = good.replacen("[30.0, 80.0", "[30.0, 81.0", 1);
        assert!(Profile::parse(&asymmetric).unwrap_err().to_string().contains("symmetric"));
        assert!(Profile::parse("name = 3").is_err());
        for path in ["lan.toml", "continents.toml"] {
            let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles").join(path);
            Profile::load(&file).unwrap();
        }
    }

    #[test]
    fn addresses_map_to_nodes_and_the_control_end() {
        assert_eq!(Endpoint::of(node_address(0), 8), Some(Endpoint::Node(0)));
        assert_eq!(Endpoint::of(node_address(7), 8), Some(Endpoint::Node(7)));
        assert_eq!(Endpoint::of(node_address(8), 8), None);
        assert_eq!(Endpoint::of(control_address(), 8), Some(Endpoint::Control));
        assert_eq!(Endpoint::of(Ipv4Addr::new(10, 77, 1, 1), 8), None);
        assert_eq!(Endpoint::of(Ipv4Addr::LOCALHOST, 8), None);
    }
}
