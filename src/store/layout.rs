//! The on-disk layout's version and the upgrade from layout 1, whose
//! `latest` rows held each live key's value as well (a count or a page of keys
//! then read every value in the range).

use rocksdb::{IteratorMode, WriteBatch};

use super::keys::{self, Latest, Stored, LAYOUT, META_LAYOUT};
use super::types::KvError;
use super::view::{db_error, decode};
use super::{Cfs, Store};

impl Store {
    /// Run at open: a store without the layout record is of layout 1, or
    /// new (then there is nothing to rewrite and only the record is written).
    pub(super) fn check_layout(&self) -> Result<(), KvError> {
        match self.get_meta(META_LAYOUT)? {
            None => self.rewrite_layout_1(),
            Some(raw) => match keys::decode_i64(&raw)? {
                LAYOUT => Ok(()),
                other => Err(KvError::Internal(format!(
                    "the state database has layout {other}, and this cairn reads layout {LAYOUT}: it was written by a newer cairn"
                ))),
            },
        }
    }

    /// Rewrites every `latest` row of layout 1 to point at the history row
    /// holding its value, in one batch with the layout record, so that a
    /// crash leaves either layout whole.
    pub(super) fn rewrite_layout_1(&self) -> Result<(), KvError> {
        let (latest, index) = (Cfs::handle(&self.db, Cfs::LATEST), Cfs::handle(&self.db, Cfs::INDEX));
        let mut batch = WriteBatch::default();
        for row in self.db.iterator_cf(latest, IteratorMode::Start) {
            let (key, raw) = row.map_err(db_error)?;
            let old: Stored = decode(&raw)?;
            let version = self
                .db
                .get_cf(index, keys::index_key(&key, old.mod_revision))
                .map_err(db_error)?
                .ok_or_else(|| KvError::Internal(format!("mvcc: no index row for a live key at revision {}", old.mod_revision)))?;
            let (sub, _) = keys::parse_index_value(&version)?;
            let Stored { create_revision, mod_revision, version, lease, .. } = old;
            batch.put_cf(latest, &key, keys::encode(&Latest { create_revision, mod_revision, version, lease, sub }));
        }
        batch.put_cf(Cfs::handle(&self.db, Cfs::META), META_LAYOUT, LAYOUT.to_be_bytes());
        self.write(batch)?;
        self.flush()
    }
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;
    use crate::store::memory::MemberBudget;
    use crate::store::types::{Command, Op, PutArgs, RangeArgs};

    fn open(dir: &std::path::Path) -> Store {
        Store::open(dir, &MemberBudget::default().state).unwrap()
    }

    fn put(store: &Store, key: &str, value: &str) {
        let put = PutArgs { key: key.into(), value: value.into(), ..Default::default() };
        store.apply(&Command::Write(Op::Put(put)), b"", None).unwrap().0.outcome.unwrap();
    }

    /// (key, value, version) of every live key.
    fn everything(store: &Store) -> Vec<(Vec<u8>, Vec<u8>, i64)> {
        let all = RangeArgs { key: vec![0], range_end: vec![0], ..Default::default() };
        store.range(&all).unwrap().0.kvs.into_iter().map(|kv| (kv.key, kv.value, kv.version)).collect()
    }

    /// A store of layout 1 as an older cairn left it: values in `latest`,
    /// no layout record. Returns it, still open, and what it holds.
    fn layout_1_store(dir: &std::path::Path) -> (Store, Vec<(Vec<u8>, Vec<u8>, i64)>) {
        let store = open(dir);
        put(&store, "ka", "1");
        put(&store, "kb", "1");
        put(&store, "ka", "2");
        let latest = Cfs::handle(&store.db, Cfs::LATEST);
        let all = RangeArgs { key: vec![0], range_end: vec![0], ..Default::default() };
        for kv in store.range(&all).unwrap().0.kvs {
            let (create_revision, mod_revision, version, lease) = (kv.create_revision, kv.mod_revision, kv.version, kv.lease);
            let old = Stored { create_revision, mod_revision, version, lease, value: kv.value };
            store.db.put_cf(latest, &kv.key, keys::encode(&old)).unwrap();
        }
        store.db.delete_cf(Cfs::handle(&store.db, Cfs::META), META_LAYOUT).unwrap();
        (store, vec![(b"ka".to_vec(), b"2".to_vec(), 2), (b"kb".to_vec(), b"1".to_vec(), 1)])
    }

    #[test]
    fn a_store_of_layout_1_is_rewritten_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        let (store, held) = layout_1_store(dir.path());
        drop(store);
        assert_eq!(everything(&open(dir.path())), held);
        // The rewrite is recorded: opened again, the store is read as it is.
        assert_eq!(everything(&open(dir.path())), held);
    }

    #[test]
    fn a_snapshot_file_of_format_1_is_restored_into_layout_2() {
        let dir = tempfile::tempdir().unwrap();
        let (old, held) = layout_1_store(&dir.path().join("old"));
        // The older cairn's file: rows of layout 1, format byte 1, its checksum.
        let mut file = Vec::new();
        old.write_backup(|chunk| {
            file.extend_from_slice(&chunk);
            true
        })
        .unwrap();
        let body = file.len() - 32;
        file[15] = 1;
        let checksum = Sha256::digest(&file[..body]);
        file[body..].copy_from_slice(&checksum);
        let path = dir.path().join("format-1.snapshot");
        std::fs::write(&path, &file).unwrap();
        let (restored, status) = crate::store::backup::restore_backup(&path, &dir.path().join("restored")).unwrap();
        assert_eq!(status.total_keys, 2);
        assert_eq!(everything(&restored), held);
    }
}
