//! The running member as the API sees it: identity, limits, the store and
//! consensus, and the two request paths (reads and writes).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::auth::tokens::TokenKind;
use crate::auth::{Access, Authenticator, Caller};
use crate::metrics::METRICS;
use crate::raft::Consensus;
use crate::store::types::{Command, CommandResult, KvError, OpResult, RangeArgs, RangeResult, TxnArgs};
use crate::store::maintenance::ALARM_NOSPACE;
use crate::store::memory::MemberBudget;
use crate::store::Store;
use crate::lease::{LeaseQuery, Lessor};
use crate::watch::Hub;

pub struct Limits {
    pub max_request_bytes: u64,
    pub max_txn_ops: u64,
    pub quota_backend_bytes: u64,
    pub watch_progress_notify_interval: Duration,
    /// etcd's minimum lease TTL (seconds): 1.5 election timeouts, rounded up.
    pub min_lease_ttl: i64,
}

pub struct Node {
    pub name: String,
    pub member_id: u64,
    pub cluster_id: u64,
    pub client_urls: Vec<String>,
    /// What the databases' memory is bounded by, and how much of it is held.
    pub memory: MemberBudget,
    pub limits: Limits,
    pub store: Arc<Store>,
    pub hub: Arc<Hub>,
    pub lessor: Arc<Lessor>,
    pub consensus: Consensus,
    pub authenticator: Authenticator,
    /// Turns true when the member begins to stop: long-lived streams end.
    pub stopping: watch::Receiver<bool>,
}

/// etcd's response header fields.
pub struct Header {
    pub cluster_id: u64,
    pub member_id: u64,
    pub revision: i64,
    pub raft_term: u64,
}

impl Node {
    /// Waits `period` for a background task; false once the member is stopping.
    pub async fn idle(&self, period: Duration) -> bool {
        let mut stopping = self.stopping.clone();
        tokio::select! {
            _ = tokio::time::sleep(period) => true,
            _ = stopping.wait_for(|s| *s) => false,
        }
    }

    pub fn header(&self, revision: i64) -> Header {
        Header {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term: self.consensus.term(),
        }
    }

    /// Runs blocking store work off the async workers.
    async fn on_store<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Store) -> Result<T, KvError> + Send + 'static,
    ) -> Result<T, KvError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || work(&store))
            .await
            .map_err(|e| KvError::Internal(e.to_string()))?
    }

    /// Who sent a request that brought `token`, or came over a connection
    /// whose verified client certificate names `common_name`. A simple
    /// token this member does not know may be one the log has handed out
    /// but this member not yet applied: it is asked about again once the
    /// member has caught up.
    pub async fn identify(&self, token: Option<String>, common_name: Option<String>) -> Result<Caller, KvError> {
        let identify = || self.authenticator.identify(&self.store.auth, token.as_deref(), common_name.clone());
        match identify() {
            Err(KvError::InvalidAuthToken) if matches!(self.authenticator.tokens, TokenKind::Simple) => {
                // Boxed: rare, and every request's future would carry its size.
                Box::pin(self.consensus.read_barrier()).await?;
                identify()
            }
            identified => identified,
        }
    }

    /// A Range: linearizable (after a ReadIndex barrier) unless serializable.
    /// Permissions are checked after the barrier, against an auth state at
    /// least as new as the request.
    pub async fn range(&self, caller: &Caller, args: RangeArgs, serializable: bool) -> Result<(RangeResult, i64), KvError> {
        if !serializable {
            self.consensus.read_barrier().await?;
        }
        self.store.auth.state().check_keys(caller.user(), &args.key, &args.range_end, Access::Read)?;
        // One key whose rows are in memory is read here: handing it to the
        // blocking pool and back costs more than the read (two thread
        // wake-ups; ranges with 64 clients ran at two thirds the rate).
        if args.range_end.is_empty() {
            match self.store.range_in_memory(&args) {
                Err(KvError::NeedsDisk) => {}
                answered => return answered,
            }
        }
        self.on_store(move |s| s.range(&args)).await
    }

    /// A Txn that only reads: evaluated locally after a ReadIndex barrier, so
    /// compare-only transactions are linearizable too.
    pub async fn read_txn(&self, caller: &Caller, args: TxnArgs, serializable: bool) -> Result<(OpResult, i64), KvError> {
        if !serializable {
            self.consensus.read_barrier().await?;
        }
        self.store.auth.state().check_txn(caller.user(), &args)?;
        self.on_store(move |s| s.read_txn(&args)).await
    }

    /// The read a health check makes: one key, no values, as root would (auth
    /// does not make a member unhealthy); linearizable unless `serializable`.
    pub async fn probe_read(&self, serializable: bool) -> Result<(), KvError> {
        if !serializable {
            self.consensus.read_barrier().await?;
        }
        let probe = RangeArgs { key: b"health".to_vec(), limit: 1, keys_only: true, ..Default::default() };
        self.on_store(move |s| s.range(&probe)).await.map(|_| ())
    }

    /// The keys attached to lease `id`, read linearizably; `caller` must be
    /// able to read them all.
    pub async fn lease_keys(&self, caller: &Caller, id: i64) -> Result<Vec<Vec<u8>>, KvError> {
        self.consensus.read_barrier().await?;
        let keys = self.on_store(move |s| s.lease_keys(id)).await?;
        let auth = self.store.auth.state();
        keys.iter().try_for_each(|key| auth.check_keys(caller.user(), key, &[], Access::Read))?;
        Ok(keys)
    }

    /// With auth on, that `caller` may `access` every key attached to lease
    /// `id`, as etcd asks of whoever keeps a lease alive or lists leases.
    pub async fn check_lease_keys(&self, caller: &Caller, id: i64, access: Access) -> Result<(), KvError> {
        let auth = self.store.auth.state();
        if auth.check_admin(caller.user()).is_ok() {
            return Ok(());
        }
        auth.check_user(caller.user())?;
        let keys = self.on_store(move |s| s.lease_keys(id)).await?;
        keys.iter().try_for_each(|key| auth.check_keys(caller.user(), key, &[], access))
    }

    /// Commits a client's command. With auth on, the command carries its
    /// user through the log and is checked when it is applied.
    pub async fn write_as(&self, caller: &Caller, command: Command) -> Result<CommandResult, KvError> {
        match &caller.user {
            Some(user) => self.write(Command::Authorized { user: user.clone(), command: Box::new(command) }).await,
            None => self.write(command).await,
        }
    }

    /// A keepalive: lease `id` lives another TTL; returns the TTL. When the
    /// last checkpoint says less than that, a new leader or a restart would
    /// resume the lease from it: as in etcd, the renewal is answered once a
    /// checkpoint of the full TTL is committed.
    pub async fn renew_lease(&self, id: i64) -> Result<i64, KvError> {
        let renewed = self.consensus.lease_query(LeaseQuery::Renew(id)).await?;
        if renewed.remaining < renewed.ttl {
            self.write(Command::LeaseCheckpoint(vec![(id, renewed.ttl)])).await?;
        }
        Ok(renewed.ttl)
    }

    /// Every lease's id, read linearizably.
    pub async fn lease_ids(&self) -> Result<Vec<i64>, KvError> {
        self.consensus.read_barrier().await?;
        self.on_store(|s| Ok(s.leases()?.into_iter().map(|(id, _, _)| id).collect())).await
    }

    /// Commits a command. As etcd: while a CORRUPT alarm is raised, nothing
    /// that changes keys or leases is; once the store outgrows its space quota
    /// (by its size at most 100 ms ago, as etcd's check reads it), a NOSPACE
    /// alarm is raised through Raft, and while it is, every member refuses
    /// commands that add data (until `alarm disarm`).
    pub async fn write(&self, command: Command) -> Result<CommandResult, KvError> {
        if self.store.corrupted() && command.changes_data() {
            return Err(KvError::Corrupt);
        }
        let adds_data = command.adds_data();
        if adds_data && self.store.out_of_space() {
            return Err(KvError::NoSpace);
        }
        if adds_data && self.store.recent_size_bytes() > self.limits.quota_backend_bytes {
            let alarm = Command::Alarm { activate: true, member_id: self.member_id, alarm: ALARM_NOSPACE };
            if let Err(e) = self.consensus.write(alarm).await {
                tracing::warn!(error = %e, "raising the NOSPACE alarm");
            }
            tracing::warn!(quota = self.limits.quota_backend_bytes, "database space exceeded; NOSPACE alarm raised");
            return Err(KvError::NoSpace);
        }
        METRICS.proposals_pending.inc();
        let result = self.consensus.write(command).await;
        METRICS.proposals_pending.dec();
        let result = result.inspect_err(|_| METRICS.proposals_failed.inc())?;
        result.outcome.as_ref().map_err(Clone::clone)?;
        Ok(result)
    }
}
