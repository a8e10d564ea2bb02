//! Physical compaction. Applying a Compact only moves the compact revision
//! (reads below it fail from then on); the versions it made unreachable are
//! removed here, in bounded batches outside the apply step, as etcd's
//! scheduled compaction does. Every member removes the same versions, so
//! what is left (and HashKV) does not depend on how far the removal got.

use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch};

use super::keys;
use super::types::KvError;
use super::view::db_error;
use super::{Cfs, Store};

/// An index row of one version: (index key, revision, sub-revision, is a deletion).
type Version = (Box<[u8]>, i64, u32, bool);

impl Store {
    /// The compact revision up to which old versions are removed.
    pub fn physically_compacted(&self) -> Result<i64, KvError> {
        self.meta_i64(keys::META_PHYSICALLY_COMPACTED)
    }

    /// For keys from `start` on, removes every version at or below `revision`
    /// but the newest (which reads at `revision` still need, unless it is a
    /// deletion). Stops at a key boundary once about `max_rows` index rows
    /// were looked at; returns where the next batch starts, or `None` once
    /// every key is done, when it records `revision` as done.
    pub fn remove_compacted(&self, revision: i64, start: &[u8], max_rows: usize) -> Result<Option<Vec<u8>>, KvError> {
        let (index, history) = (Cfs::handle(&self.db, Cfs::INDEX), Cfs::handle(&self.db, Cfs::HISTORY));
        let mut batch = WriteBatch::default();
        let mut drop_obsolete = |versions: &mut Vec<Version>| {
            // The newest version at or below `revision` stays, unless it is a deletion.
            let keep_newest = matches!(versions.last(), Some((_, _, _, false)));
            let n = versions.len() - usize::from(keep_newest);
            for (index_key, rev, sub, _) in versions.drain(..).take(n) {
                batch.delete_cf(index, index_key);
                batch.delete_cf(history, keys::history_key(rev, sub));
            }
        };
        let iter = self.db.iterator_cf_opt(index, ReadOptions::default(), IteratorMode::From(start, Direction::Forward));
        let mut current: Vec<u8> = Vec::new();
        let mut versions: Vec<Version> = Vec::new();
        let mut rows = 0;
        let mut next = None;
        for item in iter {
            let (k, v) = item.map_err(db_error)?;
            let (escaped, rev) = keys::split_index_key(&k)?;
            if escaped != current.as_slice() {
                drop_obsolete(&mut versions);
                if rows >= max_rows {
                    next = Some(k.to_vec());
                    break;
                }
                current = escaped.to_vec();
            }
            rows += 1;
            if rev <= revision {
                let (sub, deleted) = keys::parse_index_value(&v)?;
                versions.push((k, rev, sub, deleted));
            }
        }
        drop_obsolete(&mut versions);
        if next.is_none() {
            batch.put_cf(Cfs::handle(&self.db, Cfs::META), keys::META_PHYSICALLY_COMPACTED, revision.to_be_bytes());
        }
        self.write(batch)?;
        if next.is_none() {
            self.physically_compacted.send_replace(revision);
        }
        Ok(next)
    }

    /// Follows the physically compacted revision, for `physical` compactions.
    pub fn physical_compaction(&self) -> tokio::sync::watch::Receiver<i64> {
        self.physically_compacted.subscribe()
    }

    /// Follows the compact revision, for the background removal.
    pub fn compaction_requests(&self) -> tokio::sync::watch::Receiver<i64> {
        self.compact_revision.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::types::{Command, DeleteArgs, Op, PutArgs, RangeArgs};

    fn put(store: &Store, key: &str, value: &str) {
        let args = PutArgs { key: key.into(), value: value.into(), ..Default::default() };
        store.apply(&Command::Write(Op::Put(args)), b"", None).unwrap();
    }

    fn rows(store: &Store, cf: &str) -> usize {
        store.db.iterator_cf(Cfs::handle(&store.db, cf), rocksdb::IteratorMode::Start).count()
    }

    #[test]
    fn removes_what_compaction_made_unreachable_in_small_batches() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), &crate::store::memory::MemberBudget::default().state).unwrap();
        // Revisions: a@2 a@3 b@4 c@5 (c deleted @6) a@7
        put(&store, "a", "1");
        put(&store, "a", "2");
        put(&store, "b", "1");
        put(&store, "c", "1");
        let delete = DeleteArgs { key: b"c".to_vec(), ..Default::default() };
        store.apply(&Command::Write(Op::Delete(delete)), b"", None).unwrap();
        put(&store, "a", "3");
        assert_eq!(rows(&store, Cfs::HISTORY), 6);
        store.apply(&Command::Compact { revision: 6, physical: false }, b"", None).unwrap();
        assert_eq!(rows(&store, Cfs::HISTORY), 6, "applying a compaction removes nothing itself");
        assert_eq!(*store.compaction_requests().borrow(), 6);

        // One index row per batch: every key boundary is a batch boundary.
        let mut start = Vec::new();
        let mut batches = 0;
        while let Some(next) = store.remove_compacted(6, &start, 1).unwrap() {
            start = next;
            batches += 1;
            assert_eq!(store.physically_compacted().unwrap(), 0, "not done before the last batch");
        }
        assert!(batches >= 2);
        assert_eq!(store.physically_compacted().unwrap(), 6);
        assert_eq!(*store.physical_compaction().borrow(), 6);
        // Left: a@3 (newest at or below 6), a@7, b@4; c's versions end in a deletion.
        assert_eq!(rows(&store, Cfs::HISTORY), 3);
        assert_eq!(rows(&store, Cfs::INDEX), 3);
        let at = |revision| {
            let args = RangeArgs { key: vec![0], range_end: vec![0], revision, ..Default::default() };
            let (result, _) = store.range(&args).unwrap();
            result.kvs.iter().map(|kv| (kv.key.clone(), kv.value.clone())).collect::<Vec<_>>()
        };
        assert_eq!(at(6), vec![(b"a".to_vec(), b"2".to_vec()), (b"b".to_vec(), b"1".to_vec())]);
        assert_eq!(at(7), vec![(b"a".to_vec(), b"3".to_vec()), (b"b".to_vec(), b"1".to_vec())]);
        assert!(store.range(&RangeArgs { key: b"a".to_vec(), revision: 5, ..Default::default() }).is_err());
    }
}
