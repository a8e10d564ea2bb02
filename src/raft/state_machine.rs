//! openraft's state machine on `store::Store`. Every entry is applied in one
//! atomic RocksDB write together with the applied log id and membership;
//! snapshots are files (`snapshots`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, StorageError, StorageIOError};

use super::durability::Durability;
use super::proposer::Proposal;
use super::snapshots::{applied_state, Meta, SnapshotData, Snapshots};
use super::{decode, encode, LogId, StoredMembership, TypeConfig};
use crate::metrics::METRICS;
use crate::store::types::{Command, CommandResult, KvError};
use crate::store::Store;
use crate::lease::Lessor;
use crate::watch::Hub;

pub struct StateMachine {
    store: Arc<Store>,
    /// Hears every new revision's changes, for watchers.
    hub: Arc<Hub>,
    /// Mirrors the store's leases.
    lessor: Arc<Lessor>,
    snapshots: Arc<Snapshots>,
    /// This member's log on disk: an entry is applied once it is there.
    durability: Durability,
}

fn sm_error(verb: ErrorVerb, e: impl ToString) -> StorageError<u64> {
    StorageIOError::new(ErrorSubject::StateMachine, verb, openraft::AnyError::error(e.to_string())).into()
}

/// (applied log id, membership) as recorded with every applied entry.
type RaftState = (Option<LogId>, StoredMembership);

/// etcd warns of (and counts) an apply slower than this.
const SLOW_APPLY: Duration = Duration::from_millis(100);

impl StateMachine {
    pub fn new(
        store: Arc<Store>,
        hub: Arc<Hub>,
        lessor: Arc<Lessor>,
        snapshots: Arc<Snapshots>,
        durability: Durability,
    ) -> StateMachine {
        StateMachine { store, hub, lessor, snapshots, durability }
    }

    /// Applies a run of commands (`Store::apply_run`; none: just moves the
    /// applied state), hands the revisions they made to the watchers and
    /// their lease changes to the lessor.
    fn apply_run(
        &self,
        run: &[&Command],
        raft_state: &[u8],
        progress: Option<&[u8]>,
    ) -> Result<Vec<CommandResult>, StorageError<u64>> {
        let started = Instant::now();
        let applied = self.store.apply_run(run, raft_state, progress).map_err(|e| sm_error(ErrorVerb::Write, e))?;
        let took = started.elapsed();
        if took > SLOW_APPLY {
            METRICS.slow_applies.inc();
            tracing::warn!(took = ?took, expected_duration = ?SLOW_APPLY, commands = run.len(), "apply request took too long");
        }
        let mut results = Vec::with_capacity(applied.len());
        for (&command, (result, changes)) in run.iter().zip(applied) {
            if let Some(changes) = changes {
                self.hub.publish(changes);
            }
            if result.outcome.is_ok() {
                match command.unwrapped() {
                    Command::LeaseGrant { id, ttl } => self.lessor.granted(*id, *ttl),
                    Command::LeaseRevoke { id } => self.lessor.revoked(*id),
                    Command::LeaseCheckpoint(remaining) => self.lessor.checkpointed(remaining),
                    _ => {}
                }
            }
            results.push(result);
        }
        Ok(results)
    }

    fn share(&self) -> StateMachine {
        StateMachine {
            store: self.store.clone(),
            hub: self.hub.clone(),
            lessor: self.lessor.clone(),
            snapshots: self.snapshots.clone(),
            durability: self.durability.clone(),
        }
    }

    fn raft_state(&self) -> Result<RaftState, StorageError<u64>> {
        match self.store.raft_applied().map_err(|e| sm_error(ErrorVerb::Read, e))? {
            None => Ok((None, StoredMembership::default())),
            Some(bytes) => decode(&bytes).map_err(|e| sm_error(ErrorVerb::Read, e)),
        }
    }
}

/// An entry's commands in the runs they are applied in: the longest
/// stretches of commands that may share one write, and every other command
/// alone.
fn runs(commands: &[Command]) -> Vec<Vec<&Command>> {
    let mut runs: Vec<Vec<&Command>> = Vec::new();
    for command in commands {
        match runs.last_mut() {
            Some(run) if command.joins_run() && run[0].joins_run() => run.push(command),
            _ => runs.push(vec![command]),
        }
    }
    runs
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let sm = self.share();
        tokio::task::spawn_blocking(move || {
            let (meta, data) = sm.snapshots.build(&sm.store).map_err(|e| sm_error(ErrorVerb::Write, e))?;
            Ok(Snapshot { meta, snapshot: Box::new(data) })
        })
        .await
        .map_err(|e| sm_error(ErrorVerb::Write, e))?
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<RaftState, StorageError<u64>> {
        self.raft_state()
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<CommandResult>>, StorageError<u64>>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        if let Some(last) = entries.last() {
            self.durability.reached(last.log_id.index).await?;
        }
        let (applied, mut membership) = self.raft_state()?;
        let sm = self.share();
        // One hop to a blocking thread per batch: RocksDB work stays off the async workers.
        tokio::task::spawn_blocking(move || {
            let mut applied_state = encode(&(applied, &membership));
            // Every entry clears the marker when it finishes, so only the first
            // entry applied after a crash can find one: read it once per batch.
            let interrupted = interrupted_entry(&sm.store).map_err(|e| sm_error(ErrorVerb::Read, e))?;
            let mut results = Vec::with_capacity(entries.len());
            for entry in entries {
                let log_id = entry.log_id;
                let proposal = match entry.payload {
                    EntryPayload::Normal(proposal) => proposal,
                    EntryPayload::Membership(m) => {
                        let removed: Vec<u64> =
                            membership.nodes().map(|(id, _)| *id).filter(|id| m.get_node(id).is_none()).collect();
                        if !removed.is_empty() {
                            sm.store.record_removed(&removed).map_err(|e| sm_error(ErrorVerb::Write, e))?;
                        }
                        membership = StoredMembership::new(Some(log_id), m);
                        Proposal::default()
                    }
                    EntryPayload::Blank => Proposal::default(),
                };
                let commands = proposal.commands();
                let done_state = encode(&(Some(log_id), &membership));
                if commands.is_empty() {
                    sm.apply_run(&[], &done_state, None)?;
                }
                // Until its last run is written the entry counts as not
                // applied, and `progress` says how far it got, so a crash
                // mid-entry neither loses nor repeats a command.
                let resume_at = interrupted.filter(|(id, _)| *id == log_id).map_or(0, |(_, done)| done);
                let mut outcomes: Vec<CommandResult> = (0..resume_at.min(commands.len()))
                    .map(|_| CommandResult {
                        revision: sm.store.revision(),
                        outcome: Err(KvError::Internal("applied before a restart".into())),
                    })
                    .collect();
                for run in runs(&commands[outcomes.len()..]) {
                    let done = outcomes.len() + run.len();
                    let run_results = if done == commands.len() {
                        sm.apply_run(&run, &done_state, None)?
                    } else {
                        sm.apply_run(&run, &applied_state, Some(&encode(&(log_id, done))))?
                    };
                    outcomes.extend(run_results);
                }
                results.push(proposal.answer(outcomes));
                applied_state = done_state;
            }
            Ok(results)
        })
        .await
        .map_err(|e| sm_error(ErrorVerb::Write, e))?
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.share()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>, StorageError<u64>> {
        self.snapshots.create_temp().map(Box::new).map_err(|e| sm_error(ErrorVerb::Write, e))
    }

    async fn install_snapshot(&mut self, meta: &Meta, snapshot: Box<SnapshotData>) -> Result<(), StorageError<u64>> {
        let sm = self.share();
        let meta = meta.clone();
        tokio::task::spawn_blocking(move || {
            // The file becomes the current snapshot first: a crash during the
            // install below is finished from it on restart.
            let data = sm.snapshots.publish(&meta, *snapshot, true).map_err(|e| sm_error(ErrorVerb::Write, e))?;
            sm.store.install_backup(&data.path, &applied_state(&meta)).map_err(|e| sm_error(ErrorVerb::Write, e))?;
            sm.hub.reset(sm.store.revision());
            sm.lessor.reload(sm.store.leases().map_err(|e| sm_error(ErrorVerb::Read, e))?);
            let bytes = data.file.metadata().map_or(0, |m| m.len());
            tracing::info!(snapshot = %meta.snapshot_id, bytes, "installed snapshot from the leader");
            Ok(())
        })
        .await
        .map_err(|e| sm_error(ErrorVerb::Write, e))?
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        let current = self.snapshots.current().map_err(|e| sm_error(ErrorVerb::Read, e))?;
        Ok(current.map(|(meta, data)| Snapshot { meta, snapshot: Box::new(data) }))
    }
}

/// The entry a crash cut short, and how many of its commands were applied.
fn interrupted_entry(store: &Store) -> Result<Option<(LogId, usize)>, KvError> {
    store.entry_progress()?.map(|bytes| decode::<(LogId, usize)>(&bytes).map_err(|e| KvError::Internal(format!("corrupt record: entry progress: {e}")))).transpose()
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, Entry};

    use super::*;
    use crate::store::types::{Op, PutArgs, RangeArgs};

    fn put(key: &str) -> Command {
        Command::Write(Op::Put(PutArgs { key: key.into(), value: b"v".to_vec(), ..Default::default() }))
    }

    /// A state machine on a new store whose log is on disk up to `log_id`.
    fn state_machine(dir: &std::path::Path, log_id: LogId) -> (Arc<Store>, Arc<Hub>, StateMachine) {
        let store = Arc::new(Store::open(&dir.join("db"), &crate::store::memory::MemberBudget::default().state).unwrap());
        let hub = Arc::new(Hub::new(store.revision(), 1 << 20));
        let lessor = Arc::new(Lessor::new(Vec::new()));
        let snapshots = Arc::new(Snapshots::open(dir.join("raft")).unwrap());
        let sm = StateMachine::new(store.clone(), hub.clone(), lessor, snapshots, Durability::new(Some(log_id)));
        (store, hub, sm)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn entry_cut_short_by_a_crash_resumes_without_repeating() {
        let dir = tempfile::tempdir().unwrap();
        let log_id = LogId::new(CommittedLeaderId::new(1, 1), 5);
        let (store, _, mut sm) = state_machine(dir.path(), log_id);
        let commands = vec![put("a"), put("b"), put("c")];

        // What a crash right after the entry's first command leaves on disk.
        let (applied, membership) = sm.raft_state().unwrap();
        let before = encode(&(applied, &membership));
        store.apply(&commands[0], &before, Some(&encode(&(log_id, 1usize)))).unwrap();
        assert_eq!(sm.raft_state().unwrap().0, None, "the entry does not count as applied yet");

        let results = sm.apply([Entry { log_id, payload: EntryPayload::Normal(commands.into()) }]).await.unwrap();
        assert_eq!(store.revision(), 4, "a, b, c applied once each, at revisions 2, 3, 4");
        assert_eq!(results[0][2].revision, 4);
        assert_eq!(sm.raft_state().unwrap().0, Some(log_id));
        assert!(store.entry_progress().unwrap().is_none());
        let (a, _) = store.range(&RangeArgs { key: b"a".to_vec(), ..Default::default() }).unwrap();
        assert_eq!((a.kvs[0].version, a.kvs[0].mod_revision), (1, 2));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_member_that_proposed_an_entry_answers_its_callers_as_it_applies_it() {
        let dir = tempfile::tempdir().unwrap();
        let first = LogId::new(CommittedLeaderId::new(1, 1), 5);
        let second = LogId::new(CommittedLeaderId::new(1, 1), 6);
        let (_, _, mut sm) = state_machine(dir.path(), second);
        let (replies, answers): (Vec<_>, Vec<_>) = (0..2).map(|_| tokio::sync::oneshot::channel()).unzip();
        let (proposal, callers) = Proposal::answering(vec![put("a"), put("b")], replies);
        let results = sm.apply([Entry { log_id: first, payload: EntryPayload::Normal(proposal) }]).await.unwrap();
        assert_eq!(results, [Vec::new()], "nothing is left for openraft to hand on");
        assert!(callers.answer(Vec::new()).is_err(), "the callers are answered once");
        let mut revisions = Vec::new();
        for answer in answers {
            revisions.push(answer.await.expect("answered").expect("applied").revision);
        }
        assert_eq!(revisions, [2, 3]);

        // The same entry read back from disk has no callers: openraft hands its results on.
        let read_back: Proposal = decode(&encode(&vec![put("c")])).unwrap();
        let results = sm.apply([Entry { log_id: second, payload: EntryPayload::Normal(read_back) }]).await.unwrap();
        assert_eq!(results[0].iter().map(|r| r.revision).collect::<Vec<_>>(), [4]);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn writes_share_a_run_and_other_commands_apply_alone() {
        let dir = tempfile::tempdir().unwrap();
        let log_id = LogId::new(CommittedLeaderId::new(1, 1), 5);
        let (_, hub, mut sm) = state_machine(dir.path(), log_id);
        let with_lease = Command::Write(Op::Put(PutArgs { key: b"c".to_vec(), lease: 7, ..Default::default() }));
        let at_revision = Command::Write(Op::Range(RangeArgs { key: b"a".to_vec(), revision: 2, ..Default::default() }));
        let commands = vec![put("a"), put("b"), Command::LeaseGrant { id: 7, ttl: 60 }, with_lease, put("d"), at_revision];
        let grouped: Vec<usize> = runs(&commands).iter().map(Vec::len).collect();
        assert_eq!(grouped, [2, 1, 2, 1]);

        let results = sm.apply([Entry { log_id, payload: EntryPayload::Normal(commands.into()) }]).await.unwrap();
        let revisions: Vec<i64> = results[0].iter().map(|r| r.revision).collect();
        assert_eq!(revisions, [2, 3, 3, 4, 5, 5]);
        assert!(results[0].iter().all(|r| r.outcome.is_ok()), "the put saw the lease granted before it: {results:?}");
        assert_eq!(hub.revision(), 5, "each revision went to the watchers");
        assert_eq!(hub.recent(2, 5, usize::MAX).map(|(r, covered)| (r.len(), covered)), Some((4, 5)));
        assert_eq!(sm.raft_state().unwrap().0, Some(log_id));
    }
}
