//! The RocksDB-backed state: the MVCC key-value store, the cluster's members,
//! and the Raft log (in `log`). This is the only module that knows RocksDB.

mod apply;
pub mod backup;
mod compaction;
mod keys;
mod layout;
pub mod log;
pub mod maintenance;
pub mod memory;
mod pages;
pub mod types;
mod view;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rocksdb::{ColumnFamilyDescriptor, IteratorMode, WriteBatch, WriteOptions, DB};

use crate::auth::{AuthChange, AuthState, Registry};
use keys::{decode_i64, META_COMPACT_REVISION, META_REVISION};
use types::{
    Change, Command, CommandResult, KvError, MemberInfo, Op, OpResult, RangeArgs, RangeResult, RevisionChanges, TxnArgs,
};
use view::{db_error, decode, Reach, View};

pub use apply::check_duplicate_keys;
pub use view::RangeEnd;

/// Column family names of the state database.
struct Cfs;

impl Cfs {
    const LATEST: &'static str = "latest";
    const HISTORY: &'static str = "history";
    const INDEX: &'static str = "index";
    const META: &'static str = "meta";
    const LEASE: &'static str = "lease";
    const ALL: [&'static str; 5] = [Self::LATEST, Self::HISTORY, Self::INDEX, Self::META, Self::LEASE];

    fn handle<'d>(db: &'d DB, name: &str) -> &'d rocksdb::ColumnFamily {
        db.cf_handle(name).expect("column families are created at open")
    }
}

/// A record's error, naming the record.
fn named_record(key: &[u8], e: KvError) -> KvError {
    KvError::Internal(format!("meta record {:?}: {}", String::from_utf8_lossy(key), detail(e)))
}

/// What went wrong, without the `etcdserver:` a client would see first.
pub fn detail(e: KvError) -> String {
    match e {
        KvError::Internal(message) => message,
        other => other.to_string(),
    }
}

/// A RocksDB row: key and value.
type Row = (Box<[u8]>, Box<[u8]>);

/// The rows of column family `cf` whose keys start with `prefix`, in key order.
fn scan_prefix<'d>(db: &'d DB, cf: &str, prefix: &'d [u8]) -> impl Iterator<Item = Result<Row, KvError>> + 'd {
    db.prefix_iterator_cf(Cfs::handle(db, cf), prefix)
        .map(|item| item.map_err(db_error))
        .take_while(move |item| item.as_ref().map_or(true, |(k, _)| k.starts_with(prefix)))
}

/// The keys attached to lease `id`, in key order.
fn attached_keys(db: &DB, id: i64) -> Result<Vec<Vec<u8>>, KvError> {
    let prefix = keys::lease_keys_prefix(id);
    scan_prefix(db, Cfs::LEASE, &prefix).map(|row| row.map(|(k, _)| k[prefix.len()..].to_vec())).collect()
}

#[derive(Debug, thiserror::Error)]
#[error("state database {path}: {reason}")]
pub struct OpenError {
    path: String,
    reason: String,
}

pub struct Store {
    db: DB,
    /// What it was opened with, for the table files a snapshot install writes.
    options: rocksdb::Options,
    revision: AtomicI64,
    /// Also followed by the background removal of old versions.
    compact_revision: tokio::sync::watch::Sender<i64>,
    /// The compact revision whose old versions are all removed.
    physically_compacted: tokio::sync::watch::Sender<i64>,
    /// A NOSPACE alarm is raised.
    nospace: AtomicBool,
    corrupt: AtomicBool,
    /// Snapshot installs begun plus those finished: odd while one replaces
    /// the state, when reads would see a mix of old and new.
    installs: AtomicU64,
    /// The auth state as last applied, for checks that must not read the database.
    pub auth: Registry,
    pages: pages::PageCounts,
    /// The last `size_bytes` read and when, for `recent_size_bytes`.
    size_seen: Mutex<Option<(Instant, u64)>>,
}

/// How old a size the space quota check of every write may use: reading it
/// takes two RocksDB properties of every column family (a tenth of a busy
/// leader's CPU when read for each put). etcd's check reads a size that its
/// backend updates once per batch commit, every 100 ms.
const SIZE_STALENESS: Duration = Duration::from_millis(100);

/// The state database's options, for its column families and the table
/// files a snapshot install writes.
fn state_options(budget: &memory::MemoryBudget) -> rocksdb::Options {
    let mut opts = memory::bounded_options(budget);
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    // Writes skip the write-ahead log (see `write`), so the families must
    // reach the disk together: a crash leaves them all at one point in the
    // write order, from which the Raft log is replayed.
    opts.set_atomic_flush(true);
    opts
}

impl Store {
    pub fn open(dir: &Path, budget: &memory::MemoryBudget) -> Result<Store, OpenError> {
        let opts = state_options(budget);
        let cfs = Cfs::ALL.iter().map(|n| ColumnFamilyDescriptor::new(*n, opts.clone()));
        let db = DB::open_cf_descriptors(&opts, dir, cfs)
            .map_err(|e| OpenError { path: dir.display().to_string(), reason: e.to_string() })?;
        let store = Store {
            db,
            options: opts,
            revision: AtomicI64::new(0),
            compact_revision: tokio::sync::watch::channel(0).0,
            physically_compacted: tokio::sync::watch::channel(0).0,
            nospace: AtomicBool::new(false),
            corrupt: AtomicBool::new(false),
            installs: AtomicU64::new(0),
            auth: Registry::new(AuthState::default()),
            pages: Default::default(),
            size_seen: Mutex::new(None),
        };
        let failed = |e| OpenError { path: dir.display().to_string(), reason: detail(e) };
        store.check_layout().map_err(failed)?;
        store.load_revisions().map_err(failed)?;
        Ok(store)
    }

    fn meta_i64(&self, key: &[u8]) -> Result<i64, KvError> {
        self.get_meta(key)?.map_or(Ok(0), |v| decode_i64(&v)).map_err(|e| named_record(key, e))
    }

    /// Reads what is kept in memory of the state database: revisions, alarms, auth.
    fn load_revisions(&self) -> Result<(), KvError> {
        // A fresh store is at revision 1, as etcd's is.
        // A record that cannot be read stops the member: a default in its
        // place would rewrite history (revision 1), re-apply the log, or
        // open every key to everyone ("no auth").
        self.revision.store(self.meta_i64(META_REVISION)?.max(1), Ordering::SeqCst);
        self.compact_revision.send_replace(self.meta_i64(META_COMPACT_REVISION)?);
        self.physically_compacted.send_replace(self.physically_compacted()?);
        self.load_alarms()?;
        let auth = self.get_meta(keys::META_AUTH)?.map(|v| decode::<AuthState>(&v)).transpose()?;
        self.auth.replace(auth.unwrap_or_default());
        Ok(())
    }

    pub fn revision(&self) -> i64 {
        self.revision.load(Ordering::SeqCst)
    }

    pub fn compact_revision(&self) -> i64 {
        *self.compact_revision.borrow()
    }

    fn get_meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        self.db.get_cf(Cfs::handle(&self.db, Cfs::META), key).map_err(db_error)
    }

    /// A consistent view at the current revision. The revision is read inside
    /// the snapshot so it always matches what the view sees.
    fn snapshot_view(&self, reach: Reach) -> Result<View<'_>, KvError> {
        // Checked on both sides of taking the snapshot: one taken while an
        // install ran (even one that has finished since) holds a mix.
        let installs = self.installs.load(Ordering::SeqCst);
        let snapshot = self.db.snapshot();
        if installs % 2 == 1 || self.installs.load(Ordering::SeqCst) != installs {
            return Err(KvError::InstallingSnapshot);
        }
        let meta = Cfs::handle(&self.db, Cfs::META);
        let read = |k: &[u8]| -> Result<i64, KvError> {
            snapshot.get_cf_opt(meta, k, reach.read_options()).map_err(db_error)?.map_or(Ok(0), |v| decode_i64(&v))
        };
        let revision = read(META_REVISION)?.max(1);
        let compact_revision = read(META_COMPACT_REVISION)?;
        Ok(View { db: &self.db, snapshot: Some(snapshot), reach, overlay: Default::default(), revision, compact_revision })
    }

    /// A Range at the local applied state; returns the result and the revision it was read at.
    pub fn range(&self, args: &RangeArgs) -> Result<(RangeResult, i64), KvError> {
        self.range_reaching(args, Reach::Disk)
    }

    /// A Range answered from memory alone, or `KvError::NeedsDisk`: it never
    /// waits for the disk, so an async worker may run it.
    pub fn range_in_memory(&self, args: &RangeArgs) -> Result<(RangeResult, i64), KvError> {
        self.range_reaching(args, Reach::Memory)
    }

    fn range_reaching(&self, args: &RangeArgs, reach: Reach) -> Result<(RangeResult, i64), KvError> {
        let view = self.snapshot_view(reach)?;
        let result = view.range(args, Some(&self.pages))?;
        Ok((result, view.revision))
    }

    /// A Txn whose branches only read, evaluated on the local applied state.
    pub fn read_txn(&self, args: &TxnArgs) -> Result<(OpResult, i64), KvError> {
        let mut exec = apply::Execution::new(self.snapshot_view(Reach::Disk)?);
        let result = exec.execute(&Op::Txn(args.clone()))?;
        Ok((result, exec.revision()))
    }

    /// Applies one committed command alone; see `apply_run`.
    #[cfg(test)]
    pub fn apply(
        &self,
        command: &Command,
        raft_state: &[u8],
        progress: Option<&[u8]>,
    ) -> Result<(CommandResult, Option<RevisionChanges>), KvError> {
        let mut applied = self.apply_run(&[command], raft_state, progress)?;
        Ok(applied.pop().expect("a result for each command"))
    }

    /// Applies consecutive committed commands, each as its own revision, in
    /// one atomic write together with `raft_state` (the Raft layer's applied
    /// log id and membership) and `progress` (how far into a multi-command
    /// entry it is, if not done): one write for a run instead of one per
    /// command is what a busy leader's entries of many puts cost least.
    /// More than one command must all be `Command::joins_run`. Returns each
    /// command's result and, if it made a new revision, that revision's
    /// changes for watchers.
    pub fn apply_run(
        &self,
        run: &[&Command],
        raft_state: &[u8],
        progress: Option<&[u8]>,
    ) -> Result<Vec<(CommandResult, Option<RevisionChanges>)>, KvError> {
        if run.len() > 1 && !run.iter().all(|c| c.joins_run()) {
            return Err(KvError::Internal("a command that must be applied alone was given in a run".into()));
        }
        let view = View {
            db: &self.db,
            snapshot: None,
            reach: Reach::Disk,
            overlay: Default::default(),
            revision: self.revision(),
            compact_revision: self.compact_revision(),
        };
        let mut exec = apply::Execution::new(view);
        let mut auth_applied = None;
        let mut applied = Vec::with_capacity(run.len());
        for &command in run {
            let mark = exec.mark();
            let outcome = match command {
                // The alarms are refused here too, not only where commands are
                // proposed: a member that had not yet applied an alarm may have
                // proposed a command the log orders after it.
                command if command.changes_data() && self.corrupted() => Err(KvError::Corrupt),
                command if command.adds_data() && self.out_of_space() => Err(KvError::NoSpace),
                command => self.execute(&mut exec, command, None, &mut auth_applied),
            };
            if let Err(KvError::Internal(e)) = &outcome {
                // Storage trouble, not a client mistake: applying on would let
                // this member drift from the others, so Raft must stop instead.
                return Err(KvError::Internal(e.clone()));
            }
            if outcome.is_err() {
                // A failed command changes nothing but the applied log id.
                exec.rollback(mark);
            }
            let (revision, changes) = exec.end_command();
            let changes = (!changes.is_empty()).then_some(RevisionChanges { revision, changes });
            applied.push((CommandResult { revision, outcome }, changes));
        }
        exec.finish();
        let revision = exec.view.revision;
        let mut batch = std::mem::take(&mut exec.batch);
        let meta = Cfs::handle(&self.db, Cfs::META);
        batch.put_cf(meta, keys::META_RAFT_APPLIED, raft_state);
        match progress {
            Some(p) => batch.put_cf(meta, keys::META_ENTRY_PROGRESS, p),
            None => batch.delete_cf(meta, keys::META_ENTRY_PROGRESS),
        }
        self.write(batch)?;
        self.revision.store(revision, Ordering::SeqCst);
        // What a command alone in its run changes beyond the keys.
        if let [command] = run {
            let done = applied[0].0.outcome.is_ok();
            if let (Command::Compact { revision: c, .. }, true) = (command.unwrapped(), done) {
                self.compact_revision.send_replace(*c);
            }
            if matches!(command, Command::Alarm { .. }) {
                self.load_alarms()?;
            }
            if let (Some((change, state)), true) = (auth_applied, done) {
                self.auth.applied(change, state);
            }
        }
        Ok(applied)
    }

    /// Executes one command into `exec`'s batch. `user` is the client's
    /// user when auth was on as it was proposed; an auth change leaves the
    /// state it makes in `auth_applied`, to take effect once written.
    fn execute<'c>(
        &self,
        exec: &mut apply::Execution<'_>,
        command: &'c Command,
        user: Option<&str>,
        auth_applied: &mut Option<(&'c AuthChange, AuthState)>,
    ) -> Result<OpResult, KvError> {
        let meta = Cfs::handle(&self.db, Cfs::META);
        match command {
            Command::Authorized { user, command } => {
                self.auth.state().check_command(Some(user), command, |id| attached_keys(&self.db, id))?;
                self.execute(exec, command, Some(user), auth_applied)
            }
            Command::Write(op) => {
                if user.is_none() && self.auth.state().enabled {
                    // Proposed before auth was turned on, applied after.
                    return Err(KvError::UserEmpty);
                }
                exec.execute(op)
            }
            Command::Compact { revision, .. } => exec.compact(*revision).map(|()| OpResult::Done),
            Command::PublishMember(member) => {
                exec.batch.put_cf(meta, keys::member_key(member.id), keys::encode(member));
                Ok(OpResult::Done)
            }
            Command::LeaseGrant { id, ttl } => exec.grant_lease(*id, *ttl).map(|()| OpResult::Done),
            Command::LeaseRevoke { id } => exec.revoke_lease(*id).map(|()| OpResult::Done),
            Command::LeaseCheckpoint(remaining) => exec.checkpoint_leases(remaining).map(|()| OpResult::Done),
            Command::Alarm { activate, member_id, alarm } => {
                let key = keys::alarm_key(*member_id, *alarm);
                if *activate {
                    exec.batch.put_cf(meta, key, []);
                } else {
                    exec.batch.delete_cf(meta, key);
                }
                Ok(OpResult::Done)
            }
            Command::MarkPendingVoter { id } => {
                exec.batch.put_cf(meta, keys::pending_voter_key(*id), []);
                Ok(OpResult::Done)
            }
            Command::Auth { caller, change } => {
                let state = self.auth.state().changed(caller.as_deref(), change)?;
                exec.batch.put_cf(meta, keys::META_AUTH, keys::encode(&state));
                *auth_applied = Some((change, state));
                Ok(OpResult::Done)
            }
        }
    }

    /// The changes of revisions `from..=to` from the history, oldest first,
    /// stopping after the revision that brings them over `max_bytes`; with
    /// `with_prev`, each change carries the state it replaced. Returns them
    /// with the last revision they cover.
    pub fn history(
        &self,
        from: i64,
        to: i64,
        max_bytes: usize,
        with_prev: bool,
    ) -> Result<(Vec<RevisionChanges>, i64), KvError> {
        let view = self.snapshot_view(Reach::Disk)?;
        if from < view.compact_revision {
            return Err(KvError::Compacted);
        }
        let to = to.min(view.revision);
        let mut ro = rocksdb::ReadOptions::default();
        ro.set_snapshot(view.snapshot.as_ref().expect("a snapshot view"));
        ro.set_iterate_upper_bound(keys::history_key(to + 1, 0).to_vec());
        let start = keys::history_key(from, 0);
        let iter = self.db.iterator_cf_opt(
            Cfs::handle(&self.db, Cfs::HISTORY),
            ro,
            IteratorMode::From(&start, rocksdb::Direction::Forward),
        );
        let mut out: Vec<RevisionChanges> = Vec::new();
        let mut bytes = 0;
        for item in iter {
            let (k, v) = item.map_err(db_error)?;
            let revision = keys::history_revision(&k)?;
            if out.last().is_none_or(|r| r.revision != revision) {
                if bytes > max_bytes {
                    let covered = out.last().map_or(from - 1, |r| r.revision);
                    return Ok((out, covered));
                }
                out.push(RevisionChanges { revision, changes: Vec::new() });
            }
            let event: keys::Event = decode(&v)?;
            let prev = if with_prev { view.get_at(&event.kv.key, revision - 1)? } else { None };
            let change = Change { kv: event.kv, deleted: event.deleted, prev };
            bytes += change.size_bytes();
            out.last_mut().expect("pushed above").changes.push(change);
        }
        Ok((out, to))
    }

    fn write(&self, batch: WriteBatch) -> Result<(), KvError> {
        // No write-ahead log of its own: the Raft log is one, fsynced, and
        // replays what a crash loses here. A second log cost a write of
        // every value, and the sync RocksDB makes of a full one when the
        // memtables switch held up the Raft log's fsyncs on the same disk
        // past a heartbeat (1-4 KiB values: a leader's AppendEntries timing
        // out every 3 s, writes' p99.9 at 200 ms).
        let mut wo = WriteOptions::default();
        wo.disable_wal(true);
        let started = std::time::Instant::now();
        let written = self.db.write_opt(batch, &wo).map_err(db_error);
        crate::metrics::METRICS.backend_commit_seconds.observe(started.elapsed().as_secs_f64());
        written
    }

    /// Makes every write so far durable: writes every memtable out to table
    /// files, all families at once, and waits for it.
    pub fn flush(&self) -> Result<(), KvError> {
        let families: Vec<_> = Cfs::ALL.iter().map(|name| Cfs::handle(&self.db, name)).collect();
        self.db.flush_cfs_opt(&families, &rocksdb::FlushOptions::default()).map_err(db_error)
    }

    /// The Raft layer's applied state as last recorded by `apply`.
    pub fn raft_applied(&self) -> Result<Option<Vec<u8>>, KvError> {
        self.get_meta(keys::META_RAFT_APPLIED)
    }

    /// The `progress` recorded by the last `apply`, if it was mid-entry.
    pub fn entry_progress(&self) -> Result<Option<Vec<u8>>, KvError> {
        self.get_meta(keys::META_ENTRY_PROGRESS)
    }

    pub fn members(&self) -> Result<Vec<MemberInfo>, KvError> {
        scan_prefix(&self.db, Cfs::META, keys::MEMBER_PREFIX).map(|row| decode(&row?.1)).collect()
    }

    fn member_ids(&self, prefix: &'static [u8]) -> Result<Vec<u64>, KvError> {
        scan_prefix(&self.db, Cfs::META, prefix).map(|row| Ok(keys::id_of_key(&row?.0))).collect()
    }

    /// Learners that become voters once they have caught up.
    pub fn pending_voters(&self) -> Result<Vec<u64>, KvError> {
        self.member_ids(keys::PENDING_VOTER_PREFIX)
    }

    /// True when member `id` was removed from the cluster (it may never return).
    pub fn is_removed(&self, id: u64) -> Result<bool, KvError> {
        Ok(self.get_meta(&keys::removed_key(id))?.is_some())
    }

    /// Records members that a membership change removed. Written before the
    /// change counts as applied, so a crash in between records them again.
    pub fn record_removed(&self, ids: &[u64]) -> Result<(), KvError> {
        let mut batch = WriteBatch::default();
        let meta = Cfs::handle(&self.db, Cfs::META);
        for id in ids {
            batch.put_cf(meta, keys::removed_key(*id), []);
            batch.delete_cf(meta, keys::pending_voter_key(*id));
            batch.delete_cf(meta, keys::member_key(*id));
        }
        self.write(batch)
    }

    /// Every lease: (id, granted TTL, TTL left at the last checkpoint).
    pub fn leases(&self) -> Result<Vec<(i64, i64, Option<i64>)>, KvError> {
        scan_prefix(&self.db, Cfs::LEASE, keys::LEASE_PREFIX)
            .map(|row| {
                let (k, v) = row?;
                let id = keys::lease_id_of(&k)?;
                let record: keys::LeaseRecord =
                    decode(&v).map_err(|e| KvError::Internal(format!("lease {id:x}: {}", detail(e))))?;
                Ok((id, record.ttl, record.remaining))
            })
            .collect()
    }

    /// The keys attached to lease `id`, in key order.
    pub fn lease_keys(&self, id: i64) -> Result<Vec<Vec<u8>>, KvError> {
        attached_keys(&self.db, id)
    }

    /// This member's (member id, cluster id), recorded when it was bootstrapped.
    pub fn identity(&self) -> Result<Option<(u64, u64)>, KvError> {
        self.get_meta(keys::META_IDENTITY)?.map(|v| decode(&v)).transpose().map_err(|e| named_record(keys::META_IDENTITY, e))
    }

    /// Records the identity once, durably, when the member is first bootstrapped.
    pub fn set_identity(&self, member_id: u64, cluster_id: u64) -> Result<(), KvError> {
        let mut batch = WriteBatch::default();
        batch.put_cf(Cfs::handle(&self.db, Cfs::META), keys::META_IDENTITY, keys::encode(&(member_id, cluster_id)));
        self.write(batch)?;
        self.flush()
    }

    /// About how many keys exist now: RocksDB's estimate for the latest
    /// versions, read without a scan.
    pub fn estimated_keys(&self) -> u64 {
        let latest = Cfs::handle(&self.db, Cfs::LATEST);
        self.db.property_int_value_cf(latest, "rocksdb.estimate-num-keys").ok().flatten().unwrap_or(0)
    }

    /// `size_bytes` as read at most `SIZE_STALENESS` ago.
    pub fn recent_size_bytes(&self) -> u64 {
        let seen = *self.size_seen.lock().unwrap_or_else(|p| p.into_inner());
        match seen {
            Some((at, size)) if at.elapsed() < SIZE_STALENESS => size,
            _ => {
                let size = self.size_bytes();
                *self.size_seen.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), size));
                size
            }
        }
    }

    /// Bytes on disk (SST files plus memtables), for Status and the space quota.
    pub fn size_bytes(&self) -> u64 {
        let prop = |name: &str| -> u64 {
            Cfs::ALL
                .iter()
                .filter_map(|cf| self.db.property_int_value_cf(Cfs::handle(&self.db, cf), name).ok().flatten())
                .sum()
        };
        prop("rocksdb.total-sst-files-size") + prop("rocksdb.cur-size-all-mem-tables")
    }
}
