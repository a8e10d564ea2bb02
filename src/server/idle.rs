//! A member that takes no writes gives its memtables' memory back. RocksDB
//! keeps a memtable until it fills (half the state database's share of
//! `--memory-budget-bytes`), so after a burst of writes an idle member held
//! about 18 of its 73 MiB in memtables of data already in the Raft log.
//! Once the memtables have not changed for `IDLE_AFTER`, they are written
//! out to table files and the heap gives the freed memory back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Node;

const CHECK_EVERY: Duration = Duration::from_secs(1);
/// No write for this long: the burst is over.
const IDLE_AFTER: Duration = Duration::from_secs(5);
/// Less than this in the memtables is not worth a table file of its own
/// (the next compaction merges it again).
const WORTH_FLUSHING: usize = 4 * 1024 * 1024;

pub async fn flush_when_idle(node: Arc<Node>) {
    let mut last = (node.memory.state.usage().0, Instant::now());
    while node.idle(CHECK_EVERY).await {
        let held = node.memory.state.usage().0;
        if held != last.0 {
            last = (held, Instant::now());
            continue;
        }
        if held < WORTH_FLUSHING || last.1.elapsed() < IDLE_AFTER {
            continue;
        }
        let store = node.store.clone();
        let flushed = tokio::task::spawn_blocking(move || {
            store.flush()?;
            crate::heap::release();
            Ok::<_, crate::store::types::KvError>(())
        })
        .await;
        match flushed {
            Ok(Ok(())) => tracing::debug!(bytes = held, "wrote out the memtables of an idle member"),
            Ok(Err(e)) => tracing::warn!(error = %e, "writing out the memtables of an idle member"),
            Err(_) => return,
        }
        last = (node.memory.state.usage().0, Instant::now());
    }
}
