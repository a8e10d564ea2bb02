//! `etcdserverpb.Lease`: Grant, Revoke, KeepAlive, TimeToLive, Leases.
//! Grants and revokes go through Raft; keepalives and remaining TTLs are the
//! leader lessor's to answer, wherever the client is connected.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::proto::{
    PbLeaseGrantRequest, PbLeaseGrantResponse, PbLeaseKeepAliveRequest, PbLeaseKeepAliveResponse,
    PbLeaseLeasesRequest, PbLeaseLeasesResponse, PbLeaseRevokeRequest, PbLeaseRevokeResponse, PbLeaseService,
    PbLeaseStatus, PbLeaseTimeToLiveRequest, PbLeaseTimeToLiveResponse,
};
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status, Streaming};

use super::{caller, header, status};
use crate::auth::Access;
use crate::lease::{LeaseQuery, MAX_TTL};
use crate::server::Node;
use crate::store::types::{Command, KvError};

pub struct LeaseService {
    node: Arc<Node>,
}

impl LeaseService {
    pub fn new(node: Arc<Node>) -> Self {
        LeaseService { node }
    }

    /// A fresh positive lease id, distinct across members and restarts.
    fn new_lease_id(&self) -> i64 {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let seed = (self.node.member_id, nanos, COUNTER.fetch_add(1, Ordering::Relaxed));
        let digest = Sha256::digest(format!("{seed:?}").as_bytes());
        let id = i64::from_be_bytes(digest[..8].try_into().expect("32-byte digest")) & i64::MAX;
        id.max(1)
    }
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<PbLeaseKeepAliveResponse, Status>> + Send>>;

/// How long a keepalive stream's headers wait for the answer to its first request.
const FIRST_ANSWER_GRACE: Duration = Duration::from_millis(50);

#[tonic::async_trait]
impl PbLeaseService for LeaseService {
    async fn lease_grant(&self, request: Request<PbLeaseGrantRequest>) -> Result<Response<PbLeaseGrantResponse>, Status> {
        let caller = caller(&self.node, &request).await?;
        let r = request.into_inner();
        if r.ttl > MAX_TTL {
            return Err(status(KvError::LeaseTtlTooLarge));
        }
        let ttl = r.ttl.max(self.node.limits.min_lease_ttl);
        let id = if r.id == 0 { self.new_lease_id() } else { r.id };
        let result = self.node.write_as(&caller, Command::LeaseGrant { id, ttl }).await.map_err(status)?;
        Ok(Response::new(PbLeaseGrantResponse { header: header(&self.node, result.revision), id, ttl, error: String::new() }))
    }

    async fn lease_revoke(&self, request: Request<PbLeaseRevokeRequest>) -> Result<Response<PbLeaseRevokeResponse>, Status> {
        let caller = caller(&self.node, &request).await?;
        let id = request.into_inner().id;
        let result = self.node.write_as(&caller, Command::LeaseRevoke { id }).await.map_err(status)?;
        Ok(Response::new(PbLeaseRevokeResponse { header: header(&self.node, result.revision) }))
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<PbLeaseKeepAliveRequest>>,
    ) -> Result<Response<KeepAliveStream>, Status> {
        let caller = Arc::new(caller(&self.node, &request).await?);
        let node = self.node.clone();
        let mut stopping = node.stopping.clone();
        let requests = request.into_inner().take_until(async move {
            let _ = stopping.wait_for(|s| *s).await;
        });
        let responses = requests.then(move |request| {
            let (node, caller) = (node.clone(), caller.clone());
            async move {
                let id = request?.id;
                // Keeping a lease alive keeps its keys: etcd asks for write permission on them.
                node.check_lease_keys(&caller, id, Access::Write).await.map_err(status)?;
                let ttl = match node.renew_lease(id).await {
                    Ok(ttl) => ttl,
                    // etcd answers a keepalive for a lease that is gone with TTL 0.
                    Err(KvError::LeaseNotFound) => 0,
                    Err(e) => return Err(status(e)),
                };
                Ok(PbLeaseKeepAliveResponse { header: header(&node, node.store.revision()), id, ttl })
            }
        });
        let mut responses: KeepAliveStream = Box::pin(responses);
        // The response headers go out when this returns. Most clients send a
        // keepalive as they open the stream (a one-shot keepalive opens one per
        // renewal): answered before returning, it leaves with the headers in one
        // write, and the client wakes once, not twice. A client that waits for
        // the headers before it sends waits this grace at most.
        match tokio::time::timeout(FIRST_ANSWER_GRACE, responses.next()).await {
            Ok(Some(first)) => responses = Box::pin(futures::stream::once(async { first }).chain(responses)),
            Ok(None) => responses = Box::pin(futures::stream::empty()),
            Err(_) => {}
        }
        Ok(Response::new(responses))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<PbLeaseTimeToLiveRequest>,
    ) -> Result<Response<PbLeaseTimeToLiveResponse>, Status> {
        let caller = caller(&self.node, &request).await?;
        self.node.store.auth.state().check_user(caller.user()).map_err(status)?;
        let r = request.into_inner();
        let node = &self.node;
        let answer = match node.consensus.lease_query(LeaseQuery::Status(r.id)).await {
            Ok(answer) => answer,
            // etcd reports a lease that is gone with TTL -1.
            Err(KvError::LeaseNotFound) => {
                return Ok(Response::new(PbLeaseTimeToLiveResponse { header: header(node, node.store.revision()), id: r.id, ttl: -1, ..Default::default() }));
            }
            Err(e) => return Err(status(e)),
        };
        let keys = if r.keys { node.lease_keys(&caller, r.id).await.map_err(status)? } else { Vec::new() };
        Ok(Response::new(PbLeaseTimeToLiveResponse {
            header: header(node, node.store.revision()),
            id: r.id,
            ttl: answer.remaining,
            granted_ttl: answer.ttl,
            keys,
        }))
    }

    async fn lease_leases(&self, request: Request<PbLeaseLeasesRequest>) -> Result<Response<PbLeaseLeasesResponse>, Status> {
        let caller = caller(&self.node, &request).await?;
        let node = &self.node;
        let ids = node.lease_ids().await.map_err(status)?;
        for id in &ids {
            // As etcd: who is not root sees the leases only if it may read every key they hold.
            node.check_lease_keys(&caller, *id, Access::Read).await.map_err(status)?;
        }
        let leases = ids.into_iter().map(|id| PbLeaseStatus { id }).collect();
        Ok(Response::new(PbLeaseLeasesResponse { header: header(node, node.store.revision()), leases }))
    }
}
