//! `Consensus` owns this member's Raft instance and answers the two questions
//! the API asks: "commit this command" and "may I read locally now?". Both
//! work on any member: a follower forwards writes to the leader and asks the
//! leader for a read index.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::metrics::{RaftMetrics, RaftServerMetrics};
use openraft::{Config, SnapshotPolicy};

use super::durability::Durability;
use super::credentials::Credentials;
use super::dial::{DialError, Dialer};
use super::members::{ChangeFailure, ClusterInfo, MemberChange, Members, MembersSettings};
use super::network::{CallError, Method, Peers, RaftPeers};
use super::proposer::Proposer;
use super::read_index::ReadIndexRounds;
use super::snapshots::Snapshots;
use super::transfer;
use super::peer_service::Vouching;
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
    /// etcd's --strict-reconfig-check: refuse membership changes that could cost the quorum.
    pub strict_reconfig_check: bool,
    pub max_learners: usize,
    /// How this member reaches the others (TLS for https peer URLs).
    pub dialer: Dialer,
}

pub struct Consensus {
    raft: Raft,
    proposer: Proposer,
    /// Read indexes this member answers as leader (for itself and for followers).
    leader_reads: ReadIndexRounds,
    /// Read indexes asked of the leader while this member follows.
    follower_reads: ReadIndexRounds,
    member_id: u64,
    cluster_id: u64,
    peers: Peers,
    vouching: Arc<std::sync::Mutex<Vouching>>,
    request_timeout: Duration,
    election_timeout: Duration,
    /// The leases; on the leader, the one that keeps their time.
    lessor: Arc<Lessor>,
    members: Members,
    store: Arc<Store>,
    /// How far this member's log is on disk, and whether its writer failed.
    durability: Durability,
}

/// How a failed attempt ends: try again (nothing was proposed), or give up.
enum Attempt<T> {
    Done(Result<T, KvError>),
    Retry,
}

/// The leader's answer to a lease query. A renewal needs a quorum round that
/// confirmed this member's leadership and began less than half an election
/// timeout (`patience`) ago, or a new round: a leader cut off from its
/// majority must not keep alive a lease the majority will expire and whose
/// lock it will hand to someone else (etcd gets this from CheckQuorum). Any
/// later leader was elected after the quorum acknowledged that round, and it
/// gives every lease a whole election timeout more than its TTL
/// (Lessor::promote): the TTL a renewal promises now ends before the new
/// leader could expire the lease. So renewals share one round per window
/// instead of one per round trip, which spares the followers a heartbeat per
/// batch of keepalives. A round that finds no quorum within `patience` fails
/// the renewal.
pub(super) async fn answer_lease_query(
    lessor: &Lessor,
    leader_reads: &ReadIndexRounds,
    patience: Duration,
    query: LeaseQuery,
) -> Result<LeaseStatus, KvError> {
    if matches!(query, LeaseQuery::Renew(_)) && !leader_reads.confirmed_within(patience / 2) {
        match tokio::time::timeout(patience, leader_reads.read_index()).await {
            Ok(Ok(_)) => {}
            // Another member leads now: the caller asks it.
            Ok(Err(PeerRefusal::NotLeader(_))) => return Err(KvError::NoLeader),
            Ok(Err(PeerRefusal::Stopped)) => return Err(KvError::Stopped),
            Ok(Err(_)) | Err(_) => return Err(KvError::Timeout),
        }
    }
    lessor.answer(query)
}

impl Consensus {
    pub async fn start(
        (member_id, cluster_id): (u64, u64),
        settings: &RaftSettings,
        log: LogDb,
        store: Arc<Store>,
        hub: Arc<Hub>,
        lessor: Arc<Lessor>,
        snapshots: Arc<Snapshots>,
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
            // How long a follower may take no snapshot data before the
            // transfer is given up (installing it has no limit).
            install_snapshot_timeout: 10_000,
            ..Default::default()
        };
        let config = Arc::new(config.validate()?);
        let peers = Peers::new(Credentials::of_member(member_id, cluster_id), settings.dialer.clone());
        let log = LogStore::new(log, member_id)?;
        let durability = log.durability();
        let raft = Raft::new(
            member_id,
            config,
            RaftPeers {
                peers: peers.clone(),
                durability: durability.clone(),
                retry: Duration::from_millis(settings.heartbeat_ms),
            },
            log,
            StateMachine::new(store.clone(), hub, lessor.clone(), snapshots, durability.clone()),
        )
        .await?;
        tokio::spawn({
            let (raft, durability) = (raft.clone(), durability.clone());
            async move { durability.pay_owed_commits(raft).await }
        });
        // etcd's request timeout: 5 s plus two election timeouts.
        let request_timeout = Duration::from_millis(5000 + 2 * settings.election_ms);
        let proposer = Proposer::start(raft.clone());
        let leader_reads = ReadIndexRounds::as_leader(raft.clone());
        let follower_reads = ReadIndexRounds::from_leader(raft.clone(), peers.clone(), request_timeout);
        let election_timeout = Duration::from_millis(settings.election_ms);
        let members = Members::new(
            raft.clone(),
            proposer.clone(),
            peers.clone(),
            store.clone(),
            MembersSettings {
                member_id,
                cluster_id,
                cluster_token: settings.cluster_token.clone(),
                strict_reconfig_check: settings.strict_reconfig_check,
                max_learners: settings.max_learners,
            },
        );
        Ok(Consensus {
            raft,
            proposer,
            leader_reads,
            follower_reads,
            member_id,
            cluster_id,
            peers,
            vouching: Arc::default(),
            request_timeout,
            election_timeout,
            lessor,
            members,
            store,
            durability,
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

    /// `stopping` turns true when the member stops.
    pub fn peer_service(&self, stopping: tokio::sync::watch::Receiver<bool>) -> PeerService {
        PeerService {
            raft: self.raft.clone(),
            proposer: self.proposer.clone(),
            reads: self.leader_reads.clone(),
            lessor: self.lessor.clone(),
            members: self.members.clone(),
            store: self.store.clone(),
            peers: self.peers.clone(),
            vouching: self.vouching.clone(),
            cluster_id: self.cluster_id,
            stopping,
        }
    }

    pub fn metrics(&self) -> RaftMetrics<u64, PeerNode> {
        self.raft.metrics().borrow().clone()
    }

    /// The other members of the cluster as Raft knows them now.
    pub fn peer_ids(&self) -> Vec<u64> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.membership_config.membership().nodes().map(|(id, _)| *id).filter(|id| *id != self.member_id).collect()
    }

    /// The other members once Raft has reported the membership it loaded
    /// from the log: right after start its metrics still hold none. A member
    /// that joins with an empty log knows none until `patience` runs out.
    pub async fn loaded_peer_ids(&self, patience: Duration) -> Vec<u64> {
        let _ = self
            .raft
            .wait(Some(patience))
            .metrics(|m| m.membership_config.membership().nodes().next().is_some(), "membership loaded")
            .await;
        self.peer_ids()
    }

    /// Member `id`'s HashKV at `revision`: (hash, revision, compact revision).
    pub async fn peer_hash_kv(&self, id: u64, revision: i64) -> Result<(u32, i64, i64), String> {
        let node = node_of(&self.raft, id).ok_or_else(|| format!("member {id:x} is not in the cluster"))?;
        let answer: Result<(u32, i64, i64), String> =
            self.peers.call(id, &node, Some(self.request_timeout), Method::HashKv, &revision).await.map_err(|e| e.to_string())?;
        answer
    }

    /// Resolves with the error once Raft has stopped on a fatal one, or
    /// this member's log writer failed. Raft hears of a failed write of a
    /// leader's own entries only when it next applies (they were reported
    /// flushed early): a leader that cannot write its log must stop at once,
    /// not keep the others from electing one that can.
    pub async fn fatal(&self) -> String {
        let stopped = async {
            // Raft's server metrics end when it stops, and its full metrics
            // then say why. (Those are sent on every turn of Raft's loop, many
            // times per entry: waiting on them would wake this task as often.)
            let mut server = self.raft.server_metrics();
            while server.changed().await.is_ok() {}
            match &self.raft.metrics().borrow().running_state {
                Err(fatal) => fatal.to_string(),
                Ok(()) => "raft is gone".to_string(),
            }
        };
        tokio::select! {
            fatal = stopped => fatal,
            failed = self.durability.failure() => format!("writing the raft log: {failed}"),
        }
    }

    /// Raft's state, leader and membership, which change rarely.
    pub fn server_metrics_watch(&self) -> tokio::sync::watch::Receiver<RaftServerMetrics<u64, PeerNode>> {
        self.raft.server_metrics()
    }

    pub fn leader(&self) -> Option<u64> {
        self.raft.metrics().borrow().current_leader
    }

    /// Completes once this member has known no leader for `patience` (or
    /// Raft stopped): what ends etcd's require-leader watch streams.
    pub async fn leader_lost(&self, patience: Duration) {
        // Server metrics change with the leader; the full metrics change many
        // times per entry, and every watch stream would wake with them.
        let mut metrics = self.raft.server_metrics();
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

    /// False for a learner (added with `--learner`, or not yet caught up).
    pub fn is_voter(&self) -> bool {
        self.raft.metrics().borrow().membership_config.membership().voter_ids().any(|id| id == self.member_id)
    }

    pub fn election_timeout(&self) -> Duration {
        self.election_timeout
    }

    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    /// The members of the current configuration, as the Cluster API shows them.
    pub async fn cluster(&self) -> Result<ClusterInfo, KvError> {
        self.members.view().await
    }

    /// Adds, removes, updates or promotes a member (on the leader, wherever
    /// the request arrives); returns the id of the member it concerns.
    pub async fn change_members(&self, change: MemberChange) -> Result<u64, KvError> {
        self.with_leader(|leader, remaining| {
            let change = change.clone();
            async move {
                let run_here = || self.members.change(change.clone());
                let outcome = match self.on_leader(leader, remaining, Method::Reconfigure, &change, run_here).await {
                    Ok(outcome) => outcome,
                    Err(ended) => return ended,
                };
                match outcome {
                    Ok(id) => Attempt::Done(Ok(id)),
                    Err(ChangeFailure::Rejected(e)) => Attempt::Done(Err(e)),
                    Err(ChangeFailure::Refused(PeerRefusal::Failed(m))) => Attempt::Done(Err(KvError::Internal(m))),
                    Err(ChangeFailure::Refused(PeerRefusal::Stopped)) if leader == self.member_id => {
                        Attempt::Done(Err(KvError::Stopped))
                    }
                    Err(ChangeFailure::Refused(_)) => {
                        // e.g. the previous change is still being committed.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Attempt::Retry
                    }
                }
            }
        })
        .await
    }

    /// On the leader, makes caught-up new members voters (see `Members`).
    pub async fn promote_caught_up(&self) {
        self.members.promote_caught_up().await
    }

    /// Completes once this member learns that the cluster removed it: from
    /// its own applied membership, or from a peer that refused its vote.
    pub async fn removed(&self) {
        let mut refused = self.peers.removed_signal();
        // The server metrics change with the membership, not with every entry.
        let mut server = self.raft.server_metrics();
        let mut checked = None;
        loop {
            if *refused.borrow_and_update() {
                return;
            }
            let membership = server.borrow_and_update().membership_config.log_id().clone();
            if membership.is_some() && membership != checked {
                // The state machine records removals when it applies the change.
                let mut data = self.raft.data_metrics();
                let applied = tokio::select! {
                    applied = data.wait_for(|d| d.last_applied >= membership) => applied.is_ok(),
                    _ = refused.changed() => continue,
                };
                if !applied {
                    // Raft has stopped: that is not a removal (`fatal` says why).
                    std::future::pending::<()>().await;
                }
                checked = membership;
                if super::known_removed(&self.store, self.member_id).await {
                    return;
                }
            }
            let changed = tokio::select! {
                changed = refused.changed() => changed,
                changed = server.changed() => changed,
            };
            if changed.is_err() {
                // Raft has stopped: that is not a removal (`fatal` says why).
                std::future::pending::<()>().await;
            }
        }
    }

    fn leader_node(&self, leader: u64) -> Option<PeerNode> {
        node_of(&self.raft, leader)
    }

    /// Runs `run_here` when this member is the leader, or hands `request` to
    /// the leader as `method`; either way within `remaining`. A failure that
    /// ends the attempt comes back as that ending.
    async fn on_leader<Req, Reply, T, Fut>(
        &self,
        leader: u64,
        remaining: Duration,
        method: Method,
        request: &Req,
        run_here: impl FnOnce() -> Fut,
    ) -> Result<Reply, Attempt<T>>
    where
        Req: serde::Serialize,
        Reply: serde::de::DeserializeOwned,
        Fut: std::future::Future<Output = Reply>,
    {
        if leader == self.member_id {
            // A leader cut off from its quorum does not step down in
            // openraft 0.9: the deadline answers for it.
            return tokio::time::timeout(remaining, run_here()).await.map_err(|_| Attempt::Done(Err(KvError::Timeout)));
        }
        let Some(node) = self.leader_node(leader) else { return Err(Attempt::Retry) };
        // Boxed: a peer call's future is large, and every layer a leader's
        // own write or read passes on its way up would otherwise copy it.
        match Box::pin(self.peers.call(leader, &node, Some(remaining), method, request)).await {
            Ok(reply) => Ok(reply),
            // Not even connected: nothing was done, so another try is safe.
            Err(e) if never_sent(&e) => Err(Attempt::Retry),
            Err(CallError::Transport(s)) if s.code() == tonic::Code::DeadlineExceeded => {
                Err(Attempt::Done(Err(KvError::Timeout)))
            }
            // It may or may not have been done; the client decides.
            Err(_) => Err(Attempt::Done(Err(KvError::LeaderChanged))),
        }
    }

    /// Commits a command through the Raft log and returns the state machine's result.
    pub async fn write(&self, command: Command) -> Result<CommandResult, KvError> {
        let command = &command;
        self.with_leader(|leader, remaining| async move {
            let run_here = || self.proposer.propose(command.clone());
            let reply = match self.on_leader(leader, remaining, Method::Forward, command, run_here).await {
                Ok(reply) => reply,
                Err(ended) => return ended,
            };
            match reply {
                Ok(result) => Attempt::Done(Ok(result)),
                // Refused before anything was proposed.
                Err(PeerRefusal::NotLeader(_) | PeerRefusal::NoQuorum) => Attempt::Retry,
                Err(PeerRefusal::Stopped) if leader == self.member_id => Attempt::Done(Err(KvError::Stopped)),
                Err(PeerRefusal::Stopped) => Attempt::Retry,
                Err(PeerRefusal::Failed(m)) => Attempt::Done(Err(KvError::Internal(m))),
                Err(PeerRefusal::TooManyRequests) => Attempt::Done(Err(KvError::TooManyRequests)),
            }
        })
        .await
    }

    /// Asks the leader's lessor, which alone keeps lease time.
    pub async fn lease_query(&self, query: LeaseQuery) -> Result<LeaseStatus, KvError> {
        self.with_leader(|leader, remaining| async move {
            let answer = if leader == self.member_id {
                answer_lease_query(&self.lessor, &self.leader_reads, self.election_timeout, query).await
            } else {
                let Some(node) = self.leader_node(leader) else { return Attempt::Retry };
                // Boxed, as in `on_leader`: the leader's own keepalives pass through here.
                match Box::pin(self.peers.call(leader, &node, Some(remaining), Method::Lease, &query)).await {
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
                    // Usually applied already. The data metrics, not openraft's
                    // `wait`, which copies all of its metrics at every check.
                    let mut data = self.raft.data_metrics();
                    let applied = data.wait_for(|d| d.last_applied.map_or(0, |a| a.index) >= index);
                    let applied = tokio::time::timeout(remaining, applied).await.is_ok_and(|a| a.is_ok());
                    Attempt::Done(if applied { Ok(()) } else { Err(KvError::Timeout) })
                }
                Err(PeerRefusal::Stopped) if leader == self.member_id => Attempt::Done(Err(KvError::Stopped)),
                Err(PeerRefusal::Failed(m)) => Attempt::Done(Err(KvError::Internal(m))),
                Err(PeerRefusal::TooManyRequests) => Attempt::Done(Err(KvError::TooManyRequests)),
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

    /// etcd's MoveLeader: on the leader, hands leadership to voter `target`.
    pub async fn move_leader(&self, target: u64) -> Result<(), KvError> {
        let (hold, patience) = (self.election_timeout, self.request_timeout);
        transfer::transfer_leadership(&self.raft, &self.proposer, &self.peers, target, hold, patience).await
    }

    /// A stopping leader hands over to the most caught-up voter, as etcd
    /// does, so that its going costs the cluster no election timeout.
    pub async fn hand_over_leadership(&self) {
        if self.leader() != Some(self.member_id) {
            return;
        }
        let Some(successor) = transfer::successor(&self.raft, &self.peers) else {
            tracing::info!("skipped leadership transfer: no other voting member answers");
            return;
        };
        let started = Instant::now();
        let patience = 2 * self.election_timeout;
        match transfer::transfer_leadership(&self.raft, &self.proposer, &self.peers, successor, patience, patience).await {
            Ok(()) => tracing::info!(
                to = format!("{successor:x}"),
                took = ?started.elapsed(),
                "leadership transferred before stopping"
            ),
            Err(e) => tracing::warn!(to = format!("{successor:x}"), error = %e, "leadership transfer before stopping failed"),
        }
    }

    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }
}

/// How far member `id`'s log is known to match the leader's, as the
/// leader's metrics tell (`None` elsewhere, or before it answered).
pub(super) fn matched_index(m: &RaftMetrics<u64, PeerNode>, id: u64) -> Option<u64> {
    m.replication.as_ref()?.get(&id)?.as_ref().map(|l| l.index)
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
