//! Reads of the MVCC state: a consistent view of the state database, optionally
//! with the uncommitted writes of the command being applied layered on top.

use std::collections::BTreeMap;
use std::ops::Bound;

use rocksdb::{ReadOptions, ReadTier, DB};

use super::keys::{self, Latest, Stored};
use super::types::{KeyValue, KvError, RangeArgs, RangeResult, SortOrder, SortTarget};
use super::pages::PageCounts;
use super::Cfs;

/// Writes of the current command not yet in RocksDB: `None` is a deletion.
pub type Overlay = BTreeMap<Vec<u8>, Option<Stored>>;

/// Where a read may find its data: in RocksDB's memtables and block cache
/// only (a read that would touch the disk fails with `KvError::NeedsDisk`, so
/// it can run on an async worker), or on disk too.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Reach {
    Memory,
    Disk,
}

impl Reach {
    pub(super) fn read_options(self) -> ReadOptions {
        let mut ro = ReadOptions::default();
        if self == Reach::Memory {
            ro.set_read_tier(ReadTier::BlockCache);
        }
        ro
    }
}

pub struct View<'a> {
    pub(super) db: &'a DB,
    pub(super) snapshot: Option<rocksdb::Snapshot<'a>>,
    pub(super) reach: Reach,
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

/// A live key met by `scan_latest`: a `latest` row as stored (decoded only
/// when asked), or a write of the command being applied.
#[derive(Clone, Copy)]
pub enum Live<'r> {
    Written(&'r [u8]),
    Pending(&'r Stored),
}

impl Live<'_> {
    /// The key-value without its value, and the sub-revision of the history
    /// row that holds the value (none when the value is already here).
    pub fn without_value(self, key: &[u8]) -> Result<(KeyValue, Option<u32>), KvError> {
        match self {
            Live::Written(raw) => {
                let latest: Latest = decode(raw)?;
                Ok((latest.into_kv(key.to_vec()), Some(latest.sub)))
            }
            Live::Pending(stored) => Ok((stored.clone().into_kv(key.to_vec()), None)),
        }
    }
}

impl<'a> View<'a> {
    fn read_options(&self) -> ReadOptions {
        let mut ro = self.reach.read_options();
        if let Some(s) = &self.snapshot {
            ro.set_snapshot(s);
        }
        ro
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        Cfs::handle(self.db, name)
    }

    /// A live key with its value, as this command sees it.
    pub fn get_latest(&self, key: &[u8]) -> Result<Option<Stored>, KvError> {
        if let Some(v) = self.overlay.get(key) {
            return Ok(v.clone());
        }
        let Some(raw) = self.db.get_cf_opt(self.cf(Cfs::LATEST), key, &self.read_options()).map_err(db_error)? else {
            return Ok(None);
        };
        let latest: Latest = decode(&raw)?;
        let value = self.event(latest.mod_revision, latest.sub)?.kv.value;
        let Latest { create_revision, mod_revision, version, lease, .. } = latest;
        Ok(Some(Stored { create_revision, mod_revision, version, lease, value }))
    }

    /// The history row of the change (`revision`, `sub`).
    fn event(&self, revision: i64, sub: u32) -> Result<keys::Event, KvError> {
        let raw = self
            .db
            .get_cf_opt(self.cf(Cfs::HISTORY), keys::history_key(revision, sub), &self.read_options())
            .map_err(db_error)?
            .ok_or_else(|| KvError::Internal(format!("mvcc: no history row for revision {revision}.{sub}")))?;
        decode(&raw)
    }

    /// The key-value of a live key met by `scan_latest`, its value read only
    /// when `with_value`.
    pub fn live_kv(&self, key: &[u8], live: Live<'_>, with_value: bool) -> Result<KeyValue, KvError> {
        let (mut kv, sub) = live.without_value(key)?;
        if let (true, Some(sub)) = (with_value, sub) {
            kv.value = self.event(kv.mod_revision, sub)?.kv.value;
        }
        Ok(kv)
    }

    /// Visits the live keys of `[start, end)` at the view's revision in key
    /// order until `visit` returns false. No value is read here.
    pub fn scan_latest(
        &self,
        start: &[u8],
        end: &RangeEnd,
        mut visit: impl FnMut(&[u8], Live<'_>) -> Result<bool, KvError>,
    ) -> Result<(), KvError> {
        let mut ro = self.read_options();
        let pending_end = match end {
            RangeEnd::Single => {
                if let Some(pending) = self.overlay.get(start) {
                    if let Some(s) = pending {
                        visit(start, Live::Pending(s))?;
                    }
                    return Ok(());
                }
                let raw = self.db.get_cf_opt(self.cf(Cfs::LATEST), start, &ro).map_err(db_error)?;
                if let Some(raw) = raw {
                    visit(start, Live::Written(&raw))?;
                }
                return Ok(());
            }
            RangeEnd::Before(e) if e.as_slice() <= start => return Ok(()),
            RangeEnd::Before(e) => {
                ro.set_iterate_upper_bound(e.clone());
                Bound::Excluded(e.clone())
            }
            RangeEnd::Unbounded => Bound::Unbounded,
        };
        let mut pending = self.overlay.range((Bound::Included(start.to_vec()), pending_end)).peekable();
        let mut rows = self.db.raw_iterator_cf_opt(self.cf(Cfs::LATEST), ro);
        rows.seek(start);
        while let (Some(k), Some(v)) = (rows.key(), rows.value()) {
            // Overlay keys that sort before this one are new keys of this command.
            while let Some((ok, ov)) = pending.next_if(|(ok, _)| ok.as_slice() < k) {
                if let Some(s) = ov {
                    if !visit(ok, Live::Pending(s))? {
                        return Ok(());
                    }
                }
            }
            let keep_going = match pending.next_if(|(ok, _)| ok.as_slice() == k) {
                Some((_, Some(s))) => visit(k, Live::Pending(s))?,
                Some((_, None)) => true,
                None => visit(k, Live::Written(v))?,
            };
            if !keep_going {
                return Ok(());
            }
            rows.next();
        }
        rows.status().map_err(db_error)?;
        for (ok, ov) in pending {
            if let Some(s) = ov {
                if !visit(ok, Live::Pending(s))? {
                    break;
                }
            }
        }
        Ok(())
    }

    /// The key's state at `revision`, if it existed then (and is not
    /// compacted away): one seek to its newest version at or below it.
    pub fn get_at(&self, key: &[u8], revision: i64) -> Result<Option<KeyValue>, KvError> {
        if revision <= 0 {
            return Ok(None);
        }
        let mut ro = self.read_options();
        ro.set_iterate_lower_bound(keys::index_key(key, 0));
        let mut versions = self.db.raw_iterator_cf_opt(self.cf(Cfs::INDEX), ro);
        versions.seek_for_prev(keys::index_key(key, revision));
        let found = match (versions.key(), versions.value()) {
            (Some(k), Some(v)) => match keys::split_index_key(k)? {
                (esc, rev) if esc == keys::escape_key(key).as_slice() => Some((rev, keys::parse_index_value(v)?)),
                _ => None,
            },
            _ => None,
        };
        versions.status().map_err(db_error)?;
        match found {
            Some((rev, (sub, false))) => Ok(Some(self.event(rev, sub)?.kv)),
            _ => Ok(None),
        }
    }

    /// Visits, in key order, the keys of `[start, end)` that were live at
    /// `revision`, as the (revision, sub) of their version then, until
    /// `visit` returns false. Reads only the per-key index: a key's versions
    /// above `revision` are skipped with one seek, and a long run of versions
    /// below it with another, so the cost follows the keys, not their history.
    fn scan_at(
        &self,
        start: &[u8],
        end: &RangeEnd,
        revision: i64,
        mut visit: impl FnMut(i64, u32) -> Result<bool, KvError>,
    ) -> Result<(), KvError> {
        /// Versions of one key stepped through before seeking to the newest.
        const WALK: usize = 8;
        let mut ro = self.read_options();
        match end {
            RangeEnd::Single => ro.set_iterate_upper_bound(keys::index_key(start, i64::MAX)),
            RangeEnd::Before(e) => ro.set_iterate_upper_bound(keys::index_key(e, 0)),
            RangeEnd::Unbounded => {}
        }
        let mut index = self.db.raw_iterator_cf_opt(self.cf(Cfs::INDEX), ro);
        index.seek(keys::index_key(start, 0));
        let mut escaped = Vec::new();
        while let Some(first) = index.key() {
            escaped.clear();
            escaped.extend_from_slice(keys::split_index_key(first)?.0);
            // This key's newest (revision, sub, is a deletion) at or below `revision`.
            let mut newest = None;
            let mut walked = 0;
            while let (Some(k), Some(v)) = (index.key(), index.value()) {
                let (esc, rev) = keys::split_index_key(k)?;
                if esc != escaped.as_slice() {
                    break;
                }
                if rev > revision {
                    index.seek(keys::past_versions(&escaped));
                    break;
                }
                let (sub, deleted) = keys::parse_index_value(v)?;
                newest = Some((rev, sub, deleted));
                walked += 1;
                if walked == WALK {
                    index.seek_for_prev(keys::escaped_index_key(escaped.clone(), revision));
                } else {
                    index.next();
                }
            }
            if let Some((rev, sub, false)) = newest {
                if !visit(rev, sub)? {
                    return Ok(());
                }
            }
        }
        index.status().map_err(db_error)
    }

    /// etcd's Range: count is the number of keys in the range before filters;
    /// with sorting every key is read, otherwise `limit` + 1 of those that
    /// pass the filters. Values are read only for the keys returned. With
    /// `pages`, the next page of a plain paginated read is counted from this
    /// one's count instead of read to the end of the range again.
    pub fn range(&self, args: &RangeArgs, pages: Option<&PageCounts>) -> Result<RangeResult, KvError> {
        let at = self.check_revision(args.revision)?;
        let end = RangeEnd::of(&args.range_end);
        let sort_order = match (args.sort_order, args.sort_target) {
            (SortOrder::None, SortTarget::Key) => SortOrder::None,
            (SortOrder::None, _) => SortOrder::Ascend,
            (SortOrder::Ascend, SortTarget::Key) => SortOrder::None,
            (order, _) => order,
        };
        let keep = if sort_order != SortOrder::None || args.limit <= 0 { usize::MAX } else { args.limit as usize + 1 };
        let filtered = args.min_mod_revision != 0
            || args.max_mod_revision != 0
            || args.min_create_revision != 0
            || args.max_create_revision != 0;
        // A page of a plain paginated read: every key from `key` on is returned up to the limit.
        let pages = pages.filter(|_| keep != usize::MAX && !filtered && !args.count_only && !args.range_end.is_empty());
        let known_count = pages.and_then(|p| p.count(&args.key, &args.range_end, at));
        let passes = |kv: &KeyValue| {
            (args.max_mod_revision == 0 || kv.mod_revision <= args.max_mod_revision)
                && (args.min_mod_revision == 0 || kv.mod_revision >= args.min_mod_revision)
                && (args.max_create_revision == 0 || kv.create_revision <= args.max_create_revision)
                && (args.min_create_revision == 0 || kv.create_revision >= args.min_create_revision)
        };
        // The key-values kept, each with the sub-revision of the history row
        // its value is still to be read from.
        let mut kvs: Vec<(KeyValue, Option<u32>)> = Vec::new();
        let mut count: i64 = 0;
        if at == self.revision {
            self.scan_latest(&args.key, &end, |k, live| {
                count += 1;
                if !args.count_only && kvs.len() < keep {
                    let (kv, sub) = live.without_value(k)?;
                    if passes(&kv) {
                        kvs.push((kv, sub));
                    }
                }
                Ok(known_count.is_none() || kvs.len() < keep)
            })?;
        } else {
            self.scan_at(&args.key, &end, at, |rev, sub| {
                count += 1;
                if !args.count_only && kvs.len() < keep {
                    let kv = self.event(rev, sub)?.kv;
                    if passes(&kv) {
                        kvs.push((kv, None));
                    }
                }
                Ok(known_count.is_none() || kvs.len() < keep)
            })?;
        }
        let count = known_count.unwrap_or(count);
        if let (Some(pages), Some((last, _))) = (pages, kvs.get(keep - 1).and(kvs.get(keep - 2))) {
            pages.remember(&last.key, &args.range_end, at, count - (keep as i64 - 1));
        }
        if args.count_only {
            return Ok(RangeResult { kvs: Vec::new(), more: false, count });
        }
        let by_value = sort_order != SortOrder::None && args.sort_target == SortTarget::Value;
        if by_value {
            self.read_values(&mut kvs)?;
        }
        if sort_order != SortOrder::None {
            let by_target = |(a, _): &(KeyValue, _), (b, _): &(KeyValue, _)| match args.sort_target {
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
            kvs.iter_mut().for_each(|(kv, _)| kv.value.clear());
        } else {
            self.read_values(&mut kvs)?;
        }
        Ok(RangeResult { kvs: kvs.into_iter().map(|(kv, _)| kv).collect(), more, count })
    }

    /// Fills in the values still to be read.
    fn read_values(&self, kvs: &mut [(KeyValue, Option<u32>)]) -> Result<(), KvError> {
        for (kv, sub) in kvs {
            if let Some(sub) = sub.take() {
                kv.value = self.event(kv.mod_revision, sub)?.kv.value;
            }
        }
        Ok(())
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
    if e.kind() == rocksdb::ErrorKind::Incomplete {
        return KvError::NeedsDisk;
    }
    KvError::Internal(format!("storage: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemberBudget;
    use crate::store::types::{Command, Compare, CompareResult, CompareTarget, DeleteArgs, Op, OpResult, PutArgs, TxnArgs};
    use crate::store::Store;

    fn open(dir: &std::path::Path) -> Store {
        Store::open(&dir.join("db"), &MemberBudget::default().state).unwrap()
    }

    fn write(store: &Store, op: Op) -> OpResult {
        store.apply(&Command::Write(op), b"", None).unwrap().0.outcome.unwrap()
    }

    fn put(store: &Store, key: &str, value: &str) {
        write(store, Op::Put(PutArgs { key: key.into(), value: value.into(), ..Default::default() }));
    }

    fn range(store: &Store, args: RangeArgs) -> RangeResult {
        store.range(&args).unwrap().0
    }

    fn all(revision: i64, limit: i64) -> RangeArgs {
        RangeArgs { key: b"k".to_vec(), range_end: b"l".to_vec(), revision, limit, ..Default::default() }
    }

    fn pair(key: &str, value: &str) -> (String, String) {
        (key.to_string(), value.to_string())
    }

    fn pairs(result: &RangeResult) -> Vec<(String, String)> {
        let text = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
        result.kvs.iter().map(|kv| (text(&kv.key), text(&kv.value))).collect()
    }

    /// Removes the history row holding the value of `key` as of now, so that
    /// any read of that value fails.
    fn lose_value(store: &Store, key: &str) {
        let kv = &range(store, RangeArgs { key: key.into(), ..Default::default() }).kvs[0];
        let latest: Latest = decode(&store.db.get_cf(Cfs::handle(&store.db, Cfs::LATEST), key).unwrap().unwrap()).unwrap();
        store.db.delete_cf(Cfs::handle(&store.db, Cfs::HISTORY), keys::history_key(kv.mod_revision, latest.sub)).unwrap();
    }

    #[test]
    fn a_read_in_memory_never_reaches_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let one = |key: &str| RangeArgs { key: key.into(), ..Default::default() };
        {
            let store = open(dir.path());
            put(&store, "on-disk", "v1");
            store.flush().unwrap();
        }
        let store = open(dir.path());
        put(&store, "in-memtable", "v2");
        assert!(matches!(store.range_in_memory(&one("on-disk")), Err(KvError::NeedsDisk)), "a cold table file is not read");
        assert_eq!(pairs(&range(&store, one("on-disk"))), [pair("on-disk", "v1")]);
        // That read left the table's blocks in the block cache.
        assert_eq!(pairs(&store.range_in_memory(&one("on-disk")).unwrap().0), [pair("on-disk", "v1")]);
        assert_eq!(pairs(&store.range_in_memory(&one("in-memtable")).unwrap().0), [pair("in-memtable", "v2")]);
    }

    #[test]
    fn a_limited_range_reads_only_the_values_it_returns() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        for i in 0..10 {
            put(&store, &format!("k{i}"), &format!("v{i}"));
        }
        let old = store.revision();
        for i in 0..10 {
            put(&store, &format!("k{i}"), &format!("w{i}"));
        }
        // Keys past the page, at the current revision, have no readable value any more.
        for i in 3..10 {
            lose_value(&store, &format!("k{i}"));
        }
        let page = range(&store, all(0, 3));
        assert_eq!(pairs(&page), [("k0", "w0"), ("k1", "w1"), ("k2", "w2")].map(|(k, v)| (k.into(), v.into())));
        assert!(page.more);
        assert_eq!(page.count, 10);
        let keys_only = range(&store, RangeArgs { keys_only: true, ..all(0, 0) });
        assert_eq!(keys_only.kvs.len(), 10);
        assert!(keys_only.kvs.iter().all(|kv| kv.value.is_empty() && kv.version == 2));
        let sorted = range(&store, RangeArgs { sort_order: SortOrder::Ascend, sort_target: SortTarget::Mod, ..all(0, 2) });
        assert_eq!(pairs(&sorted), [("k0", "w0"), ("k1", "w1")].map(|(k, v)| (k.into(), v.into())), "sorted, then read");
        let newest = RangeArgs { sort_order: SortOrder::Descend, sort_target: SortTarget::Mod, keys_only: true, ..all(0, 2) };
        let keys: Vec<_> = range(&store, newest).kvs.into_iter().map(|kv| kv.key).collect();
        assert_eq!(keys, [b"k9".to_vec(), b"k8".to_vec()]);
        assert_eq!(range(&store, RangeArgs { count_only: true, ..all(0, 0) }).count, 10);
        // Reading what was lost is an error, not an empty value.
        assert!(store.range(&all(0, 4)).is_err());

        // At the older revision, the page reads its own values only.
        let page = range(&store, all(old, 2));
        assert_eq!(pairs(&page), [("k0", "v0"), ("k1", "v1")].map(|(k, v)| (k.into(), v.into())));
        assert_eq!((page.count, page.more), (10, true));
    }

    #[test]
    fn old_revisions_see_each_keys_version_then_across_long_histories() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        // "ka" gets 30 versions, "kb" is deleted and made again, "kc" comes late.
        let mut revisions = Vec::new();
        for i in 0..30 {
            put(&store, "ka", &i.to_string());
            revisions.push(store.revision());
        }
        put(&store, "kb", "first");
        let kb_first = store.revision();
        write(&store, Op::Delete(DeleteArgs { key: b"kb".to_vec(), ..Default::default() }));
        let kb_gone = store.revision();
        put(&store, "kb", "second");
        put(&store, "kc", "late");
        for (i, &revision) in revisions.iter().enumerate() {
            let result = range(&store, all(revision, 0));
            assert_eq!(pairs(&result), vec![("ka".to_string(), i.to_string())], "at {revision}");
            let kv = store.snapshot_view(Reach::Disk).unwrap().get_at(b"ka", revision).unwrap().unwrap();
            assert_eq!((kv.value, kv.version), (i.to_string().into_bytes(), i as i64 + 1));
        }
        let at = |revision| pairs(&range(&store, all(revision, 0)));
        assert_eq!(at(kb_first), [pair("ka", "29"), pair("kb", "first")]);
        assert_eq!(at(kb_gone), [pair("ka", "29")]);
        assert_eq!(at(kb_gone + 1), [pair("ka", "29"), pair("kb", "second")]);
        assert_eq!(at(0), [pair("ka", "29"), pair("kb", "second"), pair("kc", "late")]);
        assert_eq!(range(&store, RangeArgs { count_only: true, ..all(kb_gone, 0) }).count, 1);
        let view = store.snapshot_view(Reach::Disk).unwrap();
        assert_eq!(view.get_at(b"kb", kb_gone).unwrap(), None, "a deletion");
        assert_eq!(view.get_at(b"kc", kb_gone).unwrap(), None, "not made yet");
        assert_eq!(view.get_at(b"k", kb_gone).unwrap(), None, "a prefix of another key");
    }

    #[test]
    fn a_txn_reads_its_own_writes_among_the_stored_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        put(&store, "kb", "stored");
        put(&store, "kd", "stored");
        let txn = TxnArgs {
            compare: Vec::new(),
            success: vec![
                Op::Put(PutArgs { key: b"ka".to_vec(), value: b"new".to_vec(), ..Default::default() }),
                Op::Delete(DeleteArgs { key: b"kb".to_vec(), ..Default::default() }),
                Op::Put(PutArgs { key: b"kc".to_vec(), value: b"new".to_vec(), ..Default::default() }),
                Op::Range(RangeArgs { limit: 2, ..all(0, 0) }),
                Op::Range(all(0, 0)),
            ],
            failure: Vec::new(),
        };
        let OpResult::Txn { responses, .. } = write(&store, Op::Txn(txn)) else { panic!("a txn") };
        let ranges: Vec<_> = responses.iter().filter_map(|r| if let OpResult::Range(r) = r { Some(r) } else { None }).collect();
        assert_eq!(pairs(ranges[0]), [pair("ka", "new"), pair("kc", "new")]);
        assert_eq!((ranges[0].count, ranges[0].more), (3, true));
        assert_eq!(pairs(ranges[1]), [pair("ka", "new"), pair("kc", "new"), pair("kd", "stored")]);
        assert_eq!(pairs(&range(&store, all(0, 0))), [pair("ka", "new"), pair("kc", "new"), pair("kd", "stored")]);
    }

    /// Every page of a LIST of `[k, l)` at `revision` in pages of `limit`,
    /// as Kubernetes reads it: (count, more, keys) of each page.
    fn list(store: &Store, revision: i64, limit: i64) -> Vec<(i64, bool, Vec<Vec<u8>>)> {
        let (mut key, mut pages) = (b"k".to_vec(), Vec::new());
        loop {
            let page = range(store, RangeArgs { key: key.clone(), ..all(revision, limit) });
            let keys: Vec<_> = page.kvs.iter().map(|kv| kv.key.clone()).collect();
            if let Some(last) = keys.last() {
                key = [last.as_slice(), b"\0"].concat();
            }
            pages.push((page.count, page.more, keys));
            if !page.more {
                return pages;
            }
        }
    }

    #[test]
    fn pages_of_a_list_are_counted_from_the_page_before() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        for i in 0..1200 {
            put(&store, &format!("k{i:04}"), "old");
        }
        let listed_at = store.revision();
        let expected = |revision| {
            let pages = list(&store, revision, 500);
            let counts: Vec<_> = pages.iter().map(|(count, more, keys)| (*count, *more, keys.len())).collect();
            assert_eq!(counts, [(1200, true, 500), (700, true, 500), (200, false, 200)]);
            let keys: Vec<_> = pages.into_iter().flat_map(|(_, _, keys)| keys).collect();
            assert_eq!(keys, (0..1200).map(|i| format!("k{i:04}").into_bytes()).collect::<Vec<_>>());
        };
        expected(0);
        // Writes after the list began: its pages stay as they were at its revision.
        for i in (0..1200).step_by(3) {
            put(&store, &format!("k{i:04}"), "new");
        }
        write(&store, Op::Delete(DeleteArgs { key: b"k0700".to_vec(), ..Default::default() }));
        expected(listed_at);
        let page = range(&store, RangeArgs { key: b"k0500\0".to_vec(), ..all(listed_at, 2) });
        assert_eq!(pairs(&page), [("k0501", "old"), ("k0502", "old")].map(|(k, v)| (k.into(), v.into())));

        // The second page's count is the first page's less what it returned:
        // with the last keys' rows gone, only a page that counts again sees it.
        let now = store.revision();
        let first = range(&store, all(now, 500));
        assert_eq!(first.count, 1199);
        for i in 1100..1200 {
            store.db.delete_cf(Cfs::handle(&store.db, Cfs::LATEST), format!("k{i:04}")).unwrap();
        }
        let second = RangeArgs { key: [first.kvs[499].key.as_slice(), b"\0"].concat(), ..all(now, 500) };
        assert_eq!(range(&store, second.clone()).count, 699, "counted from the first page");
        assert_eq!(store.snapshot_view(Reach::Disk).unwrap().range(&second, None).unwrap().count, 599, "counted again");
    }

    #[test]
    fn a_run_of_writes_gives_each_its_revision_and_a_failed_one_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        put(&store, "k1", "a");
        let put_op = |key: &str, value: &str, lease: i64| {
            Op::Put(PutArgs { key: key.into(), value: value.into(), lease, prev_kv: true, ..Default::default() })
        };
        // Writes k4, then fails on a lease that does not exist.
        let half_done = Op::Txn(TxnArgs { success: vec![put_op("k4", "x", 0), put_op("k5", "y", 999)], ..Default::default() });
        let k1_is_b = Compare {
            result: CompareResult::Equal,
            target: CompareTarget::Value(b"b".to_vec()),
            key: b"k1".to_vec(),
            range_end: Vec::new(),
        };
        let run: Vec<Command> = [
            half_done.clone(),
            put_op("k1", "b", 0),
            put_op("k2", "c", 0),
            Op::Txn(TxnArgs { compare: vec![k1_is_b], success: vec![put_op("k3", "d", 0)], ..Default::default() }),
            half_done,
            Op::Delete(DeleteArgs { key: b"k2".to_vec(), range_end: Vec::new(), prev_kv: true }),
            put_op("k1", "e", 0),
            put_op("k4", "z", 0),
        ]
        .into_iter()
        .map(Command::Write)
        .collect();
        assert!(run.iter().all(Command::joins_run));
        let applied = store.apply_run(&run.iter().collect::<Vec<_>>(), b"", None).unwrap();

        let revisions: Vec<i64> = applied.iter().map(|(r, _)| r.revision).collect();
        assert_eq!(revisions, [2, 3, 4, 5, 5, 6, 7, 8], "a failed command makes no revision");
        assert_eq!(applied[0].0.outcome, Err(KvError::LeaseNotFound));
        assert_eq!(applied[4].0.outcome, Err(KvError::LeaseNotFound));
        assert!(applied[0].1.is_none() && applied[4].1.is_none(), "no changes for watchers from a failed command");
        let Ok(OpResult::Txn { succeeded: true, .. }) = &applied[3].0.outcome else { panic!("the txn saw k1=b: {:?}", applied[3]) };
        let Ok(OpResult::Delete { prev_kvs, .. }) = &applied[5].0.outcome else { panic!("{:?}", applied[5]) };
        assert_eq!((prev_kvs[0].value.as_slice(), prev_kvs[0].mod_revision), (&b"c"[..], 4));
        let Ok(OpResult::Put { prev_kv: Some(prev) }) = &applied[6].0.outcome else { panic!("{:?}", applied[6]) };
        assert_eq!((prev.value.as_slice(), prev.version), (&b"b"[..], 2));
        let Ok(OpResult::Put { prev_kv: None }) = &applied[7].0.outcome else { panic!("k4 was only written by failed txns: {:?}", applied[7]) };
        let watched: Vec<(i64, i64)> = applied.iter().filter_map(|(_, c)| c.as_ref()).map(|c| (c.revision, c.changes[0].kv.mod_revision)).collect();
        assert_eq!(watched, [(3, 3), (4, 4), (5, 5), (6, 6), (7, 7), (8, 8)]);

        // All of it is in RocksDB, the failed writes nowhere, also after a reopen.
        drop(store);
        let store = open(dir.path());
        assert_eq!(store.revision(), 8);
        assert_eq!(pairs(&range(&store, all(0, 0))), [pair("k1", "e"), pair("k3", "d"), pair("k4", "z")]);
        assert_eq!(pairs(&range(&store, all(4, 0))), [pair("k1", "b"), pair("k2", "c")]);
        let k1 = &range(&store, RangeArgs { key: b"k1".to_vec(), ..Default::default() }).kvs[0];
        assert_eq!((k1.create_revision, k1.mod_revision, k1.version), (2, 7, 3));
    }
}
