//! openraft's log storage on `store::log::LogDb`, kept off openraft's async
//! tasks: an append lands in an in-memory tail (`log_tail`) that readers see
//! at once and returns; one writer thread writes every change queued behind
//! it in one synced RocksDB batch (group commit), reports those appends
//! flushed and marks them written in the tail. A RocksDB write stall
//! therefore delays durability, never heartbeats.
//!
//! A leader's appends of its own entries are reported flushed at once, so
//! that openraft replicates them while the writer syncs them; `durability`
//! keeps them from counting as committed before they are on this disk.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{mpsc, Arc, Mutex};

use crate::metrics::METRICS;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, EntryPayload, ErrorSubject, ErrorVerb, RaftLogReader, StorageError, StorageIOError, Vote};
use tokio::sync::oneshot;

use super::durability::Durability;
use super::log_tail::LogTail;
use super::{decode, encode, LogId, TypeConfig};
use crate::store::log::{LogDb, LogWrite, PURGED};

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";

/// Who hears that a queued change is durable.
enum Notify {
    Nobody,
    Raft(LogFlushed<TypeConfig>),
    Waiter(oneshot::Sender<Result<(), String>>),
}

struct Job {
    change: LogWrite,
    /// The append's number, to mark exactly its entries written in the tail.
    append: u64,
    /// The append's last entry.
    last: Option<LogId>,
    notify: Notify,
}

#[derive(Clone)]
pub struct LogStore {
    db: Arc<LogDb>,
    tail: Arc<Mutex<LogTail>>,
    appends: u64,
    jobs: mpsc::Sender<Job>,
    durability: Durability,
    member_id: u64,
    /// The vote as last saved: it tells whether this member leads.
    vote: Option<Vote<u64>>,
    /// The commit index, when it changed since it was last queued: it goes to
    /// the writer with the next change rather than waking it by itself.
    unsaved_commit: Option<Vec<u8>>,
}

fn io_error(subject: ErrorSubject<u64>, verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError<u64> {
    StorageIOError::new(subject, verb, openraft::AnyError::new(&e)).into()
}

fn read_error(e: impl std::error::Error + 'static) -> StorageError<u64> {
    io_error(ErrorSubject::Logs, ErrorVerb::Read, e)
}

fn write_error(e: impl std::error::Error + 'static) -> StorageError<u64> {
    io_error(ErrorSubject::Logs, ErrorVerb::Write, e)
}

fn writer_gone() -> StorageError<u64> {
    write_error(std::io::Error::other("the log writer thread is gone"))
}

impl Job {
    /// Whether the batch holding this job must be fsynced. Log entries and
    /// truncations must, and so must anything someone waits for. The commit
    /// index and purges need not: losing the last of them in a crash only
    /// makes a restart re-apply or keep a few more entries. Written after
    /// the entries they name, they never reach the disk without them. (etcd
    /// likewise syncs its WAL for new entries or a new vote, not for a commit
    /// index alone.) Leaving them unsynced saves an fsync per commit, which
    /// the next append would otherwise wait behind.
    fn needs_sync(&self) -> bool {
        matches!(self.change, LogWrite::Append(_) | LogWrite::TruncateFrom(_)) || !matches!(self.notify, Notify::Nobody)
    }
}

/// The writer thread: takes every job queued, writes them in one batch,
/// synced if any needs it, then tells each waiter.
///
/// After a failed write it writes nothing more and fails every later job:
/// what is on disk stays a prefix of what was queued. (RocksDB may accept
/// writes again once the disk has room; a commit index or later entries
/// written then, behind entries that were not, would let a restart apply
/// entries this log lacks.)
fn write_queued(
    write: impl Fn(&mut dyn Iterator<Item = &LogWrite>, bool) -> Result<(), String>,
    tail: Arc<Mutex<LogTail>>,
    durability: Durability,
    queue: mpsc::Receiver<Job>,
) {
    let mut broken: Option<String> = None;
    while let Ok(first) = queue.recv() {
        let mut jobs = vec![first];
        jobs.extend(queue.try_iter());
        let sync = jobs.iter().any(Job::needs_sync);
        let started = std::time::Instant::now();
        let result = match &broken {
            Some(e) => Err(e.clone()),
            None => write(&mut jobs.iter().map(|j| &j.change), sync),
        };
        if sync && broken.is_none() {
            METRICS.wal_fsync_seconds.observe(started.elapsed().as_secs_f64());
        }
        match &result {
            Ok(()) => {
                let mut tail = tail.lock().unwrap_or_else(|p| p.into_inner());
                for job in &jobs {
                    if let LogWrite::Append(rows) = &job.change {
                        tail.written(job.append, rows.iter().map(|(index, _)| *index));
                    }
                }
                drop(tail);
                if let Some(last) = jobs.iter().filter_map(|j| j.last).max_by_key(|l| l.index) {
                    durability.synced(last);
                }
            }
            Err(e) => {
                durability.failed(e);
                broken = Some(e.clone());
            }
        }
        for job in jobs {
            match job.notify {
                Notify::Nobody => {}
                Notify::Raft(callback) => callback.log_io_completed(result.clone().map_err(std::io::Error::other)),
                Notify::Waiter(waiter) => {
                    let _ = waiter.send(result.clone());
                }
            }
        }
    }
}

impl LogStore {
    pub fn new(db: LogDb, member_id: u64) -> Result<LogStore, StorageError<u64>> {
        let durability = Durability::new(last_written(&db)?);
        let db = Arc::new(db);
        let tail = Arc::new(Mutex::new(LogTail::default()));
        let (jobs, queue) = mpsc::channel::<Job>();
        let (writer_db, writer_tail, writer_durability) = (db.clone(), tail.clone(), durability.clone());
        let write = move |changes: &mut dyn Iterator<Item = &LogWrite>, sync| writer_db.write(changes, sync).map_err(|e| e.to_string());
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || write_queued(write, writer_tail, writer_durability, queue))
            .map_err(write_error)?;
        Ok(LogStore { db, tail, appends: 0, jobs, durability, member_id, vote: None, unsaved_commit: None })
    }

    pub fn durability(&self) -> Durability {
        self.durability.clone()
    }

    /// Whether `entries` are this leader's own, appended after its term's
    /// first entry reached the disk: those may go to the followers before
    /// their fsync. Not a membership change: a leader moves on to the next
    /// step of a change once it counts the last one committed, so that count
    /// must include its own synced copy.
    fn may_replicate_before_sync(&self, entries: &[Entry<TypeConfig>]) -> bool {
        let Some(vote) = self.vote.filter(|v| v.is_committed() && v.leader_id().voted_for() == Some(self.member_id))
        else {
            return false;
        };
        let term = *vote.leader_id();
        self.durability.last().is_some_and(|on_disk| on_disk.leader_id == term)
            && entries.iter().all(|e| e.log_id.leader_id == term && !matches!(e.payload, EntryPayload::Membership(_)))
    }

    fn tail(&self) -> std::sync::MutexGuard<'_, LogTail> {
        self.tail.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn queue(&mut self, change: LogWrite, append: u64, notify: Notify) -> Result<(), StorageError<u64>> {
        let job = Job { change, append, last: None, notify };
        self.send(job)
    }

    fn send(&mut self, job: Job) -> Result<(), StorageError<u64>> {
        if let Some(commit) = self.unsaved_commit.take() {
            let change = LogWrite::Meta(COMMITTED, commit);
            self.jobs.send(Job { change, append: 0, last: None, notify: Notify::Nobody }).map_err(|_| writer_gone())?;
        }
        self.jobs.send(job).map_err(|_| writer_gone())
    }

    /// Queues `change` and waits until it is durable.
    async fn write_durably(&mut self, change: LogWrite) -> Result<(), StorageError<u64>> {
        let (done, written) = oneshot::channel();
        self.queue(change, 0, Notify::Waiter(done))?;
        let result = written.await.map_err(|_| writer_gone())?;
        result.map_err(|e| write_error(std::io::Error::other(e)))
    }
}

fn meta<T: serde::de::DeserializeOwned>(db: &LogDb, key: &str) -> Result<Option<T>, StorageError<u64>> {
    match db.get_meta(key).map_err(read_error)? {
        None => Ok(None),
        Some(bytes) => decode(&bytes).map(Some).map_err(read_error),
    }
}

/// The last entry written to RocksDB, or the last one purged when none is left.
fn last_written(db: &LogDb) -> Result<Option<LogId>, StorageError<u64>> {
    match db.last().map_err(read_error)? {
        Some((_, bytes)) => Ok(Some(decode::<Entry<TypeConfig>>(&bytes).map_err(read_error)?.log_id)),
        None => meta(db, PURGED),
    }
}

/// The first index of `range` and the first index past it.
fn index_span(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let from = match range.start_bound() {
        Bound::Included(&i) => i,
        Bound::Excluded(&i) => i.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let to = match range.end_bound() {
        Bound::Included(&i) => i.saturating_add(1),
        Bound::Excluded(&i) => i,
        Bound::Unbounded => u64::MAX,
    };
    (from, to)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<u64>> {
        let (from, to) = index_span(&range);
        if from >= to {
            return Ok(Vec::new());
        }
        // The tail first, then RocksDB: an entry leaves the tail only after
        // it was written, so one missing from the tail when it is read is in
        // RocksDB when that is read. (The other order loses an entry written
        // between the two reads.)
        let (tail_from, mut entries) = {
            let tail = self.tail();
            let tail_from = tail.first_index().map_or(to, |first| first.clamp(from, to));
            (tail_from, tail.entries(tail_from, to))
        };
        // The usual case, replicating or applying what was just appended:
        // all of it is still in the tail.
        if tail_from == from {
            return Ok(entries);
        }
        let db = self.db.clone();
        let rows = tokio::task::spawn_blocking(move || db.read(Bound::Included(from), Bound::Excluded(tail_from)))
            .await
            .map_err(read_error)?
            .map_err(read_error)?;
        let mut written = Vec::with_capacity(rows.len() + entries.len());
        for (_, bytes) in rows {
            written.push(decode::<Entry<TypeConfig>>(&bytes).map_err(read_error)?);
        }
        written.append(&mut entries);
        Ok(written)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<u64>> {
        let last_purged_log_id = meta(&self.db, PURGED)?;
        let in_tail = self.tail().last_log_id();
        let last_log_id = match in_tail {
            Some(id) => Some(id),
            None => last_written(&self.db)?,
        };
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        self.write_durably(LogWrite::Meta(VOTE, encode(vote))).await?;
        self.vote = Some(*vote);
        Ok(())
    }

    /// Read once, as Raft starts. A member that led before it stopped starts
    /// as a follower (as etcd's members do), not as the leader of its old
    /// term, which openraft would resume: entries it sent the followers
    /// before its own fsync may be missing from its log now, and leading the
    /// same term again it would append other entries under their log ids,
    /// which followers holding the first ones take for the same and apply.
    /// Its vote stays in that term, so it votes for nobody else there.
    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        let saved: Option<Vote<u64>> = meta(&self.db, VOTE)?;
        self.vote = saved.map(|v| match v.leader_id().voted_for() {
            Some(id) if id == self.member_id && v.is_committed() => Vote::new(v.leader_id().term, id),
            _ => v,
        });
        Ok(self.vote)
    }

    /// Nobody waits for it: it only lets a restart re-apply sooner. It is
    /// written with the next change (the next append, usually at once under
    /// load), sparing the writer a wake and a write per commit; what a crash
    /// loses of it a restart learns from the leader, as it would the unsynced
    /// write.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError<u64>> {
        self.unsaved_commit = Some(encode(&committed));
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError<u64>> {
        Ok(meta::<Option<LogId>>(&self.db, COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        self.appends += 1;
        let append = self.appends;
        let entries: Vec<_> = entries.into_iter().collect();
        let early = self.may_replicate_before_sync(&entries);
        let last = entries.last().map(|e| e.log_id);
        let mut rows = Vec::with_capacity(entries.len());
        {
            let mut tail = self.tail();
            for entry in entries {
                let (index, bytes) = (entry.log_id.index, encode(&entry));
                tail.push(append, entry, bytes.len());
                rows.push((index, bytes));
            }
        }
        let change = LogWrite::Append(rows);
        if !early {
            return self.send(Job { change, append, last, notify: Notify::Raft(callback) });
        }
        self.send(Job { change, append, last, notify: Notify::Nobody })?;
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError<u64>> {
        self.tail().cut_from(log_id.index);
        // Waited for, so that no read sees the cut entries in RocksDB after
        // this returns.
        self.write_durably(LogWrite::TruncateFrom(log_id.index)).await?;
        // Everything queued before the cut is written now.
        let last = self.get_log_state().await?.last_log_id;
        self.durability.truncated_to(last);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError<u64>> {
        self.tail().drop_upto(log_id.index);
        self.queue(LogWrite::PurgeUpto(log_id.index, encode(&log_id)), 0, Notify::Nobody)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use openraft::{CommittedLeaderId, Membership};

    use super::*;
    use crate::store::memory::MemberBudget;

    fn entries(term: u64, leader: u64, from: u64, payload: EntryPayload<TypeConfig>) -> Vec<Entry<TypeConfig>> {
        (from..from + 2).map(|index| Entry { log_id: LogId::new(CommittedLeaderId::new(term, leader), index), payload: payload.clone() }).collect()
    }

    #[test]
    fn only_the_commit_index_and_purges_go_unsynced_when_nobody_waits() {
        let job = |change, notify| Job { change, append: 0, last: None, notify };
        let meta = || LogWrite::Meta(COMMITTED, Vec::new());
        assert!(!job(meta(), Notify::Nobody).needs_sync());
        assert!(!job(LogWrite::PurgeUpto(7, Vec::new()), Notify::Nobody).needs_sync());
        assert!(job(LogWrite::Append(vec![(1, Vec::new())]), Notify::Nobody).needs_sync(), "a leader's early append");
        assert!(job(LogWrite::TruncateFrom(3), Notify::Nobody).needs_sync());
        assert!(job(meta(), Notify::Waiter(oneshot::channel().0)).needs_sync(), "a saved vote is waited for");
    }

    #[test]
    fn after_a_failed_write_the_writer_writes_nothing_more() {
        let writes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let durability = Durability::new(None);
        let (jobs, queue) = mpsc::channel();
        let writer = std::thread::spawn({
            let (writes, durability) = (writes.clone(), durability.clone());
            let write = move |_: &mut dyn Iterator<Item = &LogWrite>, _| match writes.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
                0 => Err("No space left on device".to_string()),
                _ => Ok(()),
            };
            move || write_queued(write, Arc::default(), durability, queue)
        });
        let append = |index| {
            let (done, written) = oneshot::channel();
            let last = Some(LogId::new(CommittedLeaderId::new(2, 1), index));
            jobs.send(Job { change: LogWrite::Append(vec![(index, Vec::new())]), append: index, last, notify: Notify::Waiter(done) }).unwrap();
            written.blocking_recv().unwrap()
        };
        assert_eq!(append(7), Err("No space left on device".to_string()));
        assert_eq!(append(8), Err("No space left on device".to_string()), "the disk has room again, but entry 7 is not on it");
        assert_eq!(writes.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(durability.last(), None);
        drop(jobs);
        writer.join().unwrap();
    }

    #[tokio::test]
    async fn a_member_that_led_starts_again_as_a_follower_in_the_same_term() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogStore::new(LogDb::open(dir.path(), &MemberBudget::default().log).unwrap(), 1).unwrap();
        log.save_vote(&Vote::new_committed(3, 1)).await.unwrap();
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 1)), "its own vote in term 3, not its leadership");
        assert!(!log.may_replicate_before_sync(&entries(3, 1, 9, EntryPayload::Normal(Default::default()))));

        log.save_vote(&Vote::new_committed(4, 2)).await.unwrap();
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new_committed(4, 2)), "another member's leadership stands");
    }

    #[tokio::test]
    async fn the_commit_index_goes_to_disk_with_the_next_change_not_by_itself() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogStore::new(LogDb::open(dir.path(), &MemberBudget::default().log).unwrap(), 1).unwrap();
        let committed = Some(LogId::new(CommittedLeaderId::new(2, 1), 6));
        log.save_committed(committed).await.unwrap();
        log.save_committed(committed).await.unwrap();
        // Past `send`, which would take the commit along: once this is
        // written, so is everything queued before it.
        let (done, written) = oneshot::channel();
        let marker = LogWrite::Meta("marker", Vec::new());
        log.jobs.send(Job { change: marker, append: 0, last: None, notify: Notify::Waiter(done) }).unwrap();
        written.await.unwrap().unwrap();
        assert_eq!(log.read_committed().await.unwrap(), None, "the commit index did not wake the writer by itself");

        log.save_vote(&Vote::new_committed(2, 1)).await.unwrap();
        assert_eq!(log.read_committed().await.unwrap(), committed, "written before the vote, which was waited for");
        assert!(log.unsaved_commit.is_none());
    }

    #[tokio::test]
    async fn only_a_leaders_own_entries_after_its_synced_first_one_skip_the_wait_for_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogStore::new(LogDb::open(dir.path(), &MemberBudget::default().log).unwrap(), 1).unwrap();
        let normal = || EntryPayload::Normal(Default::default());
        assert!(!log.may_replicate_before_sync(&entries(2, 1, 5, normal())), "no vote yet");

        log.save_vote(&Vote::new(2, 1)).await.unwrap();
        assert!(!log.may_replicate_before_sync(&entries(2, 1, 5, normal())), "a candidate does not lead");

        log.save_vote(&Vote::new_committed(2, 1)).await.unwrap();
        log.durability.synced(LogId::new(CommittedLeaderId::new(1, 3), 4));
        assert!(!log.may_replicate_before_sync(&entries(2, 1, 5, normal())), "the term's first entry is not on disk");

        log.durability.synced(LogId::new(CommittedLeaderId::new(2, 1), 5));
        assert!(log.may_replicate_before_sync(&entries(2, 1, 6, normal())));
        let change = EntryPayload::Membership(Membership::new(vec![BTreeSet::from([1, 2])], None));
        assert!(!log.may_replicate_before_sync(&entries(2, 1, 6, change)), "a membership change waits for its fsync");

        log.save_vote(&Vote::new_committed(3, 2)).await.unwrap();
        assert!(!log.may_replicate_before_sync(&entries(3, 2, 6, normal())), "a follower's entries wait for their fsync");
        assert!(!log.may_replicate_before_sync(&entries(2, 1, 6, normal())), "nor do its own from a past term");
    }
}
