//! What etcd's Maintenance service reads and does on the store: hashes that
//! every member agrees on, alarms, and defragmentation.

use std::sync::atomic::Ordering;

use rocksdb::{IteratorMode, ReadOptions};
use sha2::{Digest, Sha256};

use super::keys;
use super::types::KvError;
use super::view::{db_error, Reach};
use super::{scan_prefix, Cfs, Store};

/// etcd's alarm types, by their protobuf numbers.
pub const ALARM_NOSPACE: u8 = 1;
pub const ALARM_CORRUPT: u8 = 2;

/// The first four bytes of a SHA-256, as the u32 etcd's hashes are.
fn digest_u32(hasher: Sha256) -> u32 {
    u32::from_be_bytes(hasher.finalize()[..4].try_into().expect("4 bytes"))
}

impl Store {
    /// etcd's HashKV: a hash of every version a read at or below `revision`
    /// can still see (the compacted history excluded, whether or not it was
    /// removed yet), so members at the same revision agree. Returns it with
    /// the revision hashed and the compact revision.
    pub fn hash_kv(&self, revision: i64) -> Result<(u32, i64, i64), KvError> {
        let view = self.snapshot_view(Reach::Disk)?;
        let revision = if revision <= 0 { view.revision } else { revision };
        if revision > view.revision {
            return Err(KvError::FutureRevision);
        }
        if revision < view.compact_revision {
            return Err(KvError::Compacted);
        }
        let compact = view.compact_revision;
        let mut ro = ReadOptions::default();
        ro.set_snapshot(view.snapshot.as_ref().expect("a snapshot view"));
        let mut hasher = Sha256::new();
        let history = Cfs::handle(&self.db, Cfs::HISTORY);
        // Of one key's versions at or below the compact revision, only the
        // newest counts, and only if it is not a deletion.
        let mut hash_version = |index_key: &[u8], rev: i64, sub: u32| -> Result<(), KvError> {
            let event = self.db.get_cf_opt(history, keys::history_key(rev, sub), &ro).map_err(db_error)?;
            hasher.update(index_key);
            hasher.update(event.unwrap_or_default());
            Ok(())
        };
        let mut current: Vec<u8> = Vec::new();
        let mut newest_compacted: Option<(Vec<u8>, i64, u32, bool)> = None;
        let mut iter_ro = ReadOptions::default();
        iter_ro.set_snapshot(view.snapshot.as_ref().expect("a snapshot view"));
        for item in self.db.iterator_cf_opt(Cfs::handle(&self.db, Cfs::INDEX), iter_ro, IteratorMode::Start) {
            let (k, v) = item.map_err(db_error)?;
            let (escaped, rev) = keys::split_index_key(&k)?;
            if escaped != current.as_slice() {
                if let Some((ik, r, s, false)) = newest_compacted.take() {
                    hash_version(&ik, r, s)?;
                }
                current = escaped.to_vec();
            }
            let (sub, deleted) = keys::parse_index_value(&v)?;
            if rev <= compact {
                newest_compacted = Some((k.to_vec(), rev, sub, deleted));
            } else if rev <= revision {
                if let Some((ik, r, s, false)) = newest_compacted.take() {
                    hash_version(&ik, r, s)?;
                }
                hash_version(&k, rev, sub)?;
            }
        }
        if let Some((ik, r, s, false)) = newest_compacted {
            hash_version(&ik, r, s)?;
        }
        Ok((digest_u32(hasher), revision, compact))
    }

    /// etcd's Hash: the key space as of now (HashKV at the current revision)
    /// and the leases.
    pub fn hash(&self) -> Result<u32, KvError> {
        let (kv_hash, _, _) = self.hash_kv(0)?;
        let mut hasher = Sha256::new();
        hasher.update(kv_hash.to_be_bytes());
        for row in scan_prefix(&self.db, Cfs::LEASE, b"") {
            let (k, v) = row?;
            hasher.update(&k);
            hasher.update(&v);
        }
        Ok(digest_u32(hasher))
    }

    /// Rewrites every column family without what deletes and compaction left
    /// behind. RocksDB compacts beside reads and writes, so nothing waits.
    pub fn defragment(&self) {
        for name in Cfs::ALL {
            self.db.compact_range_cf::<&[u8], &[u8]>(Cfs::handle(&self.db, name), None, None);
        }
    }

    /// Active alarms: (member id, alarm type).
    pub fn alarms(&self) -> Result<Vec<(u64, u8)>, KvError> {
        scan_prefix(&self.db, Cfs::META, keys::ALARM_PREFIX)
            .map(|row| {
                let (k, _) = row?;
                let alarm = k.get(keys::ALARM_PREFIX.len()).ok_or_else(|| KvError::Internal("corrupt record: an alarm key".into()))?;
                Ok((keys::id_of_key(&k), *alarm))
            })
            .collect()
    }

    /// True while a NOSPACE alarm is raised: writes that add data are refused.
    pub fn out_of_space(&self) -> bool {
        self.nospace.load(Ordering::SeqCst)
    }

    /// True while a CORRUPT alarm is raised: every write is refused.
    pub fn corrupted(&self) -> bool {
        self.corrupt.load(Ordering::SeqCst)
    }

    pub(super) fn load_alarms(&self) -> Result<(), KvError> {
        let alarms = self.alarms()?;
        self.nospace.store(alarms.iter().any(|(_, alarm)| *alarm == ALARM_NOSPACE), Ordering::SeqCst);
        self.corrupt.store(alarms.iter().any(|(_, alarm)| *alarm == ALARM_CORRUPT), Ordering::SeqCst);
        Ok(())
    }
}
