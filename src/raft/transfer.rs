//! Leader transfer, as etcd's raft does it: the leader stops taking new
//! entries, waits until the chosen voter has its whole log, and tells it to
//! campaign at once. The voter's vote requests are marked as a transfer, so
//! that the members, the old leader included, do not refuse them for the
//! lease of the leader they follow (see `clock`). Writes held back meanwhile
//! go on to the new leader.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::consensus::{matched_index, node_of};
use super::network::{Method, Peers};
use super::proposer::Proposer;
use super::{PeerRefusal, Raft};
use crate::store::types::KvError;

/// The leader's word to the member it hands leadership to.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CampaignRequest {
    pub leader: u64,
    pub term: u64,
    /// The leader's last log index: the member campaigns only if it has it.
    pub last_log_index: u64,
}

/// Hands leadership from this member (the leader) to voter `target`; Ok once
/// `target` leads. New entries wait for at most `hold_writes` (an election
/// timeout, after which etcd's leader drops a transfer too); then the call
/// only watches for `target` to lead, until `patience` ends.
pub async fn transfer_leadership(
    raft: &Raft,
    proposer: &Proposer,
    peers: &Peers,
    target: u64,
    hold_writes: Duration,
    patience: Duration,
) -> Result<(), KvError> {
    let (me, term) = {
        let m = raft.metrics().borrow().clone();
        if m.current_leader != Some(m.id) {
            return Err(KvError::NotLeader);
        }
        if !m.membership_config.membership().voter_ids().any(|id| id == target) {
            return Err(KvError::BadLeaderTransferee);
        }
        (m.id, m.current_term)
    };
    if target == me {
        return Ok(());
    }
    let node = node_of(raft, target).ok_or(KvError::BadLeaderTransferee)?;
    let attempt = async {
        // Held until the attempt ends: no new entry may outrun the target.
        let _paused = proposer.pause().await;
        let caught_up = raft
            .wait(None)
            .metrics(
                |m| matched_index(m, target) >= m.last_log_index,
                "transferee caught up",
            )
            .await
            .map_err(|_| KvError::Stopped)?;
        let last_log_index = caught_up.last_log_index.unwrap_or(0);
        if caught_up.current_term != term || caught_up.current_leader != Some(me) {
            return Err(KvError::NotLeader);
        }
        let request = CampaignRequest { leader: me, term, last_log_index };
        let answer: Result<(), PeerRefusal> = peers
            .call(target, &node, Some(hold_writes), Method::Campaign, &request)
            .await
            .map_err(|e| KvError::Internal(format!("asking member {target:x} to campaign: {e}")))?;
        answer.map_err(|refusal| KvError::Internal(format!("member {target:x} did not campaign: {refusal:?}")))?;
        raft.wait(None)
            .metrics(|m| m.current_leader == Some(target), "transferee leads")
            .await
            .map_err(|_| KvError::Stopped)?;
        Ok(())
    };
    let started = tokio::time::Instant::now();
    match tokio::time::timeout(hold_writes.min(patience), attempt).await {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(e @ (KvError::NotLeader | KvError::Stopped))) => return Err(e),
        Ok(Err(e)) => tracing::warn!(to = format!("{target:x}"), error = %e, "leader transfer attempt failed"),
        Err(_) => tracing::warn!(to = format!("{target:x}"), "leader transfer attempt took longer than an election timeout"),
    }
    // As etcd's MoveLeader: writes flow again, the call waits for its deadline.
    let rest = patience.saturating_sub(started.elapsed());
    raft.wait(Some(rest))
        .metrics(|m| m.current_leader == Some(target), "transferee leads")
        .await
        .map(|_| ())
        .map_err(|_| KvError::LeaderTransferTimeout)
}

/// The chosen member's side: campaign now if the request comes from the
/// leader this member follows and this member has the leader's whole log.
pub async fn campaign(raft: &Raft, peers: &Peers, request: CampaignRequest) -> Result<(), PeerRefusal> {
    let m = raft.metrics().borrow().clone();
    if m.current_leader != Some(request.leader) || m.current_term != request.term {
        return Err(PeerRefusal::NotLeader(m.current_leader));
    }
    if m.last_log_index.unwrap_or(0) < request.last_log_index {
        return Err(PeerRefusal::Failed(format!(
            "log ends at {:?}, the leader's at {}",
            m.last_log_index, request.last_log_index
        )));
    }
    // openraft campaigns in the next term.
    peers.mark_transfer_campaign(request.term + 1);
    tracing::info!(from = format!("{:x}", request.leader), term = request.term + 1, "campaigning: leadership is being transferred here");
    raft.trigger().elect().await.map_err(|_| PeerRefusal::Stopped)
}

/// The voter a stopping leader hands over to: the one with the most of the
/// log among those that answer.
pub fn successor(raft: &Raft, peers: &Peers) -> Option<u64> {
    let metrics = raft.metrics();
    let m = metrics.borrow();
    if m.replication.is_none() {
        // Only a leader knows how far the others' logs go.
        return None;
    }
    m.membership_config
        .membership()
        .voter_ids()
        .filter(|&id| id != m.id && peers.active_since(id).is_some())
        .max_by_key(|&id| matched_index(&m, id))
}
