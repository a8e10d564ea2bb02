//! Raft snapshots on disk. A snapshot is a file in the format of `etcdctl
//! snapshot save` (`store::backup`: the rows of a RocksDB snapshot, with a
//! checksum), so it is built, sent, received and installed in bounded chunks
//! and neither memory nor any timeout grows with the store. The file
//! `current` holds the Raft metadata of the latest snapshot and so names its
//! data file; replacing it is one rename.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use anyhow::Context;

use super::{decode, encode, LogId, PeerNode, StoredMembership};
use crate::store::Store;

pub type Meta = openraft::SnapshotMeta<u64, PeerNode>;

/// openraft's snapshot data: an open snapshot file.
#[derive(Debug)]
pub struct SnapshotData {
    pub path: PathBuf,
    pub file: File,
}

pub struct Snapshots {
    dir: PathBuf,
    /// The latest snapshot's last log id. Builds run in their own task and
    /// may overlap an install: switches are serialized, and a build never
    /// replaces a newer snapshot.
    current: Mutex<Option<LogId>>,
    next_temp: AtomicU64,
}

const CURRENT: &str = "current";
const DATA_SUFFIX: &str = ".snap";

/// The Raft state a store holds once it holds a snapshot's data.
pub fn applied_state(meta: &Meta) -> Vec<u8> {
    encode(&(meta.last_log_id, &meta.last_membership))
}

impl Snapshots {
    /// Opens (creating) the snapshot directory and removes what a crash left
    /// half-written or replaced.
    pub fn open(dir: PathBuf) -> io::Result<Snapshots> {
        fs::create_dir_all(&dir)?;
        let current = read_current(&dir)?;
        let keep = current.as_ref().map(data_file_name);
        for entry in fs::read_dir(&dir)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if name != CURRENT && Some(&name) != keep.as_ref() {
                fs::remove_file(dir.join(name))?;
            }
        }
        let current = Mutex::new(current.and_then(|m| m.last_log_id));
        Ok(Snapshots { dir, current, next_temp: AtomicU64::new(0) })
    }

    /// The latest snapshot, opened.
    pub fn current(&self) -> io::Result<Option<(Meta, SnapshotData)>> {
        let _switching = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let Some(meta) = read_current(&self.dir)? else { return Ok(None) };
        let path = self.dir.join(data_file_name(&meta));
        let file = File::open(&path)?;
        Ok(Some((meta, SnapshotData { path, file })))
    }

    /// A new file to build or receive a snapshot in.
    pub fn create_temp(&self) -> io::Result<SnapshotData> {
        let n = self.next_temp.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("incoming-{n}.tmp"));
        let file = File::options().read(true).write(true).create_new(true).open(&path)?;
        Ok(SnapshotData { path, file })
    }

    /// Writes a snapshot of `store` at its applied state and makes it the
    /// current one (unless a newer one was installed meanwhile).
    pub fn build(&self, store: &Store) -> anyhow::Result<(Meta, SnapshotData)> {
        // Once a snapshot exists, Raft may purge the log it covers: what the
        // snapshot holds must not be lost to a crash of the (unflushed) state.
        store.flush()?;
        let temp = self.create_temp()?;
        let mut out = BufWriter::with_capacity(1 << 20, &temp.file);
        let mut failed = None;
        let raft_state = store.write_backup(|chunk| match out.write_all(&chunk) {
            Ok(()) => true,
            Err(e) => {
                failed = Some(e);
                false
            }
        })?;
        if let Some(e) = failed {
            return Err(e).context("writing a snapshot");
        }
        out.flush()?;
        drop(out);
        let (last_log_id, last_membership): (Option<LogId>, StoredMembership) = match raft_state {
            Some(bytes) => decode(&bytes)?,
            None => (None, StoredMembership::default()),
        };
        let snapshot_id = last_log_id.map_or_else(|| "empty".to_string(), |id| format!("{}-{}", id.leader_id, id.index));
        let meta = Meta { last_log_id, last_membership, snapshot_id };
        let data = self.publish(&meta, temp, false)?;
        Ok((meta, data))
    }

    /// Makes the complete snapshot in `data` the current one; for a build
    /// (`installed` false) only if it is newer than the current one.
    pub fn publish(&self, meta: &Meta, data: SnapshotData, installed: bool) -> io::Result<SnapshotData> {
        data.file.sync_all()?;
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if !installed && current.is_some() && *current >= meta.last_log_id {
            // The open file still reads; nothing names it any more.
            fs::remove_file(&data.path)?;
            return Ok(data);
        }
        let name = data_file_name(meta);
        let path = self.dir.join(&name);
        fs::rename(&data.path, &path)?;
        let temp = self.dir.join("current.tmp");
        let mut f = File::create(&temp)?;
        f.write_all(&encode(meta))?;
        f.sync_all()?;
        fs::rename(&temp, self.dir.join(CURRENT))?;
        File::open(&self.dir)?.sync_all()?;
        *current = meta.last_log_id;
        for entry in fs::read_dir(&self.dir)? {
            let old = entry?.file_name().to_string_lossy().into_owned();
            if old.ends_with(DATA_SUFFIX) && old != name {
                fs::remove_file(self.dir.join(old))?;
            }
        }
        Ok(SnapshotData { path, file: data.file })
    }

    /// Redoes a snapshot install that a crash cut short (the store is then
    /// partly old, partly new), from the snapshot file it was installing.
    pub fn finish_interrupted_install(&self, store: &Store) -> anyhow::Result<()> {
        if !store.install_interrupted()? {
            return Ok(());
        }
        let (meta, data) =
            self.current()?.context("the state database was being replaced by a snapshot that is gone: start this member on a new data dir")?;
        tracing::warn!(snapshot = %meta.snapshot_id, "finishing the install of a snapshot that a crash interrupted");
        store.install_backup(&data.path, &applied_state(&meta)).map_err(anyhow::Error::msg)
    }
}

fn read_current(dir: &Path) -> io::Result<Option<Meta>> {
    match fs::read(dir.join(CURRENT)) {
        Ok(bytes) => decode(&bytes).map(Some).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn data_file_name(meta: &Meta) -> String {
    let id: String = meta.snapshot_id.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    format!("{id}{DATA_SUFFIX}")
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;
    use crate::store::types::{Command, Op, PutArgs, RangeArgs};

    fn put(store: &Store, key: &str, index: u64) {
        let command = Command::Write(Op::Put(PutArgs { key: key.into(), value: b"v".to_vec(), ..Default::default() }));
        let log_id = LogId::new(CommittedLeaderId::new(1, 1), index);
        store.apply(&command, &encode(&(Some(log_id), StoredMembership::default())), None).unwrap();
    }

    fn keys(store: &Store) -> Vec<Vec<u8>> {
        let all = RangeArgs { key: vec![0], range_end: vec![0], ..Default::default() };
        store.range(&all).unwrap().0.kvs.into_iter().map(|kv| kv.key).collect()
    }

    #[test]
    fn a_built_snapshot_replaces_another_members_state_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let leader = Store::open(&dir.path().join("leader"), &crate::store::memory::MemberBudget::default().state).unwrap();
        for (i, key) in ["a", "b", "c"].iter().enumerate() {
            put(&leader, key, i as u64 + 1);
        }
        let snapshots = Snapshots::open(dir.path().join("snaps")).unwrap();
        let (meta, data) = snapshots.build(&leader).unwrap();
        assert_eq!(meta.last_log_id.unwrap().index, 3);

        let follower = Store::open(&dir.path().join("follower"), &crate::store::memory::MemberBudget::default().state).unwrap();
        follower.set_identity(7, 9).unwrap();
        put(&follower, "old", 1);
        follower.install_backup(&data.path, &applied_state(&meta)).unwrap();
        assert_eq!(keys(&follower), vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
        assert_eq!(follower.revision(), leader.revision());
        assert_eq!(follower.identity().unwrap(), Some((7, 9)), "the member keeps its own identity");
        assert_eq!(follower.raft_applied().unwrap(), Some(applied_state(&meta)));
        assert!(!follower.install_interrupted().unwrap());

        // A crash leaves a half-received file: reopening drops it, keeps the current snapshot.
        let stray = snapshots.create_temp().unwrap();
        drop(snapshots);
        let snapshots = Snapshots::open(dir.path().join("snaps")).unwrap();
        assert!(!stray.path.exists());
        let (current, _) = snapshots.current().unwrap().expect("a current snapshot");
        assert_eq!(current.snapshot_id, meta.snapshot_id);
    }
}
