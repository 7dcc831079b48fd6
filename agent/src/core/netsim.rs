//! The in-memory twin of the transport for deterministic simulations: a network of nodes
//! with per-link delay, loss and cuts, on a virtual clock, driven by a seed.
//!
//! Nothing here reads a clock or a global RNG: the simulation passes `now` (virtual
//! microseconds) and the network draws from its own seeded generator, so a seed replays the
//! same delivery order exactly. Messages on one link may be reordered when their delays
//! differ (as separate QUIC streams may be); a cut link drops everything sent while it is
//! cut, and messages already in flight on it are lost too.

use jigsaw_protocol::rng::SplitMix64;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

/// A node id in the simulation.
pub type NodeId = u32;

/// Per-link behaviour.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkConfig {
    /// Least one-way delay, µs.
    pub min_delay_us: u64,
    /// Greatest one-way delay, µs.
    pub max_delay_us: u64,
    /// Probability that a message is lost.
    pub drop: f64,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig { min_delay_us: 100, max_delay_us: 1_000, drop: 0.0 }
    }
}

#[derive(Debug)]
struct InFlight<M> {
    at: u64,
    seq: u64,
    from: NodeId,
    to: NodeId,
    msg: M,
}

impl<M> PartialEq for InFlight<M> {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl<M> Eq for InFlight<M> {}
impl<M> PartialOrd for InFlight<M> {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl<M> Ord for InFlight<M> {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        // Min-heap on (time, send order).
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// Counters for assertions and reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Messages handed to `send`.
    pub sent: u64,
    /// Delivered.
    pub delivered: u64,
    /// Lost to the drop probability.
    pub dropped: u64,
    /// Lost to a cut link (at send or in flight).
    pub cut: u64,
}

/// The simulated network.
#[derive(Debug)]
pub struct SimNet<M> {
    rng: SplitMix64,
    default_link: LinkConfig,
    links: BTreeMap<(NodeId, NodeId), LinkConfig>,
    cut: BTreeSet<(NodeId, NodeId)>,
    queue: BinaryHeap<InFlight<M>>,
    seq: u64,
    stats: NetStats,
}

impl<M> SimNet<M> {
    /// A network whose links all behave as `default_link`, seeded by `seed`.
    pub fn new(seed: u64, default_link: LinkConfig) -> SimNet<M> {
        SimNet {
            rng: SplitMix64::new(seed ^ 0x5DEE_CE66_D1CE_5EED),
            default_link,
            links: BTreeMap::new(),
            cut: BTreeSet::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            stats: NetStats::default(),
        }
    }

    fn next(&mut self) -> u64 {
        self.rng.next_u64()
    }

    /// Configure the directed link `from → to`.
    pub fn set_link(&mut self, from: NodeId, to: NodeId, cfg: LinkConfig) {
        self.links.insert((from, to), cfg);
    }

    /// Cut both directions between `a` and `b`; in-flight messages between them are lost.
    pub fn cut(&mut self, a: NodeId, b: NodeId) {
        self.cut.insert((a, b));
        self.cut.insert((b, a));
        let before = self.queue.len();
        let queue = std::mem::take(&mut self.queue);
        self.queue = queue.into_iter().filter(|m| !self.cut.contains(&(m.from, m.to))).collect();
        self.stats.cut += (before - self.queue.len()) as u64;
    }

    /// Heal both directions between `a` and `b`.
    pub fn heal(&mut self, a: NodeId, b: NodeId) {
        self.cut.remove(&(a, b));
        self.cut.remove(&(b, a));
    }

    /// Cut `node` from every other node in `all` (a crash or a partition of one).
    pub fn isolate(&mut self, node: NodeId, all: &[NodeId]) {
        for &o in all.iter().filter(|&&o| o != node) {
            self.cut(node, o);
        }
    }

    /// Heal every cut.
    pub fn heal_all(&mut self) {
        self.cut.clear();
    }

    /// Send `msg` at virtual time `now`.
    pub fn send(&mut self, now: u64, from: NodeId, to: NodeId, msg: M) {
        self.stats.sent += 1;
        if self.cut.contains(&(from, to)) {
            self.stats.cut += 1;
            return;
        }
        let cfg = self.links.get(&(from, to)).copied().unwrap_or(self.default_link);
        let roll = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        if roll < cfg.drop {
            self.stats.dropped += 1;
            return;
        }
        let span = cfg.max_delay_us.saturating_sub(cfg.min_delay_us);
        let delay = cfg.min_delay_us + if span == 0 { 0 } else { self.next() % (span + 1) };
        self.seq += 1;
        self.queue.push(InFlight { at: now + delay, seq: self.seq, from, to, msg });
    }

    /// Time of the next delivery, if any.
    pub fn next_delivery(&self) -> Option<u64> {
        self.queue.peek().map(|m| m.at)
    }

    /// Every message due at or before `now`, in delivery order: `(time, from, to, msg)`.
    pub fn deliver_until(&mut self, now: u64) -> Vec<(u64, NodeId, NodeId, M)> {
        let mut out = Vec::new();
        while self.queue.peek().is_some_and(|m| m.at <= now) {
            if let Some(m) = self.queue.pop() {
                self.stats.delivered += 1;
                out.push((m.at, m.from, m.to, m.msg));
            }
        }
        out
    }

    /// Counters so far.
    pub fn stats(&self) -> NetStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(seed: u64) -> Vec<(u64, NodeId, NodeId, u32)> {
        let mut net = SimNet::new(seed, LinkConfig { min_delay_us: 10, max_delay_us: 500, drop: 0.2 });
        for i in 0..200u32 {
            net.send(u64::from(i) * 7, i % 5, (i + 1) % 5, i);
        }
        net.deliver_until(u64::MAX)
    }

    #[test]
    fn a_seed_replays_the_same_trace() {
        assert_eq!(trace(42), trace(42));
        assert_ne!(trace(42), trace(43));
    }

    #[test]
    fn accounting_and_delays_hold() {
        let mut net = SimNet::new(1, LinkConfig { min_delay_us: 10, max_delay_us: 500, drop: 0.2 });
        for i in 0..1000u32 {
            net.send(0, 0, 1, i);
        }
        let got = net.deliver_until(u64::MAX);
        let s = net.stats();
        assert_eq!(s.sent, s.delivered + s.dropped + s.cut);
        assert!(got.iter().all(|(at, ..)| (10..=500).contains(at)));
        assert!((100..300).contains(&s.dropped), "about 20 % dropped: {}", s.dropped);
        assert!(got.windows(2).all(|w| w[0].0 <= w[1].0), "delivered in time order");
    }

    #[test]
    fn cuts_lose_in_flight_and_new_messages_until_healed() {
        let mut net = SimNet::new(7, LinkConfig::default());
        net.send(0, 0, 1, "before");
        net.send(0, 1, 2, "other link");
        net.cut(0, 1);
        net.send(1, 1, 0, "while cut");
        let got: Vec<&str> = net.deliver_until(u64::MAX).into_iter().map(|m| m.3).collect();
        assert_eq!(got, vec!["other link"]);
        net.heal(0, 1);
        net.send(2, 0, 1, "after");
        let got: Vec<&str> = net.deliver_until(u64::MAX).into_iter().map(|m| m.3).collect();
        assert_eq!(got, vec!["after"]);
        assert_eq!(net.stats().cut, 2);
    }
}
