//! Runtime reconfiguration, as etcd's Cluster service offers it, on openraft
//! membership changes. The leader runs every change; followers forward them.
//!
//! A member added as a voter is one at once, as in etcd, except when the
//! cluster has a single voter: etcd then needs the new member for every
//! commit from the moment it is added, so writes stop until it runs. Here it
//! joins as a Raft learner instead and the leader promotes it once it has
//! caught up (`promote_caught_up`); the Cluster API reports it as the voter
//! it is about to be.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::ChangeMembers;
use serde::{Deserialize, Serialize};

use super::consensus::matched_index;
use super::credentials::Credentials;
use super::dial::Dialer;
use super::network::{Method, Peers};
use super::proposer::Proposer;
use super::{PeerNode, PeerRefusal, Raft};
use crate::bootstrap::member_id;
use crate::store::types::{Command, KvError, MemberInfo};
use crate::store::Store;

/// What `member add/remove/update/promote` asks for.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum MemberChange {
    Add { peer_urls: Vec<String>, learner: bool },
    Remove { id: u64 },
    Update { id: u64, peer_urls: Vec<String> },
    Promote { id: u64 },
}

/// Why the leader did not make a change: refused as Raft refuses (not the
/// leader, no quorum: worth another try elsewhere), or rejected as etcd
/// rejects the request.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ChangeFailure {
    Refused(PeerRefusal),
    Rejected(KvError),
}

/// A member as the Cluster API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    pub id: u64,
    /// Empty until the member has started and published itself.
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

/// The cluster as one member knows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub cluster_id: u64,
    pub members: Vec<MemberView>,
}

/// etcd's HealthInterval: a member counts as connected once it has answered
/// without a break for this long.
const HEALTH_INTERVAL: Duration = Duration::from_secs(5);

/// A learner within this many entries of the leader's log may be promoted
/// (besides etcd's rule that it holds 90% of the leader's log).
const PROMOTABLE_LAG: u64 = 1000;

#[derive(Clone)]
pub struct Members {
    raft: Raft,
    proposer: Proposer,
    peers: Peers,
    store: Arc<Store>,
    settings: Arc<MembersSettings>,
}

pub struct MembersSettings {
    pub member_id: u64,
    pub cluster_id: u64,
    pub cluster_token: String,
    pub strict_reconfig_check: bool,
    pub max_learners: usize,
}

/// The Raft membership as one snapshot (every node, and which are voters),
/// with what the store knows of the members.
struct Current {
    nodes: BTreeMap<u64, PeerNode>,
    voters: BTreeSet<u64>,
    /// What each started member published (name, client URLs).
    published: Vec<MemberInfo>,
    /// Learners added as voters, to be promoted once caught up.
    pending: Vec<u64>,
}

impl Current {
    fn is_voter(&self, id: u64) -> bool {
        self.voters.contains(&id)
    }
}

fn rejected<T>(e: KvError) -> Result<T, ChangeFailure> {
    Err(ChangeFailure::Rejected(e))
}

/// Peer URLs as etcd accepts them in `member add/update`: http(s) with a host and port.
fn valid_peer_urls(urls: &[String]) -> bool {
    !urls.is_empty()
        && urls.iter().all(|u| {
            url::Url::parse(u).is_ok_and(|p| {
                matches!(p.scheme(), "http" | "https") && p.host_str().is_some_and(|h| !h.is_empty()) && p.port().is_some()
            })
        })
}

impl Members {
    pub fn new(raft: Raft, proposer: Proposer, peers: Peers, store: Arc<Store>, settings: MembersSettings) -> Members {
        Members { raft, proposer, peers, store, settings: Arc::new(settings) }
    }

    /// The membership now, with the store's records read on a blocking thread.
    async fn current(&self) -> Result<Current, KvError> {
        let (nodes, voters) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            let membership = m.membership_config.membership();
            let nodes: BTreeMap<u64, PeerNode> = membership.nodes().map(|(id, n)| (*id, n.clone())).collect();
            (nodes, membership.voter_ids().collect::<BTreeSet<u64>>())
        };
        let store = self.store.clone();
        let has_learners = nodes.len() > voters.len();
        let (published, pending) = tokio::task::spawn_blocking(move || {
            Ok::<_, KvError>((store.members()?, if has_learners { store.pending_voters()? } else { Vec::new() }))
        })
        .await
        .map_err(|e| KvError::Internal(e.to_string()))??;
        Ok(Current { nodes, voters, published, pending })
    }

    /// Every member with the name and client URLs it published; a learner
    /// that waits to become a voter is shown as the voter it will be.
    pub async fn view(&self) -> Result<ClusterInfo, KvError> {
        Ok(self.view_of(&self.current().await?))
    }

    fn view_of(&self, current: &Current) -> ClusterInfo {
        let members = current
            .nodes
            .iter()
            .map(|(id, node)| {
                let record = current.published.iter().find(|m| m.id == *id);
                MemberView {
                    id: *id,
                    name: record.map(|m| m.name.clone()).unwrap_or_default(),
                    peer_urls: node.peer_urls.clone(),
                    client_urls: record.map(|m| m.client_urls.clone()).unwrap_or_default(),
                    is_learner: !current.is_voter(*id) && !current.pending.contains(id),
                }
            })
            .collect();
        ClusterInfo { cluster_id: self.settings.cluster_id, members }
    }

    /// Runs a change on this member, which must be the leader.
    pub async fn change(&self, change: MemberChange) -> Result<u64, ChangeFailure> {
        let leader = self.raft.metrics().borrow().current_leader;
        if leader != Some(self.settings.member_id) {
            return Err(ChangeFailure::Refused(PeerRefusal::NotLeader(leader)));
        }
        let current = self.current().await.map_err(|e| ChangeFailure::Refused(PeerRefusal::Failed(e.to_string())))?;
        match change {
            MemberChange::Add { peer_urls, learner } => self.add(&current, peer_urls, learner).await,
            MemberChange::Remove { id } => self.remove(&current, id).await,
            MemberChange::Update { id, peer_urls } => self.update(&current, id, peer_urls).await,
            MemberChange::Promote { id } => self.promote(&current, id).await,
        }
    }

    async fn add(&self, current: &Current, peer_urls: Vec<String>, learner: bool) -> Result<u64, ChangeFailure> {
        self.check_new_urls(current, None, &peer_urls)?;
        if learner {
            let learners = self.view_of(current).members.iter().filter(|m| m.is_learner).count();
            if learners >= self.settings.max_learners {
                return rejected(KvError::TooManyLearners);
            }
        } else if self.settings.strict_reconfig_check {
            // etcd: adding a voter must leave enough started members for a quorum.
            let started = self.started_voters(current, None);
            let members = current.voters.len() + 1;
            if !(started == 1 && members == 2) && started < members / 2 + 1 {
                return rejected(KvError::NotEnoughStartedMembers);
            }
            if !self.connected_to_all(current) {
                return rejected(KvError::Unhealthy);
            }
        }
        // etcd mixes the time in, so a member removed and added again gets a new id.
        let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let id = member_id(&peer_urls, &format!("{}{nanos}", self.settings.cluster_token));
        let node = PeerNode { name: String::new(), peer_urls };
        if !learner && current.voters.len() >= 2 {
            // The voters there already make a quorum of the new configuration.
            let change = ChangeMembers::AddVoters(BTreeMap::from([(id, node)]));
            self.raft.change_membership(change, true).await.map_err(change_error)?;
        } else {
            if !learner {
                self.proposer.propose(Command::MarkPendingVoter { id }).await.map_err(ChangeFailure::Refused)?;
            }
            self.raft.add_learner(id, node, false).await.map_err(change_error)?;
        }
        tracing::info!(member_id = format!("{id:x}"), learner, "added member");
        Ok(id)
    }

    async fn remove(&self, current: &Current, id: u64) -> Result<u64, ChangeFailure> {
        if !current.nodes.contains_key(&id) {
            return rejected(KvError::MemberNotFound);
        }
        let change = if current.is_voter(id) {
            if self.settings.strict_reconfig_check {
                self.check_voter_removal(current, id)?;
            }
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        self.raft.change_membership(change, false).await.map_err(change_error)?;
        tracing::info!(member_id = format!("{id:x}"), "removed member");
        Ok(id)
    }

    /// etcd's mayRemoveMember: the voters left must still make a quorum of
    /// started, connected members.
    fn check_voter_removal(&self, current: &Current, id: u64) -> Result<(), ChangeFailure> {
        let left = current.voters.len() - 1;
        if self.started_voters(current, Some(id)) < left / 2 + 1 {
            return rejected(KvError::NotEnoughStartedMembers);
        }
        // A member that is down is not part of the active quorum.
        if id != self.settings.member_id && self.peers.active_since(id).is_none() {
            return Ok(());
        }
        let active = current.voters.iter().filter(|v| self.is_connected(**v)).count();
        if active - 1 < 1 + (current.voters.len() - 1) / 2 {
            return rejected(KvError::Unhealthy);
        }
        Ok(())
    }

    async fn update(&self, current: &Current, id: u64, peer_urls: Vec<String>) -> Result<u64, ChangeFailure> {
        let Some(node) = current.nodes.get(&id) else { return rejected(KvError::MemberNotFound) };
        self.check_new_urls(current, Some(id), &peer_urls)?;
        let node = PeerNode { name: node.name.clone(), peer_urls };
        self.raft.change_membership(ChangeMembers::SetNodes(BTreeMap::from([(id, node)])), true).await.map_err(change_error)?;
        tracing::info!(member_id = format!("{id:x}"), "updated member peer URLs");
        Ok(id)
    }

    async fn promote(&self, current: &Current, id: u64) -> Result<u64, ChangeFailure> {
        if !current.nodes.contains_key(&id) {
            return rejected(KvError::MemberNotFound);
        }
        if current.is_voter(id) {
            return rejected(KvError::MemberNotLearner);
        }
        if !self.caught_up(id) {
            return rejected(KvError::LearnerNotReady);
        }
        if self.settings.strict_reconfig_check {
            // The learner counts as started and as a member of the new quorum.
            let started = self.started_voters(current, None) + 1;
            let members = current.voters.len() + 1;
            if started < members / 2 + 1 {
                return rejected(KvError::NotEnoughStartedMembers);
            }
        }
        self.raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), true).await.map_err(change_error)?;
        tracing::info!(member_id = format!("{id:x}"), "promoted learner to voter");
        Ok(id)
    }

    /// On the leader: makes every learner that was added as a voter one, once
    /// it has caught up. Cheap when there is nothing to do.
    pub async fn promote_caught_up(&self) {
        let worth_a_look = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            let membership = m.membership_config.membership();
            m.current_leader == Some(self.settings.member_id) && membership.nodes().count() > membership.voter_ids().count()
        };
        if !worth_a_look {
            return;
        }
        let Ok(current) = self.current().await else { return };
        for &id in &current.pending {
            if current.nodes.contains_key(&id) && !current.is_voter(id) && self.caught_up(id) {
                match self.raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), true).await {
                    Ok(_) => tracing::info!(member_id = format!("{id:x}"), "new member caught up; it is a voter now"),
                    Err(e) => tracing::debug!(member_id = format!("{id:x}"), error = %e, "promoting a new member; will retry"),
                }
            }
        }
    }

    /// etcd's isLearnerReady (the learner holds 90% of the leader's log),
    /// and no more than `PROMOTABLE_LAG` entries behind.
    fn caught_up(&self, id: u64) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let leader_last = m.last_log_index.unwrap_or(0);
        let matched = matched_index(&m, id).unwrap_or(0);
        matched * 10 >= leader_last * 9 && leader_last.saturating_sub(matched) <= PROMOTABLE_LAG
    }

    /// New peer URLs must be valid and not in use by another member.
    fn check_new_urls(&self, current: &Current, updating: Option<u64>, peer_urls: &[String]) -> Result<(), ChangeFailure> {
        if !valid_peer_urls(peer_urls) {
            return rejected(KvError::BadPeerUrls);
        }
        let taken = current
            .nodes
            .iter()
            .filter(|(id, _)| Some(**id) != updating)
            .any(|(_, node)| node.peer_urls.iter().any(|u| peer_urls.contains(u)));
        if taken {
            return rejected(KvError::PeerUrlExists);
        }
        Ok(())
    }

    /// Voters (but `except`) that have started and published themselves.
    fn started_voters(&self, current: &Current, except: Option<u64>) -> usize {
        current.voters.iter().filter(|v| Some(**v) != except && current.published.iter().any(|m| m.id == **v)).count()
    }

    /// This member, or a member that has answered without a break for etcd's health interval.
    fn is_connected(&self, id: u64) -> bool {
        id == self.settings.member_id || self.peers.active_since(id).is_some_and(|t| t.elapsed() >= HEALTH_INTERVAL)
    }

    fn connected_to_all(&self, current: &Current) -> bool {
        current.voters.iter().all(|v| self.is_connected(*v))
    }
}

/// openraft's refusal of a membership change, as the API reports it.
fn change_error(e: RaftError<u64, ClientWriteError<u64, PeerNode>>) -> ChangeFailure {
    match e {
        RaftError::APIError(ClientWriteError::ChangeMembershipError(ChangeMembershipError::LearnerNotFound(_))) => {
            ChangeFailure::Rejected(KvError::MemberNotFound)
        }
        // Another change still in progress, not the leader, stopped: another try may do.
        e => ChangeFailure::Refused(PeerRefusal::from_raft_error(e)),
    }
}

/// How long a joining member keeps asking its peers before it gives up.
pub const JOIN_PATIENCE: Duration = Duration::from_secs(10);

/// Asks the members at `peer_urls` for the cluster until one answers with
/// what `wanted` accepts or `patience` has passed; returns the last answer.
pub async fn ask_cluster(
    peer_urls: &[String],
    dialer: &Dialer,
    patience: Duration,
    wanted: impl Fn(&ClusterInfo) -> bool,
) -> Option<ClusterInfo> {
    let peers = Peers::new(Credentials::anonymous(), dialer.clone());
    let deadline = Instant::now() + patience;
    let mut last = None;
    loop {
        for url in peer_urls {
            let node = PeerNode { name: String::new(), peer_urls: vec![url.clone()] };
            let timeout = Some(Duration::from_secs(1));
            if let Ok(info) = peers.call::<(), ClusterInfo>(0, &node, timeout, Method::ClusterInfo, &()).await {
                if wanted(&info) {
                    return Some(info);
                }
                last = Some(info);
            }
        }
        if Instant::now() >= deadline {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
