//! Coalesced ReadIndex: concurrent linearizable reads share one quorum round
//! instead of each paying for its own. A read joins the next round that starts
//! after it arrived, never one already under way, so the index it gets is at
//! least the commit index at its arrival: that is what makes it linearizable.
//! The rounds also remember when the latest successful one began: on the
//! leader, a quorum acknowledged its leadership after that instant.

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::consensus::node_of;
use super::network::{Method, Peers};
use super::{PeerRefusal, Raft};

pub type ReadIndex = Result<u64, PeerRefusal>;

/// Reads waiting for a round beyond this are refused ("too many requests"):
/// while rounds stall (no quorum), waiters must not pile up without end.
const MAX_WAITING: usize = 10_240;

#[derive(Clone)]
pub struct ReadIndexRounds {
    waiting: mpsc::UnboundedSender<oneshot::Sender<ReadIndex>>,
    /// Readers in `waiting`, not yet in a round.
    queued: Arc<AtomicUsize>,
    /// When the latest successful round began: microseconds after `epoch`, plus one (0: none yet).
    confirmed: Arc<AtomicU64>,
    epoch: Instant,
}

impl ReadIndexRounds {
    /// Starts the rounds; `fetch` obtains one read index (a quorum round on
    /// the leader, or a request to the leader).
    pub fn start<F, Fut>(fetch: F) -> ReadIndexRounds
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = ReadIndex> + Send,
    {
        let (waiting, mut arrivals) = mpsc::unbounded_channel::<oneshot::Sender<ReadIndex>>();
        let queued = Arc::new(AtomicUsize::new(0));
        let taken = queued.clone();
        let (confirmed, epoch) = (Arc::new(AtomicU64::new(0)), Instant::now());
        let confirm = confirmed.clone();
        tokio::spawn(async move {
            while let Some(first) = arrivals.recv().await {
                let mut round = vec![first];
                round.extend(std::iter::from_fn(|| arrivals.try_recv().ok()));
                taken.fetch_sub(round.len(), Ordering::AcqRel);
                // Readers that gave up need no round.
                round.retain(|reader| !reader.is_closed());
                if round.is_empty() {
                    continue;
                }
                let began = micros_since(epoch) + 1;
                let index = fetch().await;
                if index.is_ok() {
                    confirm.fetch_max(began, Ordering::AcqRel);
                }
                for reader in round {
                    let _ = reader.send(index.clone());
                }
            }
        });
        ReadIndexRounds { waiting, queued, confirmed, epoch }
    }

    /// Rounds answered by this member as leader: one quorum check each.
    pub fn as_leader(raft: Raft) -> ReadIndexRounds {
        ReadIndexRounds::start(move || {
            let raft = raft.clone();
            async move {
                let (read_log_id, _applied) = raft.get_read_log_id().await.map_err(PeerRefusal::from_raft_error)?;
                Ok(read_log_id.map_or(0, |id| id.index))
            }
        })
    }

    /// Rounds asked of the current leader by a follower: one request each.
    pub fn from_leader(raft: Raft, peers: Peers, timeout: Duration) -> ReadIndexRounds {
        ReadIndexRounds::start(move || {
            let (raft, peers) = (raft.clone(), peers.clone());
            async move {
                let leader = raft.metrics().borrow().current_leader.ok_or(PeerRefusal::NotLeader(None))?;
                let node = node_of(&raft, leader).ok_or(PeerRefusal::NotLeader(Some(leader)))?;
                peers
                    .call(leader, &node, Some(timeout), Method::ReadIndex, &())
                    .await
                    // Reads change nothing: a failed call may be retried.
                    .unwrap_or(Err(PeerRefusal::NoQuorum))
            }
        })
    }

    pub async fn read_index(&self) -> ReadIndex {
        if self.queued.fetch_add(1, Ordering::AcqRel) >= MAX_WAITING {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(PeerRefusal::TooManyRequests);
        }
        let (reply, answer) = oneshot::channel();
        self.waiting.send(reply).map_err(|_| PeerRefusal::Stopped)?;
        answer.await.map_err(|_| PeerRefusal::Stopped)?
    }

    /// Whether a round that succeeded began less than `window` ago.
    pub fn confirmed_within(&self, window: Duration) -> bool {
        let began = self.confirmed.load(Ordering::Acquire);
        began != 0 && micros_since(self.epoch) + 1 < began + window.as_micros() as u64
    }
}

fn micros_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_micros() as u64
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_read_never_joins_a_round_already_under_way() {
        // Each round answers with the number of rounds started before it.
        let started = Arc::new(AtomicU64::new(0));
        let rounds = {
            let started = started.clone();
            ReadIndexRounds::start(move || {
                let index = started.fetch_add(1, Ordering::SeqCst);
                async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok(index)
                }
            })
        };
        let first = tokio::spawn({
            let rounds = rounds.clone();
            async move { rounds.read_index().await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        // Round 0 is under way; these arrive during it and must share round 1.
        let late: Vec<_> = (0..5)
            .map(|_| {
                let rounds = rounds.clone();
                tokio::spawn(async move { rounds.read_index().await })
            })
            .collect();
        assert_eq!(first.await.unwrap().unwrap(), 0);
        for r in late {
            assert_eq!(r.await.unwrap().unwrap(), 1);
        }
        assert_eq!(started.load(Ordering::SeqCst), 2, "the late readers shared one round");
    }

    #[tokio::test]
    async fn a_successful_round_confirms_for_a_window_from_its_start() {
        const ROUND: Duration = Duration::from_millis(100);
        let quorum = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let rounds = {
            let quorum = quorum.clone();
            ReadIndexRounds::start(move || {
                let found = quorum.load(Ordering::SeqCst);
                async move {
                    tokio::time::sleep(ROUND).await;
                    if found { Ok(1) } else { Err(PeerRefusal::NoQuorum) }
                }
            })
        };
        assert!(!rounds.confirmed_within(Duration::from_secs(10)), "no round yet");
        rounds.read_index().await.unwrap();
        assert!(rounds.confirmed_within(Duration::from_secs(10)));
        assert!(!rounds.confirmed_within(ROUND - Duration::from_millis(10)), "the window counts from the round's start");
        quorum.store(false, Ordering::SeqCst);
        assert!(rounds.read_index().await.is_err());
        assert!(!rounds.confirmed_within(ROUND + ROUND / 2), "a failed round confirms nothing");
        assert!(rounds.confirmed_within(Duration::from_secs(10)), "the last success still counts");
    }

    #[tokio::test]
    async fn readers_beyond_the_limit_are_refused_while_a_round_stalls() {
        let rounds = ReadIndexRounds::start(|| std::future::pending::<ReadIndex>());
        let read = || {
            let rounds = rounds.clone();
            tokio::spawn(async move { rounds.read_index().await })
        };
        // The first reader starts a round that never ends; the rest wait for the next.
        let mut waiting = vec![read()];
        tokio::time::sleep(Duration::from_millis(50)).await;
        waiting.extend((0..MAX_WAITING).map(|_| read()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(matches!(rounds.read_index().await, Err(PeerRefusal::TooManyRequests)));
        assert!(waiting.iter().all(|w| !w.is_finished()), "the waiting readers still wait");
    }
}
