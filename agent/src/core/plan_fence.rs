//! Which plan pushes a node may take: the fence in front of [`super::node_plan`].
//!
//! The epoch fence of [`super::node_plan::NodePlanCore`] refuses anything not newer than what
//! the node accepted, and the accepted epoch is persisted. On its own that lets any voter
//! wedge a node: a push of epoch `u64::MAX` would be accepted, persisted, and every real plan
//! after it refused as stale, forever. So a push must first pass this fence.
//!
//! **The rule.** A node takes a plan push only if
//! 1. its sender is the coordinator as this node knows it, and
//! 2. its epoch is at most the highest committed epoch this node can verify.
//!
//! What the node knows ([`PushView`]) comes from Raft, not from the push:
//! * a **voter** reads its own Raft state: the leader of the current term in its Raft
//!   metrics, and the epoch of the plan its state machine has applied (committed entries
//!   only);
//! * a **non-voter** has no Raft state; it trusts the voter that accepted its latest
//!   heartbeat as coordinator (heartbeats go to the Raft leader: other voters redirect) and
//!   the committed epoch that voter put in its reply.
//!
//! A push that fails the rule is **held, never persisted**: the node waits a bounded time
//! for its view to catch up (a follower applies a commit one Raft heartbeat after the
//! leader; a non-voter sends a heartbeat at once to learn it) and then takes it, or refuses
//! it with a reason. A held push changes no state, so it cannot block a lower, real plan,
//! and the node never persists an epoch it could not verify. The wire format is unchanged:
//! the sender's identity is its certificate (a push naming another coordinator is refused
//! before this fence), and the Raft term is implicit in "the leader this node knows now".
//!
//! What this does not cover: Raft itself is not Byzantine-tolerant, so a voter that lies
//! inside Raft (or a coordinator that lies in heartbeat replies to the non-voters it
//! coordinates) is trusted like any leader. The fence stops voters that are not the leader
//! — a deposed coordinator, a buggy or rogue voter — from wedging a node.

/// What a node knows about who may push plans to it: see the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushView {
    /// The coordinator (Raft leader) as this node knows it.
    pub leader: Option<String>,
    /// The highest committed plan epoch this node can verify.
    pub committed: u64,
}

/// Why a push cannot be taken now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unverified {
    /// The sender is not the coordinator this node knows.
    #[error("plan epoch {epoch} comes from `{sender}`, but this node's coordinator is {}", leader.as_deref().map_or("unknown".to_string(), |l| format!("`{l}`")))]
    NotLeader {
        /// Pushed epoch.
        epoch: u64,
        /// Who pushed it.
        sender: String,
        /// The coordinator this node knows.
        leader: Option<String>,
    },
    /// The epoch is beyond what this node knows to be committed.
    #[error("plan epoch {epoch} from `{sender}` is beyond the committed epoch {committed} this node can verify")]
    Ahead {
        /// Pushed epoch.
        epoch: u64,
        /// Who pushed it.
        sender: String,
        /// The highest committed epoch this node can verify.
        committed: u64,
    },
}

/// Take a push of `epoch` from `sender` now (`Ok`), or hold it (`Err`, with why), by the
/// rule of the module docs. Whether the epoch is newer than what the node accepted is
/// [`super::node_plan::NodePlanCore`]'s question, asked after this one.
pub fn check_push(view: &PushView, sender: &str, epoch: u64) -> Result<(), Unverified> {
    if view.leader.as_deref() != Some(sender) {
        return Err(Unverified::NotLeader { epoch, sender: sender.into(), leader: view.leader.clone() });
    }
    if epoch > view.committed {
        return Err(Unverified::Ahead { epoch, sender: sender.into(), committed: view.committed });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(leader: &str, committed: u64) -> PushView {
        PushView { leader: Some(leader.into()), committed }
    }

    #[test]
    fn only_the_known_leader_within_the_committed_epoch_gets_through() {
        assert_eq!(check_push(&view("a", 5), "a", 5), Ok(()));
        assert_eq!(check_push(&view("a", 5), "a", 3), Ok(()), "older epochs are the plan core's business");
        let e = check_push(&view("a", 5), "b", u64::MAX).expect_err("not the leader");
        assert!(matches!(e, Unverified::NotLeader { .. }));
        assert!(e.to_string().contains("`b`") && e.to_string().contains("`a`"), "{e}");
        let e = check_push(&view("a", 5), "a", 6).expect_err("ahead of the commit");
        assert_eq!(e, Unverified::Ahead { epoch: 6, sender: "a".into(), committed: 5 });
        let e = check_push(&PushView::default(), "a", 1).expect_err("no coordinator known yet");
        assert!(e.to_string().contains("unknown"), "{e}");
    }

    #[test]
    fn a_held_push_is_taken_once_the_view_catches_up() {
        let mut v = view("a", 6);
        assert!(check_push(&v, "a", 7).is_err());
        v.committed = 7;
        assert_eq!(check_push(&v, "a", 7), Ok(()));
        v.leader = Some("b".into());
        assert!(check_push(&v, "a", 7).is_err(), "a deposed leader's push is held");
    }
}
