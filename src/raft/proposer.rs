//! Group commit for client writes. openraft 0.9 appends and fsyncs the log
//! once per entry, waiting for each flush, so one entry per request would cost
//! one fsync per request. Instead, commands that arrive while the previous
//! entries are being committed are gathered into one entry (a proposal) and
//! share its fsync.
//!
//! The leader's state machine answers an entry's callers itself once it has
//! applied the entry (`Proposal::answer`). openraft would hand the results
//! from the state machine's task to its core, to the task awaiting
//! `client_write`, and only then to the callers: three thread hand-offs on
//! the way back of every write.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::stream::{FuturesUnordered, StreamExt};
use serde::{Deserialize, Serialize};
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

pub(super) type Reply = oneshot::Sender<Result<CommandResult, PeerRefusal>>;

struct Pending {
    command: Command,
    reply: Reply,
}

/// One entry's commands; on the member that proposed it, also whom to answer.
/// Only the commands are serialized, as a plain list: the entry's bytes in
/// the log and between members are what they were before callers existed.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Proposal {
    commands: Arc<[Command]>,
    #[serde(skip)]
    callers: Option<Arc<Callers>>,
}

/// The callers of an entry's commands, in order, answered once: by the
/// state machine, or by the proposer if the entry was applied from a copy
/// read back from disk, or failed.
#[derive(Debug)]
pub(super) struct Callers(Mutex<Option<Vec<Reply>>>);

impl Callers {
    fn take(&self) -> Option<Vec<Reply>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Gives each caller its command's result; hands the results back if
    /// the callers were answered already.
    pub(super) fn answer(&self, results: Vec<CommandResult>) -> Result<(), Vec<CommandResult>> {
        let Some(replies) = self.take() else { return Err(results) };
        for (reply, result) in replies.into_iter().zip(results) {
            let _ = reply.send(Ok(result));
        }
        Ok(())
    }

    fn refuse(&self, refusal: PeerRefusal) {
        for reply in self.take().unwrap_or_default() {
            let _ = reply.send(Err(refusal.clone()));
        }
    }
}

impl From<Vec<Command>> for Proposal {
    fn from(commands: Vec<Command>) -> Self {
        Proposal { commands: commands.into(), callers: None }
    }
}

impl Proposal {
    /// A proposal whose results go to `replies`, one per command; and its
    /// callers, to answer if the state machine did not.
    pub(super) fn answering(commands: Vec<Command>, replies: Vec<Reply>) -> (Proposal, Arc<Callers>) {
        let callers = Arc::new(Callers(Mutex::new(Some(replies))));
        (Proposal { commands: commands.into(), callers: Some(callers.clone()) }, callers)
    }

    pub fn commands(&self) -> &[Command] {
        &self.commands
    }

    /// Hands the applied commands' results to their callers, if this member
    /// proposed the entry and they are still unanswered; returns what is
    /// left for openraft to pass on.
    pub fn answer(&self, results: Vec<CommandResult>) -> Vec<CommandResult> {
        match &self.callers {
            Some(callers) => callers.answer(results).err().unwrap_or_default(),
            None => results,
        }
    }
}

/// Proposes one entry of `batch`'s commands; `slot` is held until it is
/// committed or has failed.
async fn commit(raft: Raft, batch: Vec<Pending>, slot: OwnedSemaphorePermit) {
    let (commands, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.command, p.reply)).unzip();
    let (proposal, callers) = Proposal::answering(commands, replies);
    // Usually the state machine has answered the callers already.
    match raft.client_write(proposal).await {
        Ok(written) => {
            let _ = callers.answer(written.data);
        }
        Err(e) => callers.refuse(PeerRefusal::from_raft_error(e)),
    }
    drop(slot);
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
            // The entries being committed are driven here rather than each
            // in a task of its own: a spawn per entry would cost a thread
            // wake-up per entry for nothing.
            let mut committing = FuturesUnordered::new();
            loop {
                let first = tokio::select! {
                    Some(()) = committing.next() => continue,
                    first = incoming.recv() => match first {
                        Some(first) => first,
                        None => break,
                    },
                };
                let slot = loop {
                    tokio::select! {
                        slot = slots.clone().acquire_owned() => break slot,
                        Some(()) = committing.next() => {}
                    }
                };
                let Ok(slot) = slot else { return };
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
                if !batch.is_empty() {
                    committing.push(commit(raft.clone(), batch, slot));
                }
            }
            while committing.next().await.is_some() {}
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

#[cfg(test)]
mod tests {
    use super::super::{decode, encode};
    use super::*;
    use crate::store::types::{Op, PutArgs};

    #[test]
    fn a_proposal_is_stored_as_its_list_of_commands() {
        let commands: Vec<Command> = ["a", "b"]
            .map(|k| Command::Write(Op::Put(PutArgs { key: k.into(), value: b"v".to_vec(), ..Default::default() })))
            .into();
        let (proposal, _callers) = Proposal::answering(commands.clone(), Vec::new());
        assert_eq!(encode(&proposal), encode(&commands), "logs written before proposals had callers still read");
        let read_back: Proposal = decode(&encode(&commands)).unwrap();
        assert_eq!(read_back.commands(), commands.as_slice());
        assert!(read_back.callers.is_none(), "a copy from disk or another member answers no one");
    }
}
