//! `Consensus` owns this member's Raft instance and answers the two questions
//! the API asks: "commit this command" and "may I read locally now?". Both
//! work on any member: a follower forwards writes to the leader and asks the
//! leader for a read index.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::metrics::RaftMetrics;
use openraft::{Config, SnapshotPolicy};

use super::dial::DialError;
use super::network::{CallError, Method, Peers};
use super::proposer::Proposer;
use super::read_index::ReadIndexRounds;
use super::{LogStore, PeerNode, PeerRefusal, PeerService, Raft, StateMachine};
use crate::store::log::LogDb;
use crate::store::types::{Command, CommandResult, KvError};
use crate::store::Store;
use crate::lease::{LeaseQuery, LeaseStatus, Lessor};
use crate::watch::Hub;

pub struct RaftSettings {
    pub heartbeat_ms: u64,
    pub election_ms: u64,
    pub snapshot_count: u64,
    pub cluster_token: String,
}

pub struct Consensus {
    raft: Raft,
    proposer: Proposer,
    /// Read indexes this member answers as leader (for itself and for followers).
    leader_reads: ReadIndexRounds,
    /// Read indexes asked of the leader while this member follows.
    follower_reads: ReadIndexRounds,
    member_id: u64,
    peers: Peers,
    request_timeout: Duration,
    election_timeout: Duration,
    /// The leases; on the leader, the one that keeps their time.
    lessor: Arc<Lessor>,
}

/// How a failed attempt ends: try again (nothing was proposed), or give up.
enum Attempt<T> {
    Done(Result<T, KvError>),
    Retry,
}

impl Consensus {
    pub async fn start(
        member_id: u64,
        settings: &RaftSettings,
        log: LogDb,
        store: Arc<Store>,
        hub: Arc<Hub>,
        lessor: Arc<Lessor>,
        snapshot_file: PathBuf,
    ) -> anyhow::Result<Consensus> {
        let config = Config {
            cluster_name: settings.cluster_token.clone(),
            heartbeat_interval: settings.heartbeat_ms,
            // openraft 0.9 makes a follower wait a leader lease (election_timeout_max)
            // plus a random election timeout before campaigning. These bounds
            // give [1.5, 2) × --election-timeout, as etcd's randomized
            // [1, 2) × election ticks plus detection does.
            election_timeout_min: settings.election_ms / 2,
            election_timeout_max: settings.election_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(settings.snapshot_count),
            max_in_snapshot_log_to_keep: settings.snapshot_count.min(5000),
            max_payload_entries: 1024,
            // Sending a snapshot chunk and (for the last) installing the whole
            // state on the follower: openraft's 200 ms default fails and
            // restarts the transfer whenever the follower is busy.
            install_snapshot_timeout: 10_000,
            ..Default::default()
        };
        let config = Arc::new(config.validate()?);
        let peers = Peers::default();
        let raft = Raft::new(
            member_id,
            config,
            peers.clone(),
            LogStore::new(log),
            StateMachine::new(store, hub, lessor.clone(), snapshot_file),
        )
        .await?;
        // etcd's request timeout: 5 s plus two election timeouts.
        let request_timeout = Duration::from_millis(5000 + 2 * settings.election_ms);
        let proposer = Proposer::start(raft.clone());
        let leader_reads = ReadIndexRounds::as_leader(raft.clone());
        let follower_reads = ReadIndexRounds::from_leader(raft.clone(), peers.clone(), request_timeout);
        let election_timeout = Duration::from_millis(settings.election_ms);
        Ok(Consensus {
            raft,
            proposer,
            leader_reads,
            follower_reads,
            member_id,
            peers,
            request_timeout,
            election_timeout,
            lessor,
        })
    }

    /// Forms a new cluster from the initial members. Every member of a new
    /// static cluster does this with the same set, which openraft allows.
    pub async fn bootstrap(&self, members: BTreeMap<u64, PeerNode>) -> anyhow::Result<()> {
        if self.raft.is_initialized().await? {
            return Ok(());
        }
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(openraft::error::RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub fn peer_service(&self) -> PeerService {
        PeerService::new(self.raft.clone(), self.proposer.clone(), self.leader_reads.clone(), self.lessor.clone())
    }

    pub fn metrics(&self) -> RaftMetrics<u64, PeerNode> {
        self.raft.metrics().borrow().clone()
    }

    pub fn leader(&self) -> Option<u64> {
        self.raft.metrics().borrow().current_leader
    }

    /// Completes once this member has known no leader for `patience` (or
    /// Raft stopped): what ends etcd's require-leader watch streams.
    pub async fn leader_lost(&self, patience: Duration) {
        let mut metrics = self.raft.metrics();
        loop {
            if metrics.wait_for(|m| m.current_leader.is_none()).await.is_err() {
                return;
            }
            match tokio::time::timeout(patience, metrics.wait_for(|m| m.current_leader.is_some())).await {
                Ok(Ok(_)) => continue,
                Ok(Err(_)) | Err(_) => return,
            }
        }
    }

    pub fn election_timeout(&self) -> Duration {
        self.election_timeout
    }

    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    /// The members of the current configuration.
    pub fn members(&self) -> Vec<(u64, PeerNode)> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.membership_config.nodes().map(|(id, node)| (*id, node.clone())).collect()
    }

    fn leader_node(&self, leader: u64) -> Option<PeerNode> {
        node_of(&self.raft, leader)
    }

    /// Commits a command through the Raft log and returns the state machine's result.
    pub async fn write(&self, command: Command) -> Result<CommandResult, KvError> {
        self.with_leader(|leader, remaining| {
            let command = command.clone();
            async move {
                let reply = if leader == self.member_id {
                    // A leader cut off from its quorum does not step down in
                    // openraft 0.9: the deadline answers for it.
                    match tokio::time::timeout(remaining, self.proposer.propose(command)).await {
                        Ok(reply) => reply,
                        Err(_) => return Attempt::Done(Err(KvError::Timeout)),
                    }
                } else {
                    let Some(node) = self.leader_node(leader) else { return Attempt::Retry };
                    match self.peers.call(leader, &node, Some(remaining), Method::Forward, &command).await {
                        Ok(reply) => reply,
                        // Not even connected: nothing was proposed, so another try is safe.
                        Err(e) if never_sent(&e) => return Attempt::Retry,
                        Err(CallError::Transport(s)) if s.code() == tonic::Code::DeadlineExceeded => {
                            return Attempt::Done(Err(KvError::Timeout))
                        }
                        // It may or may not have been committed; the client decides.
                        Err(_) => return Attempt::Done(Err(KvError::LeaderChanged)),
                    }
                };
                match reply {
                    Ok(result) => Attempt::Done(Ok(result)),
                    // Refused before anything was proposed.
                    Err(PeerRefusal::NotLeader(_) | PeerRefusal::NoQuorum) => Attempt::Retry,
                    Err(PeerRefusal::Stopped) if leader == self.member_id => Attempt::Done(Err(KvError::Stopped)),
                    Err(PeerRefusal::Stopped) => Attempt::Retry,
                    Err(PeerRefusal::Failed(m)) => Attempt::Done(Err(KvError::Internal(m))),
                }
            }
        })
        .await
    }

    /// Asks the leader's lessor, which alone keeps lease time.
    pub async fn lease_query(&self, query: LeaseQuery) -> Result<LeaseStatus, KvError> {
        self.with_leader(|leader, remaining| async move {
            let answer = if leader == self.member_id {
                self.lessor.answer(query)
            } else {
                let Some(node) = self.leader_node(leader) else { return Attempt::Retry };
                match self.peers.call(leader, &node, Some(remaining), Method::Lease, &query).await {
                    Ok(answer) => answer,
                    Err(_) => return Attempt::Retry,
                }
            };
            match answer {
                // Not (yet) the leader's lessor: a new leader is taking over.
                Err(KvError::NoLeader) => Attempt::Retry,
                done => Attempt::Done(done),
            }
        })
        .await
    }

    /// Returns once this member's state machine has applied everything that
    /// was committed when the call began (ReadIndex): a local read after it is
    /// linearizable.
    pub async fn read_barrier(&self) -> Result<(), KvError> {
        self.with_leader(|leader, remaining| async move {
            let rounds = if leader == self.member_id { &self.leader_reads } else { &self.follower_reads };
            let read_index = match tokio::time::timeout(remaining, rounds.read_index()).await {
                Ok(index) => index,
                Err(_) => return Attempt::Done(Err(KvError::Timeout)),
            };
            match read_index {
                Ok(index) => {
                    let waited =
                        self.raft.wait(Some(remaining)).applied_index_at_least(Some(index), "read index").await;
                    Attempt::Done(waited.map(|_| ()).map_err(|_| KvError::Timeout))
                }
                Err(PeerRefusal::Stopped) if leader == self.member_id => Attempt::Done(Err(KvError::Stopped)),
                Err(PeerRefusal::Failed(m)) => Attempt::Done(Err(KvError::Internal(m))),
                Err(_) => Attempt::Retry,
            }
        })
        .await
    }

    /// Runs `attempt` against the current leader until it is done or the
    /// request timeout passes, waiting for a leader when there is none.
    async fn with_leader<T, F, Fut>(&self, mut attempt: F) -> Result<T, KvError>
    where
        F: FnMut(u64, Duration) -> Fut,
        Fut: std::future::Future<Output = Attempt<T>>,
    {
        let deadline = Instant::now() + self.request_timeout;
        let mut metrics = self.raft.metrics();
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let leader = metrics.borrow_and_update().current_leader;
            if let Some(leader) = leader {
                if let Attempt::Done(result) = attempt(leader, remaining).await {
                    return result;
                }
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(if self.leader().is_none() { KvError::NoLeader } else { KvError::Timeout });
            }
            // Wake on any Raft state change, or poll again soon.
            let _ = tokio::time::timeout(remaining.min(Duration::from_millis(100)), metrics.changed()).await;
        }
    }

    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }
}

/// The peer address of member `id` in the current configuration.
pub(super) fn node_of(raft: &Raft, id: u64) -> Option<PeerNode> {
    raft.metrics().borrow().membership_config.membership().get_node(&id).cloned()
}

/// True when a peer call failed before the request could reach the peer:
/// the connection itself could not be made.
fn never_sent(e: &CallError) -> bool {
    let CallError::Transport(status) = e else { return false };
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(status);
    while let Some(err) = source {
        if err.downcast_ref::<DialError>().is_some() {
            return true;
        }
        source = err.source();
    }
    false
}
