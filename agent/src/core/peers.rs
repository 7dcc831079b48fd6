//! Which peers a frontend avoids for a while: the suspect list behind stage routing.
//!
//! A peer becomes **suspect** in two ways:
//!
//! * a stage to it failed in transport (timeout, refused connection, reset): at once;
//! * it stayed **silent** — a first attempt there was hedged because no reply came by the
//!   time a healthy instance would have answered — [`SILENT_LIMIT`] times in a row with no
//!   reply from it in between. A SIGKILLed agent sends nothing: its QUIC connections stay
//!   open on the sender's side until the idle timeout (10 s), so without this rule every
//!   stage routed there in those seconds waited for the hedge delay, and a 20 ms SLO app
//!   answered most of those requests late.
//!
//! Any reply from a peer (a result, a drop, an error message: it is alive) clears its
//! silence count and its suspicion. A suspect stays suspect for [`SUSPECT_FOR`] unless it
//! replies first; routing avoids suspects while another target exists, so a peer that is
//! merely slow is only avoided until its next late reply.
//!
//! Time is passed in (microseconds on the caller's monotonic clock); nothing here reads a
//! clock.

use std::collections::BTreeMap;
use std::time::Duration;

/// How long a peer stays suspect (unless it replies first).
pub const SUSPECT_FOR: Duration = Duration::from_secs(2);

/// Consecutive hedged (silent) first attempts, with no reply in between, that make a peer
/// suspect. One is not enough: a healthy peer behind a busy queue is hedged now and then
/// (and its late reply clears the count). Two in a row without any reply is rare for a
/// live peer, and a false suspicion lasts only until its next reply.
pub const SILENT_LIMIT: u32 = 2;

/// Why a peer is suspect (for logs and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suspicion {
    /// A stage failed in transport.
    TransportFailure,
    /// [`SILENT_LIMIT`] hedged attempts in a row without a reply.
    Silent,
}

#[derive(Debug, Clone, Default)]
struct Peer {
    /// Hedged first attempts since the last reply.
    silent: u32,
    /// Suspect until (µs), and why.
    until: Option<(u64, Suspicion)>,
}

/// The suspect list of one frontend.
#[derive(Debug, Clone, Default)]
pub struct PeerHealth {
    peers: BTreeMap<String, Peer>,
}

/// The largest number of peers remembered: entries with nothing to remember are dropped
/// first, so a flood of distinct names (there is none in a plan) cannot grow it further.
const MAX_PEERS: usize = 4096;

impl PeerHealth {
    /// An empty list.
    pub fn new() -> PeerHealth {
        PeerHealth::default()
    }

    fn entry(&mut self, node: &str, now: u64) -> &mut Peer {
        if !self.peers.contains_key(node) && self.peers.len() >= MAX_PEERS {
            self.peers.retain(|_, p| p.silent > 0 || p.until.is_some_and(|(u, _)| u > now));
            if self.peers.len() >= MAX_PEERS {
                // Still full of live entries: forget the one closest to expiry.
                if let Some(k) =
                    self.peers.iter().min_by_key(|(_, p)| p.until.map_or(0, |(u, _)| u)).map(|(k, _)| k.clone())
                {
                    self.peers.remove(&k);
                }
            }
        }
        self.peers.entry(node.to_string()).or_default()
    }

    /// A stage to `node` failed in transport at `now`: suspect at once.
    pub fn transport_failed(&mut self, node: &str, now: u64) {
        let p = self.entry(node, now);
        p.until = Some((now.saturating_add(SUSPECT_FOR.as_micros() as u64), Suspicion::TransportFailure));
    }

    /// A first attempt on `node` was hedged at `now` (no reply when a healthy instance would
    /// have answered). Returns `true` when this made the peer suspect.
    pub fn silent(&mut self, node: &str, now: u64) -> bool {
        let p = self.entry(node, now);
        p.silent = p.silent.saturating_add(1);
        if p.silent >= SILENT_LIMIT {
            p.silent = 0;
            let fresh = p.until.is_none_or(|(u, _)| u <= now);
            p.until = Some((now.saturating_add(SUSPECT_FOR.as_micros() as u64), Suspicion::Silent));
            return fresh;
        }
        false
    }

    /// `node` replied (anything over the transport): it is alive.
    pub fn replied(&mut self, node: &str) {
        self.peers.remove(node);
    }

    /// Whether `node` is suspect at `now`, and why.
    pub fn suspicion(&self, node: &str, now: u64) -> Option<Suspicion> {
        self.peers.get(node).and_then(|p| p.until).filter(|(u, _)| *u > now).map(|(_, why)| why)
    }

    /// Whether `node` is suspect at `now`.
    pub fn is_suspect(&self, node: &str, now: u64) -> bool {
        self.suspicion(node, now).is_some()
    }

    /// Peers suspect at `now`.
    pub fn suspects(&self, now: u64) -> Vec<&str> {
        self.peers.keys().filter(|k| self.is_suspect(k, now)).map(String::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    #[test]
    fn a_transport_failure_makes_a_peer_suspect_for_suspect_for() {
        let mut h = PeerHealth::new();
        assert!(!h.is_suspect("b", 0));
        h.transport_failed("b", 10 * S);
        assert_eq!(h.suspicion("b", 10 * S), Some(Suspicion::TransportFailure));
        assert!(h.is_suspect("b", 12 * S - 1));
        assert!(!h.is_suspect("b", 12 * S), "expires after SUSPECT_FOR");
        assert!(!h.is_suspect("c", 10 * S), "only that peer");
    }

    #[test]
    fn silence_makes_a_peer_suspect_only_when_repeated_without_a_reply() {
        let mut h = PeerHealth::new();
        for _ in 0..SILENT_LIMIT - 1 {
            assert!(!h.silent("b", S));
        }
        // A reply in between: the count starts over.
        h.replied("b");
        for _ in 0..SILENT_LIMIT - 1 {
            assert!(!h.silent("b", 2 * S));
        }
        assert!(!h.is_suspect("b", 2 * S));
        assert!(h.silent("b", 2 * S), "the last silence in a row");
        assert_eq!(h.suspicion("b", 2 * S), Some(Suspicion::Silent));
        assert!(!h.is_suspect("b", 4 * S));
        // Still silent after the suspicion lapsed: as many silences again to suspect it again.
        for _ in 0..SILENT_LIMIT - 1 {
            assert!(!h.silent("b", 5 * S));
        }
        assert!(h.silent("b", 5 * S));
    }

    #[test]
    fn a_reply_clears_suspicion_at_once() {
        let mut h = PeerHealth::new();
        h.transport_failed("b", S);
        h.replied("b");
        assert!(!h.is_suspect("b", S));
        assert!(h.suspects(S).is_empty());
    }

    #[test]
    fn silence_while_suspect_extends_but_is_not_news() {
        let mut h = PeerHealth::new();
        h.transport_failed("b", S);
        for _ in 0..SILENT_LIMIT - 1 {
            assert!(!h.silent("b", S));
        }
        assert!(!h.silent("b", S + S / 2), "already suspect");
        assert!(h.is_suspect("b", S + S / 2 + SUSPECT_FOR.as_micros() as u64 - 1), "extended");
        assert_eq!(h.suspects(S + S / 2), vec!["b"]);
    }

    #[test]
    fn the_list_is_bounded() {
        let mut h = PeerHealth::new();
        for i in 0..MAX_PEERS + 100 {
            h.transport_failed(&format!("n{i}"), S);
        }
        assert!(h.peers.len() <= MAX_PEERS);
        // Expired entries make room first.
        for i in 0..10 {
            h.silent(&format!("m{i}"), 100 * S);
        }
        assert!(h.peers.len() <= MAX_PEERS);
        assert!(h.peers.contains_key("m9"));
    }
}
