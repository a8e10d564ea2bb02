//! Compaction in the background: on every member, the removal of versions
//! below the compact revision; on the leader, etcd's auto-compaction.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Node;
use crate::config::AutoCompaction;
use crate::store::types::{Command, KvError};
use crate::store::Store;

/// Index rows looked at per batch; between batches the apply step gets the
/// database to itself for a moment. etcd's pace (1000 keys, then 10 ms): a
/// tenth of the rows per batch halved the p99 of puts that met a compaction
/// of objects of 1-4 KiB, while the whole pass stayed several times faster
/// than etcd's (scripts/bench-vs-etcd.sh).
const BATCH_ROWS: usize = 1_000;
const PAUSE: Duration = Duration::from_millis(10);

/// Removes the versions each new compact revision makes unreachable.
pub async fn remove_compacted_versions(store: Arc<Store>, mut stopping: tokio::sync::watch::Receiver<bool>) {
    let mut requests = store.compaction_requests();
    loop {
        let target = *requests.borrow_and_update();
        if target > store.physically_compacted().unwrap_or(0) {
            let started = Instant::now();
            match remove_up_to(&store, target, &requests).await {
                Ok(true) => tracing::info!(
                    compact_revision = target,
                    took = ?started.elapsed(),
                    "finished scheduled compaction"
                ),
                // A newer compact revision came: the next pass covers this one.
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(compact_revision = target, error = %e, "scheduled compaction failed; will retry");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            continue;
        }
        tokio::select! {
            changed = requests.changed() => if changed.is_err() { return },
            _ = stopping.wait_for(|s| *s) => return,
        }
    }
}

/// One pass over every key; false when a newer compact revision cut it short.
async fn remove_up_to(
    store: &Arc<Store>,
    target: i64,
    requests: &tokio::sync::watch::Receiver<i64>,
) -> Result<bool, KvError> {
    let mut start = Vec::new();
    loop {
        let s = store.clone();
        let next = tokio::task::spawn_blocking(move || s.remove_compacted(target, &start, BATCH_ROWS))
            .await
            .map_err(|e| KvError::Internal(e.to_string()))??;
        match next {
            None => return Ok(true),
            Some(next) => start = next,
        }
        if *requests.borrow() != target {
            return Ok(false);
        }
        tokio::time::sleep(PAUSE).await;
    }
}

/// etcd's revision mode checks every five minutes.
const REVISION_MODE_INTERVAL: Duration = Duration::from_secs(300);

/// etcd's auto-compaction, run by the leader alone.
/// - periodic: the revision is sampled every tenth of the period (at most
///   an hour); once a period has passed, and from then on every period (at
///   most an hour), the store is compacted to the revision of a period ago.
/// - revision: every five minutes, compacted to the revision `retention` back.
pub async fn auto_compact(node: Arc<Node>, mode: AutoCompaction) {
    let (interval, compact_every, samples_kept) = match mode {
        AutoCompaction::Periodic(period) => {
            let capped = period.min(Duration::from_secs(3600));
            let interval = capped / 10;
            (interval, capped, (period.as_nanos() / interval.as_nanos().max(1)) as usize + 1)
        }
        AutoCompaction::Revision(_) => (REVISION_MODE_INTERVAL, REVISION_MODE_INTERVAL, 1),
    };
    let mut samples: VecDeque<i64> = VecDeque::new();
    let mut last_success = Instant::now();
    let mut wait = match mode {
        AutoCompaction::Periodic(period) => period,
        AutoCompaction::Revision(_) => REVISION_MODE_INTERVAL,
    };
    loop {
        samples.push_back(node.store.revision());
        if samples.len() > samples_kept {
            samples.pop_front();
        }
        if !node.idle(interval).await {
            return;
        }
        if node.consensus.leader() != Some(node.member_id) || last_success.elapsed() < wait {
            continue;
        }
        wait = compact_every;
        let revision = match mode {
            AutoCompaction::Periodic(_) => samples[0],
            AutoCompaction::Revision(retention) => node.store.revision() - retention,
        };
        if revision <= node.store.compact_revision() {
            last_success = Instant::now();
            continue;
        }
        tracing::info!(revision, "starting auto compaction");
        match node.write(Command::Compact { revision, physical: false }).await {
            Ok(_) | Err(KvError::Compacted) => {
                tracing::info!(revision, "completed auto compaction");
                last_success = Instant::now();
            }
            Err(e) => tracing::warn!(revision, error = %e, "failed auto compaction"),
        }
    }
}
