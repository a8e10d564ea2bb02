//! `v3lockpb.Lock`: a lock is the oldest key under its name; Lock waits for
//! the caller's turn, and the lock dies with the caller's lease.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::ownership::{claim, contender_key, release, still_held, wait_for_turn, ReleaseOnDrop};
use super::{caller, header, status};
use crate::server::Node;

pub mod pb {
    tonic::include_proto!("v3lockpb");
}

use pb::lock_server::Lock;
use pb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};

pub struct LockService {
    node: Arc<Node>,
}

impl LockService {
    pub fn new(node: Arc<Node>) -> Self {
        LockService { node }
    }
}

/// etcd's answer when the caller's lease ended while it waited.
pub fn session_expired() -> Status {
    Status::unknown("session expired")
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, request: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let caller = caller(&self.node, &request).await?;
        let r = request.into_inner();
        let node = &self.node;
        let key = contender_key(&r.name, r.lease);
        let (mine, _) = claim(node, &caller, &key, r.lease, b"").await.map_err(status)?;
        let mut abandoned =
            ReleaseOnDrop { node: node.clone(), caller: caller.clone(), key: Some((key.clone(), mine.create_revision)) };
        wait_for_turn(node, &caller, &r.name, mine.create_revision).await.map_err(status)?;
        if !still_held(node, &caller, &key, mine.create_revision).await.map_err(status)? {
            abandoned.key = None;
            return Err(session_expired());
        }
        abandoned.key = None;
        Ok(Response::new(LockResponse { header: header(node, node.store.revision()), key }))
    }

    async fn unlock(&self, request: Request<UnlockRequest>) -> Result<Response<UnlockResponse>, Status> {
        let caller = caller(&self.node, &request).await?;
        let revision = release(&self.node, &caller, &request.into_inner().key, None).await.map_err(status)?;
        Ok(Response::new(UnlockResponse { header: header(&self.node, revision) }))
    }
}
