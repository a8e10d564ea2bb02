//! The Raft log in its own RocksDB (under `--wal-dir` when given): entries by
//! index, plus the vote, the committed id and the purge point.
//!
//! Appends are written to RocksDB's WAL without a sync and made durable by one
//! `sync` that covers every append before it: the Raft layer batches many
//! appends behind one fsync (group commit).

use std::ops::Bound;
use std::path::Path;

use rocksdb::{ColumnFamilyDescriptor, Direction, IteratorMode, ReadOptions, WriteBatch, WriteOptions, DB};

const ENTRIES: &str = "entries";
const META: &str = "meta";

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

    fn unsynced() -> WriteOptions {
        let mut wo = WriteOptions::default();
        wo.set_sync(false);
        wo
    }

    /// Writes entries (index, bytes); durable only after the next `sync`.
    pub fn append(&self, entries: impl IntoIterator<Item = (u64, Vec<u8>)>) -> Result<(), Error> {
        let mut batch = WriteBatch::default();
        let cf = self.cf(ENTRIES);
        for (index, bytes) in entries {
            batch.put_cf(cf, index.to_be_bytes(), bytes);
        }
        self.db.write_opt(batch, &Self::unsynced())
    }

    /// fsyncs the WAL: every write before this call is durable after it.
    pub fn sync(&self) -> Result<(), Error> {
        self.db.flush_wal(true)
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

    /// Removes entries with index >= `from` (a conflicting suffix).
    pub fn truncate_from(&self, from: u64) -> Result<(), Error> {
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(self.cf(ENTRIES), from.to_be_bytes(), u64::MAX.to_be_bytes());
        batch.delete_cf(self.cf(ENTRIES), u64::MAX.to_be_bytes());
        self.db.write_opt(batch, &Self::unsynced())
    }

    /// Removes entries with index <= `upto` and records the purge point, in one write.
    pub fn purge_upto(&self, upto: u64, purged: &[u8]) -> Result<(), Error> {
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(self.cf(ENTRIES), 0u64.to_be_bytes(), upto.saturating_add(1).to_be_bytes());
        batch.put_cf(self.cf(META), b"purged", purged);
        self.db.write_opt(batch, &Self::unsynced())
    }

    pub fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        self.db.get_cf(self.cf(META), key)
    }

    /// Writes a meta value; durable only after the next `sync`.
    pub fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), Error> {
        self.db.put_cf_opt(self.cf(META), key, value, &Self::unsynced())
    }
}

fn index_of(k: &[u8]) -> u64 {
    u64::from_be_bytes(k.try_into().expect("log keys are 8 bytes"))
}
