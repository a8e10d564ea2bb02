//! The lessor: every member mirrors the leases the store holds (the state
//! machine tells it of grants, revokes and checkpoints); only the leader's
//! lessor keeps time. The leader decides expiry, and revokes through Raft
//! like any other write; a new leader first gives every lease its remaining
//! TTL plus an election timeout, so a leader change never expires leases
//! whose keepalives were on their way.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::store::types::KvError;

/// etcd's largest TTL (seconds).
pub const MAX_TTL: i64 = 9_000_000_000;

struct Lease {
    ttl: i64,
    /// Seconds left at the last checkpoint, if any (what a new leader resumes from).
    checkpointed: Option<i64>,
    /// When the leader expires it; `None` on a member that does not lead.
    expiry: Option<Instant>,
}

#[derive(Default)]
struct State {
    leases: HashMap<i64, Lease>,
    /// True while this member leads and keeps time.
    primary: bool,
    /// Expired leases whose revoke is under way, and since when.
    revoking: HashMap<i64, Instant>,
}

pub struct Lessor {
    state: Mutex<State>,
}

/// A lease as TimeToLive reports it. A renewal's answer gives as `remaining`
/// what the last checkpoint says is left (the TTL when there is none): less
/// than the TTL, that checkpoint must be reset before the renewal is answered,
/// or a new leader would resume the lease from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseStatus {
    pub ttl: i64,
    pub remaining: i64,
}

/// What only the leader's lessor can answer (followers ask it over the peer port).
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub enum LeaseQuery {
    /// A keepalive: the lease lives another TTL.
    Renew(i64),
    Status(i64),
}

/// Whole seconds until `expiry`, as etcd reports a lease's remaining TTL.
fn seconds_left(expiry: Instant, now: Instant) -> i64 {
    expiry.saturating_duration_since(now).as_secs() as i64
}

/// A revoke that has not landed after this long is tried again.
const REVOKE_RETRY: Duration = Duration::from_secs(3);

impl Lessor {
    /// A lessor for the leases the store holds: (id, TTL, checkpointed remaining).
    pub fn new(leases: Vec<(i64, i64, Option<i64>)>) -> Lessor {
        let lessor = Lessor { state: Mutex::default() };
        lessor.reload(leases);
        lessor
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the mirror (the store's state was replaced by a snapshot).
    pub fn reload(&self, leases: Vec<(i64, i64, Option<i64>)>) {
        let mut state = self.state();
        state.leases = leases
            .into_iter()
            .map(|(id, ttl, checkpointed)| (id, Lease { ttl, checkpointed, expiry: None }))
            .collect();
        state.revoking.clear();
        state.primary = false;
    }

    pub fn granted(&self, id: i64, ttl: i64) {
        let mut state = self.state();
        let expiry = state.primary.then(|| Instant::now() + Duration::from_secs(ttl as u64));
        state.leases.insert(id, Lease { ttl, checkpointed: None, expiry });
    }

    pub fn revoked(&self, id: i64) {
        let mut state = self.state();
        state.leases.remove(&id);
        state.revoking.remove(&id);
    }

    pub fn checkpointed(&self, remaining: &[(i64, i64)]) {
        let mut state = self.state();
        for (id, left) in remaining {
            if let Some(lease) = state.leases.get_mut(id) {
                lease.checkpointed = Some(*left);
            }
        }
    }

    pub fn is_primary(&self) -> bool {
        self.state().primary
    }

    /// This member became leader (and has applied everything committed):
    /// every lease gets what it had left, plus `extend`.
    pub fn promote(&self, extend: Duration) {
        let mut state = self.state();
        let now = Instant::now();
        for lease in state.leases.values_mut() {
            let left = lease.checkpointed.unwrap_or(lease.ttl).max(0) as u64;
            lease.expiry = Some(now + Duration::from_secs(left) + extend);
        }
        state.revoking.clear();
        state.primary = true;
    }

    pub fn demote(&self) {
        let mut state = self.state();
        state.primary = false;
        state.revoking.clear();
        state.leases.values_mut().for_each(|l| l.expiry = None);
    }

    /// Answers a query on the leader; `NoLeader` elsewhere.
    pub fn answer(&self, query: LeaseQuery) -> Result<LeaseStatus, KvError> {
        match query {
            LeaseQuery::Renew(id) => self.renew(id),
            LeaseQuery::Status(id) => self.status(id),
        }
    }

    /// A keepalive (leader only): the lease lives another TTL.
    fn renew(&self, id: i64) -> Result<LeaseStatus, KvError> {
        let mut state = self.state();
        if !state.primary {
            return Err(KvError::NoLeader);
        }
        let lease = state.leases.get_mut(&id).ok_or(KvError::LeaseNotFound)?;
        lease.expiry = Some(Instant::now() + Duration::from_secs(lease.ttl as u64));
        Ok(LeaseStatus { ttl: lease.ttl, remaining: lease.checkpointed.unwrap_or(lease.ttl) })
    }

    /// TTL and seconds left (leader only).
    fn status(&self, id: i64) -> Result<LeaseStatus, KvError> {
        let state = self.state();
        if !state.primary {
            return Err(KvError::NoLeader);
        }
        let lease = state.leases.get(&id).ok_or(KvError::LeaseNotFound)?;
        let left = lease.expiry.map_or(0, |e| seconds_left(e, Instant::now()));
        Ok(LeaseStatus { ttl: lease.ttl, remaining: left })
    }

    /// Up to `limit` expired leases to revoke now (leader only); each is
    /// handed out once, and again only if its revoke did not land.
    pub fn take_expired(&self, limit: usize) -> Vec<i64> {
        let mut state = self.state();
        if !state.primary {
            return Vec::new();
        }
        let now = Instant::now();
        let State { leases, revoking, .. } = &mut *state;
        revoking.retain(|_, since| now.duration_since(*since) < REVOKE_RETRY);
        let due: HashSet<i64> = leases
            .iter()
            .filter(|(id, l)| l.expiry.is_some_and(|e| e <= now) && !revoking.contains_key(id))
            .map(|(id, _)| *id)
            .take(limit)
            .collect();
        for id in &due {
            revoking.insert(*id, now);
        }
        due.into_iter().collect()
    }

    /// Seconds each lease has left, for a checkpoint (leader only).
    pub fn remaining_ttls(&self) -> Vec<(i64, i64)> {
        let state = self.state();
        if !state.primary {
            return Vec::new();
        }
        let now = Instant::now();
        state
            .leases
            .iter()
            .filter_map(|(id, l)| Some((*id, seconds_left(l.expiry?, now))))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_leader_keeps_time_and_a_new_leader_extends() {
        let lessor = Lessor::new(vec![(1, 10, Some(0)), (2, 10, None)]);
        assert_eq!(lessor.renew(1), Err(KvError::NoLeader));
        assert!(lessor.take_expired(10).is_empty());
        lessor.promote(Duration::ZERO);
        // Lease 1 had nothing left at its checkpoint: it expires at once, once.
        assert_eq!(lessor.take_expired(10), vec![1]);
        assert!(lessor.take_expired(10).is_empty());
        assert_eq!(lessor.status(2).unwrap().ttl, 10);
        assert!(lessor.status(2).unwrap().remaining >= 9);
        lessor.revoked(1);
        assert_eq!(lessor.status(1), Err(KvError::LeaseNotFound));
        assert!(lessor.status(2).is_ok());
        lessor.checkpointed(&[(2, 4)]);
        let outran = LeaseStatus { ttl: 10, remaining: 4 };
        assert_eq!(lessor.answer(LeaseQuery::Renew(2)), Ok(outran), "a renewal names the checkpoint it outran");
        lessor.checkpointed(&[(2, 10)]);
        assert_eq!(lessor.answer(LeaseQuery::Renew(2)), Ok(LeaseStatus { ttl: 10, remaining: 10 }));

        let fresh = Lessor::new(vec![(3, 5, Some(0))]);
        fresh.promote(Duration::from_secs(1));
        assert!(fresh.take_expired(10).is_empty(), "the election timeout's grace");
    }
}
