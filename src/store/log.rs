//! The Raft log in its own RocksDB (under `--wal-dir` when given): entries by
//! index, plus the vote, the committed id and the purge point.
//!
//! Changes are written in synced batches: the Raft layer queues many behind
//! one write and one fsync (group commit).

use std::ops::Bound;
use std::path::Path;

use rocksdb::{ColumnFamilyDescriptor, Direction, IteratorMode, ReadOptions, WriteBatch, WriteOptions, DB};

const ENTRIES: &str = "entries";
const META: &str = "meta";
pub const PURGED: &str = "purged";

/// One change to the log, written in the order given.
pub enum LogWrite {
    /// Entries (index, bytes).
    Append(Vec<(u64, Vec<u8>)>),
    /// Removes entries with index >= this (a conflicting suffix).
    TruncateFrom(u64),
    /// Removes entries with index <= this and records the purge point.
    PurgeUpto(u64, Vec<u8>),
    Meta(&'static str, Vec<u8>),
}

pub struct LogDb {
    db: DB,
}

pub type Error = rocksdb::Error;

impl LogDb {
    pub fn open(dir: &Path, budget: &super::memory::MemoryBudget) -> Result<LogDb, Error> {
        let opts = super::memory::bounded_options(budget);
        let cfs = [ENTRIES, META].map(|n| ColumnFamilyDescriptor::new(n, opts.clone()));
        Ok(LogDb { db: DB::open_cf_descriptors(&opts, dir, cfs)? })
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(name).expect("column families are created at open")
    }

    /// Writes `changes` in order, in one batch; with `sync`, fsyncs, so that
    /// each is durable when this returns (group commit: one sync for all of
    /// them). Unsynced, they are in RocksDB's log behind every write before
    /// them, and the next synced write makes them durable too.
    pub fn write<'a>(&self, changes: impl IntoIterator<Item = &'a LogWrite>, sync: bool) -> Result<(), Error> {
        let mut batch = WriteBatch::default();
        let (entries, meta) = (self.cf(ENTRIES), self.cf(META));
        for change in changes {
            match change {
                LogWrite::Append(rows) => {
                    for (index, bytes) in rows {
                        batch.put_cf(entries, index.to_be_bytes(), bytes);
                    }
                }
                LogWrite::TruncateFrom(from) => {
                    batch.delete_range_cf(entries, from.to_be_bytes(), u64::MAX.to_be_bytes());
                    batch.delete_cf(entries, u64::MAX.to_be_bytes());
                }
                LogWrite::PurgeUpto(upto, purged) => {
                    batch.delete_range_cf(entries, 0u64.to_be_bytes(), upto.saturating_add(1).to_be_bytes());
                    batch.put_cf(meta, PURGED, purged);
                }
                LogWrite::Meta(key, value) => batch.put_cf(meta, key, value),
            }
        }
        let mut options = WriteOptions::default();
        options.set_sync(sync);
        self.db.write_opt(batch, &options)
    }

    /// Entries with index in `range`, in order, as stored.
    pub fn read(&self, start: Bound<u64>, end: Bound<u64>) -> Result<Vec<(u64, Vec<u8>)>, Error> {
        let from = match start {
            Bound::Included(i) => i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let mut ro = ReadOptions::default();
        match end {
            Bound::Included(i) if i < u64::MAX => ro.set_iterate_upper_bound((i + 1).to_be_bytes()),
            Bound::Excluded(i) => ro.set_iterate_upper_bound(i.to_be_bytes()),
            _ => {}
        }
        let iter = self.db.iterator_cf_opt(self.cf(ENTRIES), ro, IteratorMode::From(&from.to_be_bytes(), Direction::Forward));
        iter.map(|item| item.map(|(k, v)| (index_of(&k), v.to_vec()))).collect()
    }

    /// The stored entry with the highest index.
    pub fn last(&self) -> Result<Option<(u64, Vec<u8>)>, Error> {
        match self.db.iterator_cf(self.cf(ENTRIES), IteratorMode::End).next() {
            Some(item) => item.map(|(k, v)| Some((index_of(&k), v.to_vec()))),
            None => Ok(None),
        }
    }

    pub fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        self.db.get_cf(self.cf(META), key)
    }

}

fn index_of(k: &[u8]) -> u64 {
    u64::from_be_bytes(k.try_into().expect("log keys are 8 bytes"))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::store::memory::MemberBudget;

    fn wal_bytes(dir: &Path) -> u64 {
        let files = std::fs::read_dir(dir).unwrap().map(|f| f.unwrap());
        files.filter(|f| f.path().extension().is_some_and(|e| e == "log")).map(|f| f.metadata().unwrap().len()).sum()
    }

    #[test]
    fn a_rarely_written_column_family_does_not_keep_the_write_ahead_log() {
        let dir = tempfile::tempdir().unwrap();
        let budget = MemberBudget::default().log;
        let log = LogDb::open(dir.path(), &budget).unwrap();
        // One vote, then 64 MiB of entries: the vote's memtable never fills.
        log.write(&[LogWrite::Meta("vote", vec![1; 16])], true).unwrap();
        let entry = vec![7u8; 4096];
        for batch in 0..256u64 {
            let rows = (0..64).map(|i| (batch * 64 + i, entry.clone())).collect();
            log.write(&[LogWrite::Append(rows)], true).unwrap();
        }
        // Files are deleted in the background after the flush that frees them.
        let deadline = Instant::now() + Duration::from_secs(10);
        while wal_bytes(dir.path()) > 24 << 20 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let kept = wal_bytes(dir.path());
        assert!(kept <= 24 << 20, "{} MiB of write-ahead log kept for 64 MiB written", kept >> 20);
        assert_eq!(log.get_meta("vote").unwrap(), Some(vec![1; 16]));
        assert_eq!(log.read(Bound::Included(16383), Bound::Unbounded).unwrap(), vec![(16383, entry)]);
    }
}
