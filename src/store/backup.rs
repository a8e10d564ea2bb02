//! The file of `etcdctl snapshot save` (Maintenance.Snapshot) and what
//! `cairn snapshot restore|status` read back. cairn's own layout, framed as
//! etcdctl checks it: the body padded to a multiple of 512 bytes, then the
//! SHA-256 of everything before it.
//!
//! Body: `MAGIC` and the format byte, then rows `cf(1) key_len(4) value_len(4) key value` of a
//! RocksDB snapshot of every column family, then `END`.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use rocksdb::{IngestExternalFileOptions, IteratorMode, SstFileWriter, WriteBatch};
use sha2::{Digest, Sha256};

use super::keys;
use super::types::KvError;
use super::view::{db_error, decode};
use super::{Cfs, Store};

const MAGIC: &[u8; 15] = b"cairn-snapshot\x00";
/// The format: 2 since the store's layout 2 (`store::layout`); files of
/// format 1 hold layout 1's rows, which are rewritten once loaded.
const FORMAT: u8 = 2;
const END: u8 = 0xFF;
const PAGE: usize = 512;
const CHECKSUM: usize = 32;
/// What one message of the Snapshot stream carries.
pub const CHUNK_BYTES: usize = 64 * 1024;
/// Restored rows go into table files of about this size.
const TABLE_BYTES: u64 = 64 * 1024 * 1024;

/// Of the meta rows, those that describe the data and its users; the others
/// (identity, Raft state, members, alarms) belong to the old cluster.
const DATA_META: [&[u8]; 5] = [
    keys::META_REVISION,
    keys::META_COMPACT_REVISION,
    keys::META_PHYSICALLY_COMPACTED,
    keys::META_AUTH,
    keys::META_LAYOUT,
];

/// What `snapshot status` reports.
pub struct BackupStatus {
    pub hash: u32,
    pub revision: i64,
    pub total_keys: u64,
    pub total_size: u64,
}

impl Store {
    /// Streams a point-in-time copy of the state to `send` in chunks of
    /// `CHUNK_BYTES`; stops early (Ok) when `send` returns false. Returns the
    /// Raft applied state the copy holds.
    pub fn write_backup(&self, mut send: impl FnMut(Vec<u8>) -> bool) -> Result<Option<Vec<u8>>, KvError> {
        let snapshot = self.db.snapshot();
        let raft_state =
            snapshot.get_cf(Cfs::handle(&self.db, Cfs::META), keys::META_RAFT_APPLIED).map_err(db_error)?;
        let mut hasher = Sha256::new();
        let mut chunk = Vec::with_capacity(CHUNK_BYTES + PAGE);
        let mut written = 0usize;
        chunk.extend_from_slice(MAGIC);
        chunk.push(FORMAT);
        for (i, name) in Cfs::ALL.iter().enumerate() {
            for item in snapshot.iterator_cf(Cfs::handle(&self.db, name), IteratorMode::Start) {
                let (k, v) = item.map_err(db_error)?;
                chunk.push(i as u8);
                chunk.extend_from_slice(&(k.len() as u32).to_be_bytes());
                chunk.extend_from_slice(&(v.len() as u32).to_be_bytes());
                chunk.extend_from_slice(&k);
                chunk.extend_from_slice(&v);
                if chunk.len() >= CHUNK_BYTES && !emit(&mut chunk, &mut hasher, &mut written, &mut send) {
                    return Ok(raft_state);
                }
            }
        }
        chunk.push(END);
        let total = written + chunk.len();
        chunk.resize(chunk.len() + (PAGE - total % PAGE) % PAGE, 0);
        if emit(&mut chunk, &mut hasher, &mut written, &mut send) {
            send(hasher.finalize().to_vec());
        }
        Ok(raft_state)
    }

    /// Replaces the whole state with a snapshot file's (one from the leader),
    /// table file by table file. Until the last one the store is a mix of old and
    /// new: reads are refused meanwhile, and a marker written first lets a
    /// restart after a crash see it (`install_interrupted`) and redo it.
    pub fn install_backup(&self, path: &Path, raft_state: &[u8]) -> Result<(), String> {
        let (mut rows, _, _) = Rows::open(path)?;
        self.installs.fetch_add(1, Ordering::SeqCst);
        let result = self.replace_state(&mut rows, raft_state).map_err(|e| e.to_string());
        self.installs.fetch_add(1, Ordering::SeqCst);
        self.load_revisions().map_err(|e| e.to_string())?;
        result
    }

    fn replace_state(&self, rows: &mut Rows, raft_state: &[u8]) -> Result<(), KvError> {
        let meta = Cfs::handle(&self.db, Cfs::META);
        // Who this member is stays; everything else comes from the leader.
        let identity = self.get_meta(keys::META_IDENTITY)?;
        let mut batch = WriteBatch::default();
        for name in Cfs::ALL {
            // Everything from the empty key up to and including the last one.
            let cf = Cfs::handle(&self.db, name);
            if let Some(last) = self.db.iterator_cf(cf, IteratorMode::End).next() {
                let (last, _) = last.map_err(db_error)?;
                batch.delete_range_cf(cf, &[][..], &last[..]);
                batch.delete_cf(cf, &last);
            }
        }
        if let Some(id) = identity {
            batch.put_cf(meta, keys::META_IDENTITY, id);
        }
        batch.put_cf(meta, keys::META_INSTALLING, b"");
        self.write(batch)?;
        self.flush()?;
        load_rows(rows, self, |cf, key| {
            !(cf == Cfs::META && [keys::META_IDENTITY, keys::META_RAFT_APPLIED].contains(&key))
        })
        .map_err(KvError::Internal)?;
        if rows.format == 1 {
            self.rewrite_layout_1()?;
        }
        let mut batch = WriteBatch::default();
        batch.put_cf(meta, keys::META_RAFT_APPLIED, raft_state);
        batch.delete_cf(meta, keys::META_INSTALLING);
        self.write(batch)?;
        self.flush()?;
        Ok(())
    }

    /// A snapshot install was cut short: the state is a mix until it is redone.
    pub fn install_interrupted(&self) -> Result<bool, KvError> {
        Ok(self.get_meta(keys::META_INSTALLING)?.is_some())
    }
}

/// Loads the rows that `keep` accepts into `store`. The file holds each
/// column family's rows in key order, so they are written straight into
/// table files of about `TABLE_BYTES` and ingested: the data skips the
/// memtables and the compactions a bulk write would cost, and memory stays
/// at what one table file's writer holds, whatever the store's size.
fn load_rows(rows: &mut Rows, store: &Store, keep: impl Fn(&str, &[u8]) -> bool) -> Result<(), String> {
    let staging = store.db.path().with_extension("ingest");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|e| format!("{}: {e}", staging.display()))?;
    let ingest = |(cf, mut writer, path): (&str, SstFileWriter, PathBuf)| -> Result<(), String> {
        writer.finish().map_err(|e| e.to_string())?;
        let mut how = IngestExternalFileOptions::default();
        how.set_move_files(true);
        store.db.ingest_external_file_cf_opts(Cfs::handle(&store.db, cf), &how, vec![path]).map_err(|e| e.to_string())
    };
    let mut table: Option<(&'static str, SstFileWriter, PathBuf)> = None;
    let mut tables = 0usize;
    while let Some((cf, key, value)) = rows.next_row()? {
        if !keep(cf, &key) {
            continue;
        }
        if let Some(t) = table.take() {
            if t.0 == cf && t.1.file_size() < TABLE_BYTES {
                table = Some(t);
            } else {
                ingest(t)?;
            }
        }
        let (_, writer, _) = match &mut table {
            Some(t) => t,
            None => {
                let path = staging.join(format!("{tables}.sst"));
                tables += 1;
                let writer = SstFileWriter::create(&store.options);
                writer.open(&path).map_err(|e| e.to_string())?;
                table.insert((cf, writer, path))
            }
        };
        writer.put(&key, &value).map_err(|e| e.to_string())?;
    }
    if let Some(t) = table.take() {
        ingest(t)?;
    }
    let _ = std::fs::remove_dir_all(&staging);
    Ok(())
}

/// Hands the chunk on, counted and hashed; false when nobody takes it any more.
fn emit(chunk: &mut Vec<u8>, hasher: &mut Sha256, written: &mut usize, send: &mut impl FnMut(Vec<u8>) -> bool) -> bool {
    hasher.update(&chunk[..]);
    *written += chunk.len();
    send(std::mem::replace(chunk, Vec::with_capacity(CHUNK_BYTES + PAGE)))
}

/// Reads the rows of a snapshot file whose checksum was verified.
struct Rows {
    reader: BufReader<File>,
    format: u8,
}

impl Rows {
    /// Opens `path` after checking its checksum and magic; returns the rows
    /// and the file's size and checksum.
    fn open(path: &Path) -> Result<(Rows, u64, [u8; CHECKSUM]), String> {
        let fail = |e: std::io::Error| format!("{}: {e}", path.display());
        let mut file = File::open(path).map_err(fail)?;
        let size = file.metadata().map_err(fail)?.len();
        if size < (MAGIC.len() + 1 + CHECKSUM) as u64 || size % PAGE as u64 != CHECKSUM as u64 {
            return Err(format!("{}: not a cairn snapshot (size {size})", path.display()));
        }
        let mut hasher = Sha256::new();
        let mut body = (&mut file).take(size - CHECKSUM as u64);
        std::io::copy(&mut body, &mut hasher).map_err(fail)?;
        let mut stored = [0u8; CHECKSUM];
        file.read_exact(&mut stored).map_err(fail)?;
        if hasher.finalize()[..] != stored {
            return Err(format!("{}: snapshot checksum mismatch: the file is damaged or incomplete", path.display()));
        }
        file.seek(SeekFrom::Start(0)).map_err(fail)?;
        let mut reader = BufReader::new(file);
        let mut header = [0u8; 16];
        reader.read_exact(&mut header).map_err(fail)?;
        if &header[..MAGIC.len()] != MAGIC {
            return Err(format!("{}: not a cairn snapshot (an etcd one? restore it with etcdutl)", path.display()));
        }
        let format = header[MAGIC.len()];
        if !(1..=FORMAT).contains(&format) {
            return Err(format!("{}: snapshot format {format} is newer than this cairn's ({FORMAT})", path.display()));
        }
        Ok((Rows { reader, format }, size, stored))
    }

    /// The next row: (column family, key, value); `None` at the end.
    fn next_row(&mut self) -> Result<Option<(&'static str, Vec<u8>, Vec<u8>)>, String> {
        let bad = |e: std::io::Error| format!("truncated snapshot: {e}");
        let mut cf = [0u8; 1];
        self.reader.read_exact(&mut cf).map_err(bad)?;
        if cf[0] == END {
            return Ok(None);
        }
        let name = *Cfs::ALL.get(cf[0] as usize).ok_or("bad snapshot row")?;
        let mut lens = [0u8; 8];
        self.reader.read_exact(&mut lens).map_err(bad)?;
        let key_len = u32::from_be_bytes(lens[..4].try_into().expect("4 bytes")) as usize;
        let value_len = u32::from_be_bytes(lens[4..].try_into().expect("4 bytes")) as usize;
        let mut key = vec![0u8; key_len];
        self.reader.read_exact(&mut key).map_err(bad)?;
        let mut value = vec![0u8; value_len];
        self.reader.read_exact(&mut value).map_err(bad)?;
        Ok(Some((name, key, value)))
    }
}

/// `snapshot status`: checks the file and counts what it holds.
pub fn backup_status(path: &Path) -> Result<BackupStatus, String> {
    let (mut rows, total_size, checksum) = Rows::open(path)?;
    let (mut revision, mut total_keys) = (1, 0);
    while let Some((cf, key, value)) = rows.next_row()? {
        if cf == Cfs::LATEST {
            total_keys += 1;
        } else if cf == Cfs::META && key == keys::META_REVISION {
            revision = keys::decode_i64(&value).map_err(|e| e.to_string())?;
        }
    }
    let hash = u32::from_be_bytes(checksum[..4].try_into().expect("4 bytes"));
    Ok(BackupStatus { hash, revision, total_keys, total_size })
}

/// Fills the empty state database at `db_dir` from a snapshot file, in
/// table files; returns its status.
pub fn restore_backup(path: &Path, db_dir: &Path) -> Result<(Store, BackupStatus), String> {
    let status = backup_status(path)?;
    let (mut rows, _, _) = Rows::open(path)?;
    let store = Store::open(db_dir, &super::memory::MemberBudget::default().state).map_err(|e| e.to_string())?;
    load_rows(&mut rows, &store, |cf, key| cf != Cfs::META || DATA_META.contains(&key))?;
    if rows.format == 1 {
        store.rewrite_layout_1().map_err(|e| e.to_string())?;
    }
    store.flush().map_err(|e| e.to_string())?;
    store.load_revisions().map_err(|e| e.to_string())?;
    Ok((store, status))
}

/// The members a restored data dir forms its new cluster with, on its first start.
pub type RestoredMembers = Vec<(u64, String, Vec<String>)>;

impl Store {
    pub fn set_restored_members(&self, members: &RestoredMembers) -> Result<(), KvError> {
        let mut batch = WriteBatch::default();
        batch.put_cf(Cfs::handle(&self.db, Cfs::META), keys::META_RESTORED_MEMBERS, keys::encode(members));
        self.write(batch)?;
        self.flush()
    }

    /// Set by `snapshot restore` until the new cluster is formed.
    pub fn restored_members(&self) -> Result<Option<RestoredMembers>, KvError> {
        self.get_meta(keys::META_RESTORED_MEMBERS)?.map(|v| decode(&v)).transpose()
    }

    pub fn clear_restored_members(&self) -> Result<(), KvError> {
        let mut batch = WriteBatch::default();
        batch.delete_cf(Cfs::handle(&self.db, Cfs::META), keys::META_RESTORED_MEMBERS);
        self.write(batch)?;
        self.flush()
    }
}
