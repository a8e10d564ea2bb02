//! Executes commands against a view: the MVCC write path (Put, DeleteRange,
//! Txn, Compact). Writes land in one RocksDB WriteBatch, for one command or
//! for a run of consecutive ones (each its own revision, each seeing the ones
//! before it through the view's overlay), written together with the Raft log
//! id: a run is applied whole or not at all, and a command that fails changes
//! nothing.

use std::collections::BTreeSet;

use rocksdb::WriteBatch;

use super::keys::{self, Event, Latest, LeaseRecord, Stored};
use super::types::{
    Change, Compare, CompareResult, CompareTarget, DeleteArgs, KeyValue, KvError, Op, OpResult, PutArgs, TxnArgs,
};
use super::view::{db_error, RangeEnd, View};
use super::Cfs;

pub struct Execution<'a> {
    pub(super) view: View<'a>,
    pub(super) batch: WriteBatch,
    /// What the current command changed, in order, for watchers.
    changes: Vec<Change>,
    /// Sub-revision of the next change; non-zero once the current command changed anything.
    sub: u32,
    /// The view's revision before the first command.
    first_revision: i64,
    /// What each overlay entry the current command staged replaced, oldest
    /// first, to restore if the command fails.
    replaced: Vec<(Vec<u8>, Option<Option<Stored>>)>,
}

/// Where the current command began: what `rollback` returns to.
pub struct Mark {
    batch_bytes: usize,
    batch_count: usize,
}

impl<'a> Execution<'a> {
    pub fn new(view: View<'a>) -> Self {
        let first_revision = view.revision;
        Execution { view, batch: WriteBatch::default(), changes: Vec::new(), sub: 0, first_revision, replaced: Vec::new() }
    }

    /// Marks the start of a command.
    pub fn mark(&mut self) -> Mark {
        self.replaced.clear();
        Mark { batch_bytes: self.batch.data().len(), batch_count: self.batch.len() }
    }

    /// The revision of the store once this command is done.
    pub fn revision(&self) -> i64 {
        self.view.revision + i64::from(self.sub > 0)
    }

    fn write_revision(&self) -> i64 {
        self.view.revision + 1
    }

    pub fn execute(&mut self, op: &Op) -> Result<OpResult, KvError> {
        match op {
            Op::Range(args) => {
                // Reads inside a txn see the txn's own earlier writes, which
                // are in the overlay at the revision they will have.
                let saved = self.view.revision;
                self.view.revision = self.revision();
                let result = self.view.range(args, None);
                self.view.revision = saved;
                Ok(OpResult::Range(result?))
            }
            Op::Put(args) => self.put(args),
            Op::Delete(args) => self.delete(args),
            Op::Txn(args) => self.txn(args),
        }
    }

    /// Writes one change to the history and the index; returns its sub-revision.
    fn record(&mut self, kv: KeyValue, deleted: bool, prev: Option<KeyValue>) -> u32 {
        let rev = self.write_revision();
        let sub = self.sub;
        self.sub += 1;
        let db = self.view.db;
        self.batch.put_cf(
            Cfs::handle(db, Cfs::HISTORY),
            keys::history_key(rev, sub),
            keys::encode(&Event { kv: kv.clone(), deleted }),
        );
        self.batch.put_cf(Cfs::handle(db, Cfs::INDEX), keys::index_key(&kv.key, rev), keys::index_value(sub, deleted));
        if deleted {
            self.batch.delete_cf(Cfs::handle(db, Cfs::LATEST), &kv.key);
        }
        self.changes.push(Change { kv, deleted, prev });
        sub
    }

    fn put(&mut self, args: &PutArgs) -> Result<OpResult, KvError> {
        let prev = self.view.get_latest(&args.key)?;
        if args.lease != 0 && !args.ignore_lease && self.lease(args.lease)?.is_none() {
            return Err(KvError::LeaseNotFound);
        }
        if (args.ignore_value || args.ignore_lease) && prev.is_none() {
            return Err(KvError::KeyNotFound);
        }
        let rev = self.write_revision();
        let stored = Stored {
            create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
            mod_revision: rev,
            version: prev.as_ref().map_or(0, |p| p.version) + 1,
            lease: match (&prev, args.ignore_lease) {
                (Some(p), true) => p.lease,
                _ => args.lease,
            },
            value: match (&prev, args.ignore_value) {
                (Some(p), true) => p.value.clone(),
                _ => args.value.clone(),
            },
        };
        self.move_to_lease(&args.key, prev.as_ref().map_or(0, |p| p.lease), stored.lease);
        self.stage(args.key.clone(), Some(stored.clone()));
        let prev = prev.map(|p| p.into_kv(args.key.clone()));
        let prev_kv = if args.prev_kv { prev.clone() } else { None };
        let Stored { create_revision, mod_revision, version, lease, .. } = stored;
        let sub = self.record(stored.into_kv(args.key.clone()), false, prev);
        let latest = Latest { create_revision, mod_revision, version, lease, sub };
        self.batch.put_cf(Cfs::handle(self.view.db, Cfs::LATEST), &args.key, keys::encode(&latest));
        Ok(OpResult::Put { prev_kv })
    }

    fn delete(&mut self, args: &DeleteArgs) -> Result<OpResult, KvError> {
        let mut doomed = Vec::new();
        // With their values: watchers may ask for each deletion's prev_kv.
        self.view.scan_latest(&args.key, &RangeEnd::of(&args.range_end), |k, live| {
            doomed.push(self.view.live_kv(k, live, true)?);
            Ok(true)
        })?;
        let rev = self.write_revision();
        for kv in &doomed {
            let tombstone = KeyValue { key: kv.key.clone(), mod_revision: rev, ..Default::default() };
            self.record(tombstone, true, Some(kv.clone()));
            self.move_to_lease(&kv.key, kv.lease, 0);
            self.stage(kv.key.clone(), None);
        }
        let deleted = doomed.len() as i64;
        Ok(OpResult::Delete { deleted, prev_kvs: if args.prev_kv { doomed } else { Vec::new() } })
    }

    fn txn(&mut self, args: &TxnArgs) -> Result<OpResult, KvError> {
        let mut succeeded = true;
        for c in &args.compare {
            if !self.compare(c)? {
                succeeded = false;
                break;
            }
        }
        let branch = if succeeded { &args.success } else { &args.failure };
        let mut responses = Vec::with_capacity(branch.len());
        for op in branch {
            responses.push(self.execute(op)?);
        }
        Ok(OpResult::Txn { succeeded, responses })
    }

    fn compare(&self, c: &Compare) -> Result<bool, KvError> {
        let mut kvs = Vec::new();
        let with_value = matches!(c.target, CompareTarget::Value(_));
        self.view.scan_latest(&c.key, &RangeEnd::of(&c.range_end), |k, live| {
            kvs.push(self.view.live_kv(k, live, with_value)?);
            Ok(true)
        })?;
        if kvs.is_empty() {
            // A missing key compares as a zero key-value, except on its value.
            if matches!(c.target, CompareTarget::Value(_)) {
                return Ok(false);
            }
            kvs.push(KeyValue::default());
        }
        Ok(kvs.iter().all(|kv| {
            let ord = match &c.target {
                CompareTarget::Version(v) => kv.version.cmp(v),
                CompareTarget::Create(v) => kv.create_revision.cmp(v),
                CompareTarget::Mod(v) => kv.mod_revision.cmp(v),
                CompareTarget::Lease(v) => kv.lease.cmp(v),
                CompareTarget::Value(v) => kv.value.as_slice().cmp(v.as_slice()),
            };
            match c.result {
                CompareResult::Equal => ord.is_eq(),
                CompareResult::Greater => ord.is_gt(),
                CompareResult::Less => ord.is_lt(),
                CompareResult::NotEqual => ord.is_ne(),
            }
        }))
    }

    fn lease(&self, id: i64) -> Result<Option<LeaseRecord>, KvError> {
        let raw = self.view.db.get_cf(Cfs::handle(self.view.db, Cfs::LEASE), keys::lease_key(id)).map_err(db_error)?;
        raw.map(|r| super::view::decode(&r)).transpose()
    }

    /// Records that `key` is held by lease `to` (0: none) instead of `from`.
    fn move_to_lease(&mut self, key: &[u8], from: i64, to: i64) {
        if from == to {
            return;
        }
        let cf = Cfs::handle(self.view.db, Cfs::LEASE);
        if from != 0 {
            self.batch.delete_cf(cf, keys::lease_attachment(from, key));
        }
        if to != 0 {
            self.batch.put_cf(cf, keys::lease_attachment(to, key), []);
        }
    }

    pub fn grant_lease(&mut self, id: i64, ttl: i64) -> Result<(), KvError> {
        if self.lease(id)?.is_some() {
            return Err(KvError::LeaseExist);
        }
        let record = LeaseRecord { ttl, remaining: None };
        self.batch.put_cf(Cfs::handle(self.view.db, Cfs::LEASE), keys::lease_key(id), keys::encode(&record));
        Ok(())
    }

    /// Deletes the lease and every key attached to it, in one revision.
    pub fn revoke_lease(&mut self, id: i64) -> Result<(), KvError> {
        if self.lease(id)?.is_none() {
            return Err(KvError::LeaseNotFound);
        }
        let attached = super::attached_keys(self.view.db, id)?;
        for key in attached {
            self.delete(&DeleteArgs { key, range_end: Vec::new(), prev_kv: false })?;
        }
        self.batch.delete_cf(Cfs::handle(self.view.db, Cfs::LEASE), keys::lease_key(id));
        Ok(())
    }

    pub fn checkpoint_leases(&mut self, remaining: &[(i64, i64)]) -> Result<(), KvError> {
        for &(id, left) in remaining {
            if let Some(mut record) = self.lease(id)? {
                record.remaining = Some(left);
                self.batch.put_cf(Cfs::handle(self.view.db, Cfs::LEASE), keys::lease_key(id), keys::encode(&record));
            }
        }
        Ok(())
    }

    /// Moves the compact revision: O(1) here; the versions it makes
    /// unreachable are removed in the background (`Store::remove_compacted`).
    pub fn compact(&mut self, revision: i64) -> Result<(), KvError> {
        if revision > self.view.revision {
            return Err(KvError::FutureRevision);
        }
        if revision <= self.view.compact_revision {
            return Err(KvError::Compacted);
        }
        self.batch.put_cf(Cfs::handle(self.view.db, Cfs::META), keys::META_COMPACT_REVISION, revision.to_be_bytes());
        Ok(())
    }

    /// Makes `value` (`None`: deleted) what later reads of `key` see.
    fn stage(&mut self, key: Vec<u8>, value: Option<Stored>) {
        let replaced = self.view.overlay.insert(key.clone(), value);
        self.replaced.push((key, replaced));
    }

    /// Forgets the current command, which failed part-way: its writes, its
    /// changes and what it staged in the overlay.
    pub fn rollback(&mut self, mark: Mark) {
        if self.batch.len() != mark.batch_count {
            self.batch = batch_prefix(&self.batch, mark.batch_bytes, mark.batch_count);
        }
        for (key, replaced) in self.replaced.drain(..).rev() {
            match replaced {
                Some(value) => self.view.overlay.insert(key, value),
                None => self.view.overlay.remove(&key),
            };
        }
        self.changes.clear();
        self.sub = 0;
    }

    /// Ends the current command: its revision (a new one if it changed
    /// anything) and its changes; the next command writes after it.
    pub fn end_command(&mut self) -> (i64, Vec<Change>) {
        if self.sub > 0 {
            self.view.revision += 1;
            self.sub = 0;
        }
        (self.view.revision, std::mem::take(&mut self.changes))
    }

    /// Records the new store revision if the commands changed anything.
    pub fn finish(&mut self) {
        if self.view.revision > self.first_revision {
            let rev = self.view.revision;
            self.batch.put_cf(Cfs::handle(self.view.db, Cfs::META), keys::META_REVISION, rev.to_be_bytes());
        }
    }
}

/// The batch as it was when it held `count` records in `bytes` bytes.
/// rust-rocksdb does not offer RocksDB's save points; this is what they do:
/// a batch's bytes are a 12-byte header (sequence number, then the record
/// count as a little-endian u32) followed by the records in order
/// (rocksdb/db/write_batch.cc), so a prefix with its count set back is the
/// earlier batch.
fn batch_prefix(batch: &WriteBatch, bytes: usize, count: usize) -> WriteBatch {
    let mut data = batch.data()[..bytes].to_vec();
    data[8..12].copy_from_slice(&(count as u32).to_le_bytes());
    WriteBatch::from_data(&data)
}

/// etcd rejects a txn branch that writes a key twice (a put inside another
/// put's key or a delete's range). A nested txn counts with the writes of both
/// of its branches, though each branch is checked on its own.
pub fn check_duplicate_keys(txn: &TxnArgs) -> Result<(), KvError> {
    type Writes<'o> = (BTreeSet<&'o [u8]>, Vec<(&'o [u8], &'o [u8])>);
    fn branch_writes(ops: &[Op]) -> Result<Writes<'_>, KvError> {
        let (mut puts, mut deletes) = (BTreeSet::new(), Vec::new());
        let add_put = |puts: &mut BTreeSet<_>, k| if puts.insert(k) { Ok(()) } else { Err(KvError::DuplicateKey) };
        for op in ops {
            match op {
                Op::Put(p) => add_put(&mut puts, p.key.as_slice())?,
                Op::Delete(d) => deletes.push((d.key.as_slice(), d.range_end.as_slice())),
                Op::Txn(t) => {
                    let (success_puts, success_deletes) = branch_writes(&t.success)?;
                    let (failure_puts, failure_deletes) = branch_writes(&t.failure)?;
                    for k in success_puts.union(&failure_puts) {
                        add_put(&mut puts, k)?;
                    }
                    deletes.extend(success_deletes.into_iter().chain(failure_deletes));
                }
                Op::Range(_) => {}
            }
        }
        for (start, end) in &deletes {
            let end = RangeEnd::of(end);
            if puts.iter().any(|k| end.contains(start, k)) {
                return Err(KvError::DuplicateKey);
            }
        }
        Ok((puts, deletes))
    }
    branch_writes(&txn.success)?;
    branch_writes(&txn.failure)?;
    Ok(())
}
