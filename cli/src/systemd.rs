//! systemd's notify protocol for `jigsaw agent` (`Type=notify`, `WatchdogSec=`).
//!
//! [`Standing`] is the pure part: from each new [`Health`] of the node it decides which
//! notes to send (`READY=1` once, `STATUS=` when the words change, `WATCHDOG=1` after every
//! heartbeat when the watchdog is on). [`notify_systemd`] is the shell: it waits on the
//! health watch and hands each batch to a [`Sink`] **off the runtime's worker threads**.
//!
//! The notify socket is a Unix datagram socket, and a send to a full one blocks (the
//! kernel queues `net.unix.max_dgram_qlen` datagrams, 10 by default). A send made on a
//! tokio worker would wedge that worker, and with it the tasks queued behind it, whenever
//! the reader is slow: the agent stopped answering in exactly that way when its notify
//! socket was not being read. So every send runs on the blocking pool, one at a time: the
//! health watch keeps only the latest value, so a slow reader costs skipped pings, never a
//! queue and never a worker.

use jigsaw_agent::node::Health;
use std::sync::Arc;
use std::time::Duration;

/// One notify-protocol line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// `READY=1`: joined, coordinator known, current plan applied.
    Ready,
    /// `STATUS=…`: the node's standing in words.
    Status(String),
    /// `WATCHDOG=1`: the heartbeat loop is alive.
    Watchdog,
    /// `STOPPING=1`: draining after SIGTERM.
    Stopping,
}

/// Where notes go: systemd's socket in production ([`sd_sink`]), a twin in tests. It may
/// block; it is only ever called on the blocking pool.
pub type Sink = Arc<dyn Fn(&[Note]) -> std::io::Result<()> + Send + Sync>;

/// The sink that writes to `$NOTIFY_SOCKET` (a no-op when systemd did not set it).
pub fn sd_sink() -> Sink {
    Arc::new(|notes: &[Note]| {
        use sd_notify::NotifyState;
        let states: Vec<NotifyState<'_>> = notes
            .iter()
            .map(|n| match n {
                Note::Ready => NotifyState::Ready,
                Note::Status(s) => NotifyState::Status(s),
                Note::Watchdog => NotifyState::Watchdog,
                Note::Stopping => NotifyState::Stopping,
            })
            .collect();
        sd_notify::notify(&states)
    })
}

/// What has been told so far; decides what to tell next.
#[derive(Debug, Default)]
pub struct Standing {
    ready: bool,
    last_status: String,
}

impl Standing {
    /// The notes for a new health value (empty when there is nothing to say).
    pub fn step(&mut self, h: &Health, watchdog: bool) -> Vec<Note> {
        let status = match (&h.coordinator, h.ready()) {
            (Some(c), true) => format!("serving: coordinator {c}, plan epoch {}", h.applied_epoch),
            (Some(c), false) => format!("applying plan epoch {} (coordinator {c})", h.committed_epoch),
            (None, _) => "waiting for a coordinator".to_string(),
        };
        let mut notes = Vec::new();
        if h.ready() && !self.ready {
            self.ready = true;
            notes.push(Note::Ready);
        }
        if status != self.last_status {
            notes.push(Note::Status(status.clone()));
            self.last_status = status;
        }
        if watchdog {
            notes.push(Note::Watchdog);
        }
        notes
    }
}

/// Send `notes` on the blocking pool and wait for it.
pub async fn send(sink: &Sink, notes: Vec<Note>) -> std::io::Result<()> {
    let sink = sink.clone();
    match tokio::task::spawn_blocking(move || sink(&notes)).await {
        Ok(r) => r,
        Err(e) => Err(std::io::Error::other(format!("the notify task failed: {e}"))),
    }
}

/// Send `notes`, giving up waiting after `within` (the send itself may go on in the
/// blocking pool): for `STOPPING=1`, which must not hold up the drain behind it.
pub async fn send_within(sink: &Sink, notes: Vec<Note>, within: Duration) -> std::io::Result<()> {
    match tokio::time::timeout(within, send(sink, notes)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the notify socket is not being read")),
    }
}

/// Tell systemd how the node stands, until the health watch closes: `READY=1` once it has
/// joined, has a coordinator and has applied the current plan; `WATCHDOG=1` after every
/// heartbeat the node's heartbeat loop completes (so a wedged node stops pinging and
/// `WatchdogSec=` restarts it); `STATUS=` whenever the standing changes.
pub async fn notify_systemd(
    mut health: tokio::sync::watch::Receiver<Health>,
    node: String,
    watchdog: bool,
    sink: Sink,
) {
    let mut standing = Standing::default();
    while health.changed().await.is_ok() {
        let h = health.borrow_and_update().clone();
        let notes = standing.step(&h, watchdog);
        if notes.contains(&Note::Ready) {
            tracing::info!(%node, "ready: joined, coordinator known, plan applied");
        }
        if notes.is_empty() {
            continue;
        }
        if let Err(e) = send(&sink, notes).await {
            tracing::warn!(%e, "sd_notify");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn health(beats: u64, coordinator: Option<&str>, applied: u64, committed: u64) -> Health {
        Health {
            beats,
            joined: coordinator.is_some(),
            coordinator: coordinator.map(str::to_string),
            applied_epoch: applied,
            committed_epoch: committed,
        }
    }

    #[test]
    fn ready_once_status_on_change_watchdog_every_beat() {
        let mut s = Standing::default();
        assert_eq!(s.step(&health(1, None, 0, 0), false), vec![Note::Status("waiting for a coordinator".into())]);
        assert_eq!(s.step(&health(2, None, 0, 0), false), vec![], "nothing new to say");
        assert_eq!(
            s.step(&health(3, Some("node-1"), 0, 2), true),
            vec![Note::Status("applying plan epoch 2 (coordinator node-1)".into()), Note::Watchdog]
        );
        assert_eq!(
            s.step(&health(4, Some("node-1"), 2, 2), true),
            vec![Note::Ready, Note::Status("serving: coordinator node-1, plan epoch 2".into()), Note::Watchdog]
        );
        assert_eq!(s.step(&health(5, Some("node-1"), 2, 2), true), vec![Note::Watchdog]);
        // Ready is said once, even when the node falls behind a new epoch and catches up.
        s.step(&health(6, Some("node-1"), 2, 3), true);
        let again = s.step(&health(7, Some("node-1"), 3, 3), true);
        assert!(!again.contains(&Note::Ready), "{again:?}");
    }

    /// A notify socket nobody reads must not wedge the runtime: the sink blocks (as a send to
    /// a full datagram socket does) and the single worker thread still runs other tasks and
    /// keeps draining the health watch. Calling the sink on the worker, as the agent once
    /// did, blocks the runtime and this test fails by timeout instead of hanging.
    #[test]
    fn a_blocked_notify_socket_does_not_wedge_the_runtime() {
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let release_rx = std::sync::Mutex::new(release_rx);
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = calls.clone();
        let sink: Sink = Arc::new(move |_notes: &[Note]| {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = release_rx.lock().map(|rx| rx.recv());
            Ok(())
        });
        let (done_tx, done_rx) = mpsc::channel::<u64>();
        let runtime = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let (tx, rx) = tokio::sync::watch::channel(health(0, None, 0, 0));
                let notifier = tokio::spawn(notify_systemd(rx, "node-1".into(), true, sink));
                // Twenty heartbeats while the first send is still blocked; the runtime's
                // timers and other tasks keep running.
                for beat in 1..=20 {
                    tx.send_replace(health(beat, Some("node-1"), 1, 1));
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                let other = tokio::spawn(async { 42u64 });
                let _ = done_tx.send(other.await.unwrap_or(0));
                drop(tx);
                let _ = notifier.await;
            });
        });
        let done = done_rx.recv_timeout(Duration::from_secs(20));
        // Let the blocked sends finish so the runtime thread can end.
        for _ in 0..64 {
            let _ = release_tx.send(());
        }
        assert_eq!(done, Ok(42), "the runtime stopped while the notify socket was blocked");
        assert!(calls.load(std::sync::atomic::Ordering::SeqCst) >= 1, "the sink was called");
        drop(release_tx);
        runtime.join().expect("the runtime thread");
    }

    /// STOPPING=1 gives up waiting on a blocked socket so the drain behind it goes on.
    #[test]
    fn stopping_does_not_wait_on_a_blocked_socket() {
        let (_hold, rx) = mpsc::channel::<()>();
        let rx = std::sync::Mutex::new(rx);
        let sink: Sink = Arc::new(move |_n: &[Note]| {
            let _ = rx.lock().map(|rx| rx.recv_timeout(Duration::from_secs(5)));
            Ok(())
        });
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let r = rt.block_on(send_within(&sink, vec![Note::Stopping], Duration::from_millis(50)));
        assert_eq!(r.map_err(|e| e.kind()), Err(std::io::ErrorKind::TimedOut));
        rt.shutdown_background();
    }
}
