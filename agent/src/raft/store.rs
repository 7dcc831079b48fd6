//! Durable Raft storage in one redb file under the node's data dir.
//!
//! Tables:
//! * `log`: index → entry;
//! * `meta`: `vote`, `committed`, `purged`;
//! * `sm`: `state` → the applied [`ClusterState`] with its last applied log id and
//!   membership, written in the same transaction as the apply, and `snapshot` → the last
//!   built or installed snapshot (meta + data).
//!
//! Values are a `0xB1` byte and then bincode 2 (standard config), as in Raft RPCs: compact,
//! where JSON escaped control characters up to six-fold and spelled bytes as decimal
//! numbers. Values an earlier build wrote as JSON still decode (JSON never starts with
//! `0xB1`), so data directories carry over; snapshot data is encoded the same way.
//!
//! Every write is one redb transaction committed with immediate durability, and writes are
//! serialised by `&mut self` (openraft's storage contract). The state machine keeps the
//! applied state in memory and persists it on every apply, so a restart resumes from it
//! without replaying the log. The store passes openraft's storage conformance suite
//! (`agent/tests/raft_store.rs`).

use super::{RaftNode as Peer, TypeConfig};
use jigsaw_protocol::cluster::{ClusterState, CommandOutcome};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership, Vote,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::{Arc, Mutex};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const SM: TableDefinition<&str, &[u8]> = TableDefinition::new("sm");

type Nid = u64;
type SErr = StorageError<Nid>;

fn any(e: impl ToString) -> AnyError {
    AnyError::error(e.to_string())
}

/// The database, closable: [`Db::close`] drops it (releasing its file lock) once in-flight
/// operations finish, after which every operation fails. A node that stops closes it, so the
/// same process can reopen it (the cluster simulation restarts nodes in-process).
#[derive(Debug, Clone)]
pub struct Db(Arc<Mutex<Option<Arc<Database>>>>);

impl Db {
    fn get(&self) -> Result<Arc<Database>, AnyError> {
        self.0.lock().map_err(any)?.clone().ok_or_else(|| AnyError::error("the Raft store is closed"))
    }

    /// Close the database.
    pub fn close(&self) {
        if let Ok(mut g) = self.0.lock() {
            g.take();
        }
    }
}

/// Open (or create) the node's Raft database at `path`.
#[allow(clippy::result_large_err)] // openraft's StorageError, which the storage traits mandate
pub fn open(path: &Path) -> Result<(LogStore, StateMachine), SErr> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| StorageIOError::write_logs(any(e)))?;
    }
    let db =
        Database::create(path).map_err(|e| StorageIOError::read_logs(any(format!("open {}: {e}", path.display()))))?;
    let db = Arc::new(db);
    {
        let w = db.begin_write().map_err(|e| StorageIOError::write_logs(any(e)))?;
        w.open_table(LOG).map_err(|e| StorageIOError::write_logs(any(e)))?;
        w.open_table(META).map_err(|e| StorageIOError::write_logs(any(e)))?;
        w.open_table(SM).map_err(|e| StorageIOError::write_logs(any(e)))?;
        w.commit().map_err(|e| StorageIOError::write_logs(any(e)))?;
    }
    let db = Db(Arc::new(Mutex::new(Some(db))));
    let sm = StateMachine::load(db.clone())?;
    Ok((LogStore { db }, sm))
}

/// Marks a value stored in bincode by this build's schema (wire version 7; JSON never
/// starts with this byte). bincode is not self-describing, so a field added to a stored
/// type (as `InstancePlan.load_rps` was in version 7) changes the schema and the marker.
const BINCODE: u8 = 0xB2;

/// The marker of builds of wire versions 5 and 6, whose plans had no planned loads.
const BINCODE_V5: u8 = 0xB1;

/// Encode a stored value (or snapshot data): [`BINCODE`], then bincode.
fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, AnyError> {
    let mut out = vec![BINCODE];
    bincode::serde::encode_into_std_write(v, &mut out, bincode::config::standard()).map_err(any)?;
    Ok(out)
}

/// Decode a stored value: bincode after [`BINCODE`], else JSON (an earlier build's).
fn decode<T: for<'a> Deserialize<'a>>(bytes: &[u8]) -> Result<T, AnyError> {
    match bytes.split_first() {
        Some((&BINCODE, rest)) => {
            let (v, used): (T, usize) =
                bincode::serde::decode_from_slice(rest, bincode::config::standard()).map_err(any)?;
            if used != rest.len() {
                return Err(AnyError::error(format!("{} trailing bytes after a stored value", rest.len() - used)));
            }
            Ok(v)
        }
        Some((&BINCODE_V5, _)) => Err(AnyError::error(
            "this data directory was written by a build of wire version 5 or 6, whose stored plans this build cannot \
             read (bincode carries no field names, and version 7 added planned loads): stop every node, move the \
             data directories aside, start the nodes on this build and register the apps again (docs/mesh.md, \
             \"Version 7\")",
        )),
        _ => serde_json::from_slice(bytes).map_err(any),
    }
}

fn get<T: for<'a> Deserialize<'a>>(
    db: &Db,
    table: TableDefinition<&str, &[u8]>,
    key: &str,
) -> Result<Option<T>, AnyError> {
    let r = db.get()?.begin_read().map_err(any)?;
    let t = r.open_table(table).map_err(any)?;
    match t.get(key).map_err(any)? {
        Some(v) => Ok(Some(decode(v.value())?)),
        None => Ok(None),
    }
}

/// Write several keys of one table in one durable transaction. With `only_if_newer`, the
/// `snapshot` key is left alone when the stored snapshot covers a later log id (a snapshot
/// built concurrently must not replace a newer installed one).
fn put_snapshot(
    db: &Db,
    snapshot: &StoredSnapshot,
    state: Option<&Applied>,
    only_if_newer: bool,
) -> Result<(), AnyError> {
    let snap = encode(snapshot)?;
    let state = state.map(encode).transpose()?;
    let w = db.get()?.begin_write().map_err(any)?;
    {
        let mut t = w.open_table(SM).map_err(any)?;
        let newer_stored = match t.get("snapshot").map_err(any)? {
            Some(v) => decode::<StoredSnapshot>(v.value())
                .map(|old| old.meta.last_log_id > snapshot.meta.last_log_id)
                .unwrap_or(false),
            None => false,
        };
        if !(only_if_newer && newer_stored) {
            t.insert("snapshot", snap.as_slice()).map_err(any)?;
        }
        if let Some(st) = &state {
            t.insert("state", st.as_slice()).map_err(any)?;
        }
    }
    w.commit().map_err(any)
}

fn put<T: Serialize>(db: &Db, table: TableDefinition<&str, &[u8]>, key: &str, value: &T) -> Result<(), AnyError> {
    let bytes = encode(value)?;
    let w = db.get()?.begin_write().map_err(any)?;
    {
        let mut t = w.open_table(table).map_err(any)?;
        t.insert(key, bytes.as_slice()).map_err(any)?;
    }
    w.commit().map_err(any)
}

/// The Raft log and vote.
#[derive(Debug, Clone)]
pub struct LogStore {
    db: Db,
}

impl LogStore {
    fn read_range<RB: RangeBounds<u64>>(&self, range: RB) -> Result<Vec<Entry<TypeConfig>>, AnyError> {
        let r = self.db.get()?.begin_read().map_err(any)?;
        let t = r.open_table(LOG).map_err(any)?;
        let mut out = Vec::new();
        for item in t.range(range).map_err(any)? {
            let (_, v) = item.map_err(any)?;
            out.push(decode(v.value())?);
        }
        Ok(out)
    }

    fn last_entry(&self) -> Result<Option<Entry<TypeConfig>>, AnyError> {
        let r = self.db.get()?.begin_read().map_err(any)?;
        let t = r.open_table(LOG).map_err(any)?;
        let last = match t.last().map_err(any)? {
            Some((_, v)) => Some(decode(v.value())?),
            None => None,
        };
        Ok(last)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, SErr> {
        Ok(self.read_range(range).map_err(StorageIOError::read_logs)?)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SErr> {
        let purged: Option<LogId<Nid>> = get(&self.db, META, "purged").map_err(StorageIOError::read_logs)?;
        let last = self.last_entry().map_err(StorageIOError::read_logs)?.map(|e| e.log_id).or(purged);
        Ok(LogState { last_purged_log_id: purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<Nid>) -> Result<(), SErr> {
        Ok(put(&self.db, META, "vote", vote).map_err(StorageIOError::write_vote)?)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<Nid>>, SErr> {
        Ok(get(&self.db, META, "vote").map_err(StorageIOError::read_vote)?)
    }

    async fn save_committed(&mut self, committed: Option<LogId<Nid>>) -> Result<(), SErr> {
        Ok(put(&self.db, META, "committed", &committed).map_err(StorageIOError::write_logs)?)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<Nid>>, SErr> {
        let c: Option<Option<LogId<Nid>>> = get(&self.db, META, "committed").map_err(StorageIOError::read_logs)?;
        Ok(c.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let res = (|| -> Result<(), AnyError> {
            let w = self.db.get()?.begin_write().map_err(any)?;
            {
                let mut t = w.open_table(LOG).map_err(any)?;
                for e in entries {
                    let bytes = encode(&e)?;
                    t.insert(e.log_id.index, bytes.as_slice()).map_err(any)?;
                }
            }
            w.commit().map_err(any)
        })();
        match res {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(StorageIOError::write_logs(e).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<Nid>) -> Result<(), SErr> {
        let res = (|| -> Result<(), AnyError> {
            let w = self.db.get()?.begin_write().map_err(any)?;
            {
                let mut t = w.open_table(LOG).map_err(any)?;
                t.retain_in(log_id.index.., |_, _| false).map_err(any)?;
            }
            w.commit().map_err(any)
        })();
        Ok(res.map_err(StorageIOError::write_logs)?)
    }

    async fn purge(&mut self, log_id: LogId<Nid>) -> Result<(), SErr> {
        let res = (|| -> Result<(), AnyError> {
            let bytes = encode(&log_id)?;
            let w = self.db.get()?.begin_write().map_err(any)?;
            {
                let mut m = w.open_table(META).map_err(any)?;
                m.insert("purged", bytes.as_slice()).map_err(any)?;
                let mut t = w.open_table(LOG).map_err(any)?;
                t.retain_in(..=log_id.index, |_, _| false).map_err(any)?;
            }
            w.commit().map_err(any)
        })();
        Ok(res.map_err(StorageIOError::write_logs)?)
    }
}

/// What the state machine persists.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Applied {
    /// Last applied log id.
    pub last_applied: Option<LogId<Nid>>,
    /// Last applied membership.
    pub membership: StoredMembership<Nid, Peer>,
    /// The cluster state.
    pub state: ClusterState,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<Nid, Peer>,
    data: Vec<u8>,
}

/// The replicated [`ClusterState`], shared with readers (the node's control loop).
#[derive(Debug, Clone)]
pub struct StateMachine {
    db: Db,
    applied: Arc<Mutex<Applied>>,
    snapshots: Arc<Mutex<u64>>,
}

impl StateMachine {
    #[allow(clippy::result_large_err)] // openraft's StorageError, as above
    fn load(db: Db) -> Result<StateMachine, SErr> {
        let applied: Applied = get(&db, SM, "state").map_err(StorageIOError::read_state_machine)?.unwrap_or_default();
        Ok(StateMachine { db, applied: Arc::new(Mutex::new(applied)), snapshots: Arc::new(Mutex::new(0)) })
    }

    /// Close the database (see [`Db::close`]).
    pub fn close(&self) {
        self.db.close();
    }

    /// The plan epoch of the applied state (cheap: no copy of the state).
    pub fn epoch(&self) -> u64 {
        self.applied.lock().map(|a| a.state.epoch).unwrap_or_default()
    }

    /// A copy of the applied state.
    pub fn snapshot_state(&self) -> Applied {
        self.applied.lock().map(|a| a.clone()).unwrap_or_default()
    }

    fn persist(&self, a: &Applied) -> Result<(), AnyError> {
        put(&self.db, SM, "state", a)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SErr> {
        let a = self.snapshot_state();
        let data = encode(&a.state).map_err(StorageIOError::read_state_machine)?;
        let n = {
            let mut s = self.snapshots.lock().map_err(|e| StorageIOError::read_state_machine(any(e)))?;
            *s += 1;
            *s
        };
        let id = match &a.last_applied {
            Some(l) => format!("{}-{}-{n}", l.leader_id, l.index),
            None => format!("none-{n}"),
        };
        let meta = SnapshotMeta { last_log_id: a.last_applied, last_membership: a.membership.clone(), snapshot_id: id };
        let stored = StoredSnapshot { meta: meta.clone(), data: data.clone() };
        put_snapshot(&self.db, &stored, None, true).map_err(|e| StorageIOError::write_snapshot(None, e))?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId<Nid>>, StoredMembership<Nid, Peer>), SErr> {
        let a = self.snapshot_state();
        Ok((a.last_applied, a.membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandOutcome>, SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut a = self.snapshot_state();
        let mut out = Vec::new();
        for e in entries {
            a.last_applied = Some(e.log_id);
            let outcome = match e.payload {
                EntryPayload::Blank => CommandOutcome { applied: false, message: "blank".into(), epoch: a.state.epoch },
                EntryPayload::Normal(cmd) => a.state.apply(&cmd),
                EntryPayload::Membership(m) => {
                    a.membership = StoredMembership::new(Some(e.log_id), m);
                    CommandOutcome { applied: true, message: "membership".into(), epoch: a.state.epoch }
                }
            };
            out.push(outcome);
        }
        self.persist(&a).map_err(StorageIOError::write_state_machine)?;
        if let Ok(mut g) = self.applied.lock() {
            *g = a;
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SErr> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<Nid, Peer>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SErr> {
        let data = snapshot.into_inner();
        let state: ClusterState =
            decode(&data).map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), e))?;
        let a = Applied { last_applied: meta.last_log_id, membership: meta.last_membership.clone(), state };
        let stored = StoredSnapshot { meta: meta.clone(), data };
        // Snapshot and state in one transaction: a crash cannot leave them apart.
        put_snapshot(&self.db, &stored, Some(&a), false)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), e))?;
        if let Ok(mut g) = self.applied.lock() {
            *g = a;
        }
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SErr> {
        let s: Option<StoredSnapshot> = get(&self.db, SM, "snapshot").map_err(StorageIOError::read_state_machine)?;
        Ok(s.map(|s| Snapshot { meta: s.meta, snapshot: Box::new(Cursor::new(s.data)) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jigsaw_protocol::cluster::ClusterCommand;
    use openraft::{CommittedLeaderId, EntryPayload};

    /// Values are stored in bincode, and values an earlier build stored as JSON still read.
    #[test]
    fn values_are_bincode_and_json_still_reads() {
        let e: Entry<TypeConfig> = Entry {
            log_id: LogId::new(CommittedLeaderId::new(2, 7), 5),
            payload: EntryPayload::Normal(ClusterCommand::RemoveApp { name: "x\u{1}".into() }),
        };
        let stored = encode(&e).expect("encodes");
        assert_eq!(stored[0], BINCODE);
        assert_eq!(decode::<Entry<TypeConfig>>(&stored).expect("decodes"), e);
        let legacy = serde_json::to_vec(&e).expect("json");
        assert_eq!(decode::<Entry<TypeConfig>>(&legacy).expect("legacy decodes"), e);
        let mut bad = stored.clone();
        bad.push(0);
        assert!(decode::<Entry<TypeConfig>>(&bad).is_err());
        // An earlier bincode schema is refused with what to do, not misread.
        let mut older = stored.clone();
        older[0] = BINCODE_V5;
        let err = decode::<Entry<TypeConfig>>(&older).expect_err("older schema").to_string();
        assert!(err.contains("wire version 5 or 6") && err.contains("Version 7"), "{err}");
        let committed: Option<LogId<Nid>> = None;
        assert_eq!(decode::<Option<LogId<Nid>>>(&serde_json::to_vec(&committed).expect("json")).expect("null"), None);
        let a = Applied::default();
        let back: Applied = decode(&encode(&a).expect("encodes")).expect("decodes");
        assert_eq!(back.state, a.state);
    }
}
