//! Reads of the MVCC state: a consistent view of the state database, optionally
//! with the uncommitted writes of the command being applied layered on top.

use std::collections::BTreeMap;

use rocksdb::{Direction, IteratorMode, ReadOptions, DB};

use super::keys::{self, Stored};
use super::types::{KeyValue, KvError, RangeArgs, RangeResult, SortOrder, SortTarget};
use super::Cfs;

/// Writes of the current command not yet in RocksDB: `None` is a deletion.
pub type Overlay = BTreeMap<Vec<u8>, Option<Stored>>;

pub struct View<'a> {
    pub(super) db: &'a DB,
    pub(super) snapshot: Option<rocksdb::Snapshot<'a>>,
    pub(super) overlay: Overlay,
    /// The store revision this view reads at.
    pub(super) revision: i64,
    pub(super) compact_revision: i64,
}

/// The end of a range: etcd's `range_end` where empty means "just `key`" and
/// "\0" means "every key from `key` on".
pub enum RangeEnd {
    Single,
    Unbounded,
    Before(Vec<u8>),
}

impl RangeEnd {
    pub fn of(range_end: &[u8]) -> RangeEnd {
        match range_end {
            [] => RangeEnd::Single,
            [0] => RangeEnd::Unbounded,
            end => RangeEnd::Before(end.to_vec()),
        }
    }

    pub fn contains(&self, start: &[u8], key: &[u8]) -> bool {
        match self {
            RangeEnd::Single => key == start,
            RangeEnd::Unbounded => key >= start,
            RangeEnd::Before(end) => key >= start && key < end.as_slice(),
        }
    }
}

impl<'a> View<'a> {
    fn read_options(&self) -> ReadOptions {
        let mut ro = ReadOptions::default();
        if let Some(s) = &self.snapshot {
            ro.set_snapshot(s);
        }
        ro
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        Cfs::handle(self.db, name)
    }

    pub fn get_latest(&self, key: &[u8]) -> Result<Option<Stored>, KvError> {
        if let Some(v) = self.overlay.get(key) {
            return Ok(v.clone());
        }
        let raw = self.db.get_cf_opt(self.cf(Cfs::LATEST), key, &self.read_options()).map_err(db_error)?;
        Ok(raw.map(|r| decode(&r)).transpose()?)
    }

    /// Visits the live keys of `[start, end)` at the view's revision in key
    /// order until `visit` returns false.
    pub fn scan_latest(
        &self,
        start: &[u8],
        end: &RangeEnd,
        mut visit: impl FnMut(&[u8], &Stored) -> bool,
    ) -> Result<(), KvError> {
        if let RangeEnd::Single = end {
            if let Some(s) = self.get_latest(start)? {
                visit(start, &s);
            }
            return Ok(());
        }
        let mut ro = self.read_options();
        if let RangeEnd::Before(e) = end {
            if e.as_slice() <= start {
                return Ok(());
            }
            ro.set_iterate_upper_bound(e.clone());
        }
        let mut pending = self
            .overlay
            .range(start.to_vec()..)
            .filter(|(k, _)| end.contains(start, k))
            .peekable();
        let iter = self.db.iterator_cf_opt(self.cf(Cfs::LATEST), ro, IteratorMode::From(start, Direction::Forward));
        for item in iter {
            let (k, v) = item.map_err(db_error)?;
            // Overlay keys that sort before this one are new keys of this command.
            while let Some((ok, ov)) = pending.next_if(|(ok, _)| ok.as_slice() < &*k) {
                if let Some(s) = ov {
                    if !visit(ok, s) {
                        return Ok(());
                    }
                }
            }
            let shadow = pending.next_if(|(ok, _)| ok.as_slice() == &*k);
            let keep_going = match shadow {
                Some((_, Some(s))) => visit(&k, s),
                Some((_, None)) => true,
                None => visit(&k, &decode(&v)?),
            };
            if !keep_going {
                return Ok(());
            }
        }
        for (ok, ov) in pending {
            if let Some(s) = ov {
                if !visit(ok, s) {
                    break;
                }
            }
        }
        Ok(())
    }

    /// The key's state at `revision`, if it existed then (and is not compacted away).
    pub fn get_at(&self, key: &[u8], revision: i64) -> Result<Option<KeyValue>, KvError> {
        let mut found = None;
        if revision > 0 {
            self.scan_at(key, &RangeEnd::Single, revision, |kv| {
                found = Some(kv);
                false
            })?;
        }
        Ok(found)
    }

    /// The key-values of `[start, end)` as they were at `revision`, read from the
    /// history through the per-key index.
    fn scan_at(
        &self,
        start: &[u8],
        end: &RangeEnd,
        revision: i64,
        mut visit: impl FnMut(KeyValue) -> bool,
    ) -> Result<(), KvError> {
        let mut ro = self.read_options();
        match end {
            RangeEnd::Single => ro.set_iterate_upper_bound(keys::index_key(start, i64::MAX)),
            RangeEnd::Before(e) => ro.set_iterate_upper_bound(keys::index_key(e, 0)),
            RangeEnd::Unbounded => {}
        }
        let from = keys::index_key(start, 0);
        let iter = self.db.iterator_cf_opt(self.cf(Cfs::INDEX), ro, IteratorMode::From(&from, Direction::Forward));
        // (escaped key, newest (revision, sub, tombstone) at or below `revision`)
        let mut group: Option<(Vec<u8>, Option<(i64, u32, bool)>)> = None;
        let mut emit = |g: Option<(Vec<u8>, Option<(i64, u32, bool)>)>| -> Result<bool, KvError> {
            match g {
                Some((_, Some((rev, sub, false)))) => {
                    let raw = self
                        .db
                        .get_cf_opt(self.cf(Cfs::HISTORY), keys::history_key(rev, sub), &self.read_options())
                        .map_err(db_error)?
                        .ok_or_else(|| KvError::Internal("mvcc: index points at missing history".into()))?;
                    let event: keys::Event = decode(&raw)?;
                    Ok(visit(event.kv))
                }
                _ => Ok(true),
            }
        };
        for item in iter {
            let (k, v) = item.map_err(db_error)?;
            let (esc, rev) = keys::split_index_key(&k)?;
            let same_key = matches!(&group, Some((g, _)) if g.as_slice() == esc);
            if !same_key && !emit(group.take())? {
                return Ok(());
            }
            let entry = group.get_or_insert_with(|| (esc.to_vec(), None));
            if rev <= revision {
                let (sub, tombstone) = keys::parse_index_value(&v)?;
                entry.1 = Some((rev, sub, tombstone));
            }
        }
        emit(group)?;
        Ok(())
    }

    /// etcd's Range: count is the number of keys in the range before filters;
    /// with sorting or filters every key is read, otherwise `limit` + 1.
    pub fn range(&self, args: &RangeArgs) -> Result<RangeResult, KvError> {
        let at = self.check_revision(args.revision)?;
        let end = RangeEnd::of(&args.range_end);
        let sort_order = match (args.sort_order, args.sort_target) {
            (SortOrder::None, SortTarget::Key) => SortOrder::None,
            (SortOrder::None, _) => SortOrder::Ascend,
            (SortOrder::Ascend, SortTarget::Key) => SortOrder::None,
            (order, _) => order,
        };
        let filtered = args.min_mod_revision != 0
            || args.max_mod_revision != 0
            || args.min_create_revision != 0
            || args.max_create_revision != 0;
        let keep = if sort_order != SortOrder::None || filtered || args.limit <= 0 {
            usize::MAX
        } else {
            args.limit as usize + 1
        };
        let mut kvs = Vec::new();
        let mut count: i64 = 0;
        if at == self.revision {
            self.scan_latest(&args.key, &end, |k, s| {
                count += 1;
                if !args.count_only && kvs.len() < keep {
                    kvs.push(s.clone().into_kv(k.to_vec()));
                }
                true
            })?;
        } else {
            self.scan_at(&args.key, &end, at, |kv| {
                count += 1;
                if !args.count_only && kvs.len() < keep {
                    kvs.push(kv);
                }
                true
            })?;
        }
        if args.count_only {
            return Ok(RangeResult { kvs: Vec::new(), more: false, count });
        }
        kvs.retain(|kv| {
            (args.max_mod_revision == 0 || kv.mod_revision <= args.max_mod_revision)
                && (args.min_mod_revision == 0 || kv.mod_revision >= args.min_mod_revision)
                && (args.max_create_revision == 0 || kv.create_revision <= args.max_create_revision)
                && (args.min_create_revision == 0 || kv.create_revision >= args.min_create_revision)
        });
        if sort_order != SortOrder::None {
            let by_target = |a: &KeyValue, b: &KeyValue| match args.sort_target {
                SortTarget::Key => a.key.cmp(&b.key),
                SortTarget::Version => a.version.cmp(&b.version),
                SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                SortTarget::Value => a.value.cmp(&b.value),
            };
            // A stable sort keeps key order among equal targets in both directions.
            match sort_order {
                SortOrder::Descend => kvs.sort_by(|a, b| by_target(b, a)),
                _ => kvs.sort_by(by_target),
            }
        }
        let mut more = false;
        if args.limit > 0 && kvs.len() > args.limit as usize {
            kvs.truncate(args.limit as usize);
            more = true;
        }
        if args.keys_only {
            kvs.iter_mut().for_each(|kv| kv.value.clear());
        }
        Ok(RangeResult { kvs, more, count })
    }

    /// Resolves a requested revision (0 = current) against what the store holds.
    pub fn check_revision(&self, revision: i64) -> Result<i64, KvError> {
        if revision > self.revision {
            Err(KvError::FutureRevision)
        } else if revision > 0 && revision < self.compact_revision {
            Err(KvError::Compacted)
        } else if revision <= 0 {
            Ok(self.revision)
        } else {
            Ok(revision)
        }
    }
}

pub fn decode<T: serde::de::DeserializeOwned>(raw: &[u8]) -> Result<T, KvError> {
    postcard::from_bytes(raw).map_err(|e| KvError::Internal(format!("corrupt record: {e}")))
}

pub fn db_error(e: rocksdb::Error) -> KvError {
    KvError::Internal(format!("storage: {e}"))
}
