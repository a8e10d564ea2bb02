//! Group commit for client writes. openraft 0.9 appends and fsyncs the log
//! once per entry, waiting for each flush, so one entry per request would cost
//! one fsync per request. Instead, commands that arrive while the previous
//! entries are being committed are gathered into one entry (a proposal) and
//! share its fsync.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use super::{PeerRefusal, Raft};
use crate::store::types::{Command, CommandResult};

/// At most this many commands, or this many payload bytes (plus one
/// command), go in one entry: an entry must replicate within a heartbeat.
const MAX_COMMANDS: usize = 1024;
const MAX_BYTES: usize = 512 * 1024;
/// Entries being committed at once: one flushing while the one before applies.
const IN_FLIGHT: usize = 2;
/// Commands waiting for an entry beyond this are refused with etcd's "too
/// many requests" (its limit is 5,000 entries committed but not applied):
/// a leader that cannot keep up says so instead of queueing without end.
const MAX_WAITING: usize = 10 * MAX_COMMANDS;

struct Pending {
    command: Command,
    reply: oneshot::Sender<Result<CommandResult, PeerRefusal>>,
}

#[derive(Clone)]
pub struct Proposer {
    queue: mpsc::UnboundedSender<Pending>,
    /// Commands in `queue`, not yet in an entry.
    waiting: Arc<AtomicUsize>,
    /// One permit per entry being committed.
    slots: Arc<Semaphore>,
}

impl Proposer {
    pub fn start(raft: Raft) -> Proposer {
        let (queue, mut incoming) = mpsc::unbounded_channel::<Pending>();
        let slots = Arc::new(Semaphore::new(IN_FLIGHT));
        let waiting = Arc::new(AtomicUsize::new(0));
        let proposer = Proposer { queue, waiting: waiting.clone(), slots: slots.clone() };
        tokio::spawn(async move {
            while let Some(first) = incoming.recv().await {
                let Ok(slot) = slots.clone().acquire_owned().await else { return };
                // Everything that queued up while waiting for a slot joins
                // this entry, but for commands whose callers have gone: no
                // one waits for them, so they are not proposed at all.
                let mut bytes = first.command.payload_bytes();
                let mut batch = vec![first];
                while batch.len() < MAX_COMMANDS && bytes < MAX_BYTES {
                    match incoming.try_recv() {
                        Ok(p) => {
                            bytes += p.command.payload_bytes();
                            batch.push(p);
                        }
                        Err(_) => break,
                    }
                }
                waiting.fetch_sub(batch.len(), Ordering::AcqRel);
                batch.retain(|p| !p.reply.is_closed());
                if batch.is_empty() {
                    continue;
                }
                let raft = raft.clone();
                tokio::spawn(async move {
                    let (commands, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.command, p.reply)).unzip();
                    match raft.client_write(commands).await {
                        Ok(written) => {
                            for (reply, result) in replies.into_iter().zip(written.data) {
                                let _ = reply.send(Ok(result));
                            }
                        }
                        Err(e) => {
                            let refusal = PeerRefusal::from_raft_error(e);
                            for reply in replies {
                                let _ = reply.send(Err(refusal.clone()));
                            }
                        }
                    }
                    drop(slot);
                });
            }
        });
        proposer
    }

    /// Holds back new entries until the returned permit is dropped, once the
    /// entries already proposed are committed (or have failed).
    pub async fn pause(&self) -> OwnedSemaphorePermit {
        self.slots.clone().acquire_many_owned(IN_FLIGHT as u32).await.expect("the proposer never closes its slots")
    }

    /// Commits one command on this member, which must be the leader.
    pub async fn propose(&self, command: Command) -> Result<CommandResult, PeerRefusal> {
        let stopped = || PeerRefusal::Stopped;
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= MAX_WAITING {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(PeerRefusal::TooManyRequests);
        }
        let (reply, answer) = oneshot::channel();
        self.queue.send(Pending { command, reply }).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}
