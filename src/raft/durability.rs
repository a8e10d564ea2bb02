//! How far this member's own log is on disk, and the two gates that keep an
//! entry from counting as committed anywhere before it is.
//!
//! A leader hands its new entries to the followers while its own fsync runs
//! (as etcd's leader does, raft thesis §10.2.1): the log store tells openraft
//! those appends are flushed at once. openraft may then count an entry as
//! committed on a quorum that includes the leader before the leader's copy is
//! on disk. The commit is only safe to act on once it is, so until then:
//! - this member's state machine does not apply the entry (no client answer,
//!   no watch event, no read index reached), and
//! - the commit index this member sends to followers stops at its own disk,
//!   so no follower applies the entry either.
//!
//! Once the leader's fsync completes, the entry is on the disks of a quorum,
//! which is what Raft's commit rule asks for.
//!
//! What the followers got early may be missing from the leader's log after a
//! crash, so a leader that restarts never leads its old term again
//! (`LogStore::read_vote`), and a leader whose log writer fails stops at once.

use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::Arc;

use openraft::{ErrorSubject, ErrorVerb, StorageError, StorageIOError};
use tokio::sync::{watch, Notify};

use super::{LogId, Raft};

#[derive(Clone, Default)]
struct OnDisk {
    /// The last entry of this member's log known to be on disk.
    last: Option<LogId>,
    /// Why the log writer stopped: acknowledged entries will never be durable.
    failed: Option<String>,
}

/// Every sync changes `on_disk`, and a change wakes every task watching it:
/// what waits for something rarer (the writer's failure, the disk reaching
/// an owed commit) is told apart, so a write does not wake it for nothing.
#[derive(Clone)]
pub struct Durability {
    on_disk: Arc<watch::Sender<OnDisk>>,
    /// Turns true when the writer fails.
    writer_failed: Arc<watch::Sender<bool>>,
    /// The highest commit index a follower was not sent because of the cap;
    /// 0 when none is owed.
    owed: Arc<AtomicU64>,
    /// Wakes `pay_owed_commits` once the disk reaches what is owed.
    owed_on_disk: Arc<Notify>,
}

impl Durability {
    /// `last`: the last entry of the log as opened (all of it on disk).
    pub fn new(last: Option<LogId>) -> Durability {
        Durability {
            on_disk: Arc::new(watch::channel(OnDisk { last, failed: None }).0),
            writer_failed: Arc::new(watch::channel(false).0),
            owed: Arc::default(),
            owed_on_disk: Arc::default(),
        }
    }

    pub fn last(&self) -> Option<LogId> {
        self.on_disk.borrow().last
    }

    /// The writer synced the log up to `last`.
    pub(super) fn synced(&self, last: LogId) {
        let later = self.on_disk.send_if_modified(|d| {
            let later = d.last.is_none_or(|known| known.index < last.index);
            if later {
                d.last = Some(last);
            }
            later
        });
        if !later {
            return;
        }
        // Pairs with the fence in `cap`: either this sees what `cap` owes,
        // or `cap` sees this sync and owes nothing.
        fence(Ordering::SeqCst);
        let owed = self.owed.load(Ordering::SeqCst);
        if owed != 0 && owed <= last.index {
            self.owed_on_disk.notify_one();
        }
    }

    /// A truncation removed every entry after `last`.
    pub(super) fn truncated_to(&self, last: Option<LogId>) {
        self.on_disk.send_modify(|d| d.last = last);
    }

    pub(super) fn failed(&self, error: &str) {
        self.on_disk.send_modify(|d| d.failed = Some(error.to_owned()));
        self.writer_failed.send_replace(true);
    }

    /// Waits until this member's log is on disk up to `index`.
    pub async fn reached(&self, index: u64) -> Result<(), StorageError<u64>> {
        let mut on_disk = self.on_disk.subscribe();
        let reached = on_disk.wait_for(|d| d.failed.is_some() || d.last.is_some_and(|l| l.index >= index)).await;
        let failed = match reached {
            Ok(d) => d.failed.clone(),
            Err(_) => Some("the log writer is gone".to_owned()),
        };
        match failed {
            None => Ok(()),
            Some(e) => Err(StorageIOError::new(ErrorSubject::Logs, ErrorVerb::Write, openraft::AnyError::error(e)).into()),
        }
    }

    /// Resolves with the reason once the log writer has failed.
    pub async fn failure(&self) -> String {
        if self.writer_failed.subscribe().wait_for(|failed| *failed).await.is_err() {
            // Unreachable while `self` holds the sender.
            std::future::pending::<()>().await;
        }
        self.on_disk.borrow().failed.clone().unwrap_or_default()
    }

    /// The commit index a follower may be told: `commit`, or this member's
    /// last entry on disk where that is earlier (both lie on this leader's
    /// log, so the index orders them).
    pub fn cap(&self, commit: Option<LogId>) -> Option<LogId> {
        let wanted = commit?;
        let covers = |on_disk: Option<LogId>| on_disk.is_some_and(|d| d.index >= wanted.index);
        if covers(self.last()) {
            return commit;
        }
        self.owed.fetch_max(wanted.index, Ordering::SeqCst);
        // Read again: a sync between the two reads may not have seen what is
        // owed (see `synced`).
        fence(Ordering::SeqCst);
        let on_disk = self.last();
        if covers(on_disk) {
            return commit;
        }
        on_disk
    }

    /// Sends the followers a heartbeat, which carries the commit index, each
    /// time the disk catches up with a commit index the cap held back:
    /// otherwise they would learn it only with the next write or heartbeat.
    pub async fn pay_owed_commits(&self, raft: Raft) {
        loop {
            self.owed_on_disk.notified().await;
            let last = self.last().map_or(0, |l| l.index);
            let owed = self.owed.load(Ordering::SeqCst);
            if owed == 0 || owed > last {
                continue;
            }
            // A cap after this load records itself again and is paid later.
            let _ = self.owed.compare_exchange(owed, 0, Ordering::AcqRel, Ordering::Acquire);
            if raft.trigger().heartbeat().await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;

    fn id(index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(2, 1), index)
    }

    #[tokio::test]
    async fn a_commit_is_capped_at_the_disk_until_the_disk_catches_up() {
        let durability = Durability::new(Some(id(4)));
        assert_eq!(durability.cap(Some(id(3))), Some(id(3)));
        assert_eq!(durability.cap(Some(id(6))), Some(id(4)), "entries 5 and 6 are not on this disk yet");
        assert_eq!(durability.owed.load(Ordering::Acquire), 6);
        assert_eq!(durability.cap(None), None);

        let waiting = tokio::spawn({
            let durability = durability.clone();
            async move { durability.reached(6).await }
        });
        tokio::task::yield_now().await;
        durability.synced(id(5));
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "entry 6 is not on disk");
        durability.synced(id(6));
        waiting.await.unwrap().unwrap();
        assert_eq!(durability.cap(Some(id(6))), Some(id(6)));

        durability.synced(id(3));
        assert_eq!(durability.last(), Some(id(6)), "a sync never moves the disk back");
        durability.truncated_to(Some(id(2)));
        assert_eq!(durability.cap(Some(id(6))), Some(id(2)));
    }

    /// Counts the wakes of futures polled by hand.
    struct Wakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_sync_wakes_neither_the_failure_watch_nor_the_payer_until_it_concerns_them() {
        use std::future::Future;
        use std::task::{Context, Poll, Waker};

        let durability = Durability::new(Some(id(4)));
        let wakes = Arc::new(Wakes(Default::default()));
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut failure = Box::pin(durability.failure());
        let mut owed_on_disk = Box::pin(durability.owed_on_disk.notified());
        assert!(failure.as_mut().poll(&mut cx).is_pending());
        assert!(owed_on_disk.as_mut().poll(&mut cx).is_pending());

        durability.synced(id(5));
        assert_eq!(durability.cap(Some(id(7))), Some(id(5)));
        durability.synced(id(6));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0, "nothing failed, and what is owed is not on disk yet");
        durability.synced(id(7));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "the owed commit is on disk");
        assert!(owed_on_disk.as_mut().poll(&mut cx).is_ready());

        durability.failed("disk full");
        assert!(matches!(failure.as_mut().poll(&mut cx), Poll::Ready(e) if e == "disk full"));
    }

    #[tokio::test]
    async fn a_failed_writer_fails_the_waiters() {
        let durability = Durability::new(None);
        let waiting = tokio::spawn({
            let durability = durability.clone();
            async move { durability.reached(1).await }
        });
        let failure = tokio::spawn({
            let durability = durability.clone();
            async move { durability.failure().await }
        });
        tokio::task::yield_now().await;
        assert!(!failure.is_finished(), "nothing failed yet");
        durability.failed("disk full");
        assert!(waiting.await.unwrap().is_err());
        assert_eq!(failure.await.unwrap(), "disk full");
    }
}
