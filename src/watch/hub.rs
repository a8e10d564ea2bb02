//! The hub between the state machine and the watch streams: it keeps the
//! newest revisions' changes in memory (bounded by bytes, shared by every
//! stream) and announces each applied revision. Streams pull what they need:
//! from here while they keep up, from the store's history when they fall
//! behind what is kept, so no watcher ever buffers without bound.

use std::collections::VecDeque;
use std::sync::{Arc, RwLock};

use tokio::sync::watch;

use crate::store::types::RevisionChanges;

pub struct Hub {
    recent: RwLock<Recent>,
    applied: watch::Sender<i64>,
    capacity_bytes: usize,
}

/// Consecutive revisions, oldest first.
#[derive(Default)]
struct Recent {
    revisions: VecDeque<Arc<RevisionChanges>>,
    bytes: usize,
}

impl Hub {
    /// A hub for a store at `revision`; keeps about `capacity_bytes` of changes.
    pub fn new(revision: i64, capacity_bytes: usize) -> Hub {
        Hub { recent: RwLock::default(), applied: watch::Sender::new(revision), capacity_bytes }
    }

    /// Takes the changes of a revision the store has just applied.
    pub fn publish(&self, changes: RevisionChanges) {
        let revision = changes.revision;
        {
            let mut recent = self.recent.write().unwrap_or_else(|p| p.into_inner());
            if recent.revisions.back().is_some_and(|r| r.revision + 1 != revision) {
                // Not the next revision (the state was replaced): start over.
                *recent = Recent::default();
            }
            recent.bytes += changes.size_bytes();
            recent.revisions.push_back(Arc::new(changes));
            while recent.bytes > self.capacity_bytes && recent.revisions.len() > 1 {
                let dropped = recent.revisions.pop_front().expect("more than one");
                recent.bytes -= dropped.size_bytes();
            }
        }
        self.applied.send_replace(revision);
    }

    /// The store's state was replaced (a snapshot from the leader): what is
    /// kept is no longer the store's recent past, which is now only in its history.
    pub fn reset(&self, revision: i64) {
        *self.recent.write().unwrap_or_else(|p| p.into_inner()) = Recent::default();
        self.applied.send_replace(revision);
    }

    /// Bytes of changes kept now.
    pub fn kept_bytes(&self) -> usize {
        self.recent.read().unwrap_or_else(|p| p.into_inner()).bytes
    }

    /// The newest revision applied to the store.
    pub fn revision(&self) -> i64 {
        *self.applied.borrow()
    }

    /// Announces every applied revision.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.applied.subscribe()
    }

    /// The oldest revision still kept in memory.
    pub fn oldest_kept(&self) -> Option<i64> {
        self.recent.read().unwrap_or_else(|p| p.into_inner()).revisions.front().map(|r| r.revision)
    }

    /// Revisions `from..=to` if memory still holds `from`, up to about
    /// `max_bytes` (at least one revision); with the last revision they cover.
    pub fn recent(&self, from: i64, to: i64, max_bytes: usize) -> Option<(Vec<Arc<RevisionChanges>>, i64)> {
        let recent = self.recent.read().unwrap_or_else(|p| p.into_inner());
        let first = recent.revisions.front()?.revision;
        if from < first {
            return None;
        }
        let skip = ((from - first) as usize).min(recent.revisions.len());
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut covered = from - 1;
        for r in recent.revisions.range(skip..) {
            if r.revision > to || bytes > max_bytes {
                break;
            }
            bytes += r.size_bytes();
            covered = r.revision;
            out.push(r.clone());
        }
        Some((out, covered))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::types::{Change, KeyValue};

    fn revision(revision: i64, value_bytes: usize) -> RevisionChanges {
        let kv = KeyValue { key: b"k".to_vec(), value: vec![0; value_bytes], mod_revision: revision, ..Default::default() };
        RevisionChanges { revision, changes: vec![Change { kv, deleted: false, prev: None }] }
    }

    #[test]
    fn keeps_the_newest_revisions_within_its_capacity() {
        let hub = Hub::new(1, 10_000);
        for r in 2..=21 {
            hub.publish(revision(r, 1000));
        }
        assert_eq!(hub.revision(), 21);
        let oldest = hub.oldest_kept().unwrap();
        assert!(oldest > 2 && oldest < 21, "old revisions were dropped: {oldest}");
        assert!(hub.recent(oldest - 1, 21, usize::MAX).is_none(), "dropped revisions come from history");
        let (revs, covered) = hub.recent(oldest, 21, usize::MAX).unwrap();
        assert_eq!(covered, 21);
        assert_eq!(revs.iter().map(|r| r.revision).collect::<Vec<_>>(), (oldest..=21).collect::<Vec<_>>());
        // A byte budget cuts a read short at a revision boundary.
        let (revs, covered) = hub.recent(oldest, 21, 1500).unwrap();
        assert_eq!((revs.len(), covered), (2, oldest + 1));
    }

    #[test]
    fn a_replaced_state_forgets_what_it_kept() {
        let hub = Hub::new(1, 1 << 20);
        hub.publish(revision(2, 10));
        hub.reset(50);
        assert_eq!((hub.revision(), hub.oldest_kept()), (50, None));
        hub.publish(revision(51, 10));
        assert!(hub.recent(50, 51, usize::MAX).is_none());
        assert_eq!(hub.recent(51, 51, usize::MAX).unwrap().1, 51);
    }
}
