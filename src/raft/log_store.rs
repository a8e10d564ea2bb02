//! openraft's log storage on `store::log::LogDb`, with group commit: appends
//! return at once and a dedicated thread fsyncs once for every append queued
//! behind it, then reports them all flushed.

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::{mpsc, Arc};

use crate::metrics::METRICS;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, ErrorSubject, ErrorVerb, RaftLogReader, StorageError, StorageIOError, Vote};

use super::{decode, encode, LogId, TypeConfig};
use crate::store::log::LogDb;

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "purged";

#[derive(Clone)]
pub struct LogStore {
    db: Arc<LogDb>,
    flushes: mpsc::Sender<LogFlushed<TypeConfig>>,
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

impl LogStore {
    pub fn new(db: LogDb) -> LogStore {
        let db = Arc::new(db);
        let (flushes, queue) = mpsc::channel::<LogFlushed<TypeConfig>>();
        let syncer = db.clone();
        std::thread::Builder::new()
            .name("raft-log-sync".into())
            .spawn(move || {
                while let Ok(first) = queue.recv() {
                    let mut waiting = vec![first];
                    waiting.extend(queue.try_iter());
                    let started = std::time::Instant::now();
                    let result = syncer.sync().map_err(|e| std::io::Error::other(e.to_string()));
                    METRICS.wal_fsync_seconds.observe(started.elapsed().as_secs_f64());
                    for callback in waiting {
                        callback.log_io_completed(result.as_ref().map(|_| ()).map_err(|e| std::io::Error::other(e.to_string())));
                    }
                }
            })
            .expect("spawning the log sync thread");
        LogStore { db, flushes }
    }

    fn meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StorageError<u64>> {
        match self.db.get_meta(key).map_err(read_error)? {
            None => Ok(None),
            Some(bytes) => decode(&bytes).map(Some).map_err(read_error),
        }
    }

    /// Runs blocking RocksDB work (a synced write) off the async workers.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&LogDb) -> Result<T, crate::store::log::Error> + Send + 'static,
    ) -> Result<T, StorageError<u64>> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || work(&db)).await.map_err(write_error)?.map_err(write_error)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<u64>> {
        let rows = self.db.read(range.start_bound().cloned(), range.end_bound().cloned()).map_err(read_error)?;
        rows.iter().map(|(_, bytes)| decode(bytes).map_err(read_error)).collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<u64>> {
        let last_purged_log_id: Option<LogId> = self.meta(PURGED)?;
        let last = match self.db.last().map_err(read_error)? {
            Some((_, bytes)) => Some(decode::<Entry<TypeConfig>>(&bytes).map_err(read_error)?.log_id),
            None => None,
        };
        Ok(LogState { last_purged_log_id, last_log_id: last.or(last_purged_log_id) })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        let bytes = encode(vote);
        self.blocking(move |db| {
            db.put_meta(VOTE, &bytes)?;
            db.sync()
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        self.meta(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError<u64>> {
        // Not synced: it only lets a restart re-apply sooner; the next log fsync covers it.
        self.db.put_meta(COMMITTED, &encode(&committed)).map_err(write_error)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError<u64>> {
        Ok(self.meta::<Option<LogId>>(COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let rows = entries.into_iter().map(|e| (e.log_id.index, encode(&e)));
        self.db.append(rows).map_err(write_error)?;
        self.flushes.send(callback).map_err(|_| write_error(std::io::Error::other("log sync thread is gone")))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError<u64>> {
        self.db.truncate_from(log_id.index).map_err(write_error)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError<u64>> {
        self.db.purge_upto(log_id.index, &encode(&log_id)).map_err(write_error)
    }
}
