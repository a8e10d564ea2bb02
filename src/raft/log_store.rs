//! openraft's log storage on `store::log::LogDb`, kept off openraft's async
//! tasks: an append lands in an in-memory tail that readers see at once and
//! returns; one writer thread writes every change queued behind it in one
//! synced RocksDB batch (group commit), reports those appends flushed and
//! drops them from the tail. A RocksDB write stall therefore delays
//! durability, never heartbeats.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{mpsc, Arc, Mutex};

use crate::metrics::METRICS;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, ErrorSubject, ErrorVerb, RaftLogReader, StorageError, StorageIOError, Vote};
use tokio::sync::oneshot;

use super::{decode, encode, LogId, TypeConfig};
use crate::store::log::{LogDb, LogWrite, PURGED};

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";

/// Appended entries not yet written, by index, each with the number of the
/// append that put it there. They always form one run of indexes: written
/// entries leave from the front, a truncation cuts the back.
type Tail = BTreeMap<u64, (u64, Entry<TypeConfig>)>;

/// Who hears that a queued change is durable.
enum Notify {
    Nobody,
    Raft(LogFlushed<TypeConfig>),
    Waiter(oneshot::Sender<Result<(), String>>),
}

struct Job {
    change: LogWrite,
    /// The append's number, to drop exactly its entries from the tail.
    append: u64,
    notify: Notify,
}

#[derive(Clone)]
pub struct LogStore {
    db: Arc<LogDb>,
    tail: Arc<Mutex<Tail>>,
    appends: u64,
    jobs: mpsc::Sender<Job>,
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

/// The writer thread: takes every job queued, writes them in one synced
/// batch, then tells each waiter.
fn write_queued(db: Arc<LogDb>, tail: Arc<Mutex<Tail>>, queue: mpsc::Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let mut jobs = vec![first];
        jobs.extend(queue.try_iter());
        let started = std::time::Instant::now();
        let result = db.write_synced(jobs.iter().map(|j| &j.change)).map_err(|e| e.to_string());
        METRICS.wal_fsync_seconds.observe(started.elapsed().as_secs_f64());
        if result.is_ok() {
            let mut tail = tail.lock().unwrap_or_else(|p| p.into_inner());
            for job in &jobs {
                if let LogWrite::Append(rows) = &job.change {
                    for (index, _) in rows {
                        if tail.get(index).is_some_and(|(append, _)| *append == job.append) {
                            tail.remove(index);
                        }
                    }
                }
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
    pub fn new(db: LogDb) -> LogStore {
        let db = Arc::new(db);
        let tail = Arc::new(Mutex::new(Tail::new()));
        let (jobs, queue) = mpsc::channel::<Job>();
        let (writer_db, writer_tail) = (db.clone(), tail.clone());
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || write_queued(writer_db, writer_tail, queue))
            .expect("spawning the log writer thread");
        LogStore { db, tail, appends: 0, jobs }
    }

    fn tail(&self) -> std::sync::MutexGuard<'_, Tail> {
        self.tail.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StorageError<u64>> {
        match self.db.get_meta(key).map_err(read_error)? {
            None => Ok(None),
            Some(bytes) => decode(&bytes).map(Some).map_err(read_error),
        }
    }

    fn queue(&self, change: LogWrite, append: u64, notify: Notify) -> Result<(), StorageError<u64>> {
        let job = Job { change, append, notify };
        self.jobs.send(job).map_err(|_| write_error(std::io::Error::other("the log writer thread is gone")))
    }

    /// Queues `change` and waits until it is durable.
    async fn write_durably(&self, change: LogWrite) -> Result<(), StorageError<u64>> {
        let (done, written) = oneshot::channel();
        self.queue(change, 0, Notify::Waiter(done))?;
        let result = written.await.map_err(|_| write_error(std::io::Error::other("the log writer thread is gone")))?;
        result.map_err(|e| write_error(std::io::Error::other(e)))
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
        {
            // The usual case, a leader replicating what it just appended:
            // all of it is still in the tail.
            let tail = self.tail();
            if tail.first_key_value().is_some_and(|(&first, _)| first <= from) {
                return Ok(tail.range(from..to).map(|(_, (_, e))| e.clone()).collect());
            }
        }
        // RocksDB first, then the tail: an entry leaves the tail only after
        // it was written, so none falls between the two reads.
        let db = self.db.clone();
        let rows = tokio::task::spawn_blocking(move || db.read(Bound::Included(from), Bound::Excluded(to)))
            .await
            .map_err(read_error)?
            .map_err(read_error)?;
        let mut entries = BTreeMap::new();
        for (index, bytes) in rows {
            entries.insert(index, decode::<Entry<TypeConfig>>(&bytes).map_err(read_error)?);
        }
        for (&index, (_, entry)) in self.tail().range(from..to) {
            entries.insert(index, entry.clone());
        }
        Ok(entries.into_values().collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<u64>> {
        let last_purged_log_id: Option<LogId> = self.meta(PURGED)?;
        let in_tail = self.tail().last_key_value().map(|(_, (_, e))| e.log_id);
        let last = match (in_tail, self.db.last().map_err(read_error)?) {
            (Some(id), _) => Some(id),
            (None, Some((_, bytes))) => Some(decode::<Entry<TypeConfig>>(&bytes).map_err(read_error)?.log_id),
            (None, None) => None,
        };
        Ok(LogState { last_purged_log_id, last_log_id: last.or(last_purged_log_id) })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        self.write_durably(LogWrite::Meta(VOTE, encode(vote))).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        self.meta(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError<u64>> {
        // Nobody waits: it only lets a restart re-apply sooner.
        self.queue(LogWrite::Meta(COMMITTED, encode(&committed)), 0, Notify::Nobody)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError<u64>> {
        Ok(self.meta::<Option<LogId>>(COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        self.appends += 1;
        let append = self.appends;
        let mut rows = Vec::new();
        {
            let mut tail = self.tail();
            for entry in entries {
                rows.push((entry.log_id.index, encode(&entry)));
                tail.insert(entry.log_id.index, (append, entry));
            }
        }
        self.queue(LogWrite::Append(rows), append, Notify::Raft(callback))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError<u64>> {
        self.tail().split_off(&log_id.index);
        // Waited for, so that no read sees the cut entries in RocksDB after
        // this returns.
        self.write_durably(LogWrite::TruncateFrom(log_id.index)).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError<u64>> {
        self.queue(LogWrite::PurgeUpto(log_id.index, encode(&log_id)), 0, Notify::Nobody)
    }
}
