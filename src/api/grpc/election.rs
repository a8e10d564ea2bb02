//! `v3electionpb.Election`: the leader is the oldest key under the election's
//! name; Campaign waits for the caller's turn, Observe streams each leader.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tonic::{Request, Response, Status};

use super::lock::session_expired;
use super::ownership::{
    claim, contender_key, created_at, first_contender, release, still_held, wait_for_turn, ReleaseOnDrop,
};
use super::{caller, header, status, to_pb_kv};
use crate::auth::Caller;
use crate::server::Node;
use crate::store::types::{Command, KvError, Op, OpResult, PutArgs, TxnArgs};

pub mod pb {
    tonic::include_proto!("v3electionpb");
}

use pb::election_server::Election;
use pb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest, ProclaimResponse,
    ResignRequest, ResignResponse,
};

pub struct ElectionService {
    node: Arc<Node>,
}

impl ElectionService {
    pub fn new(node: Arc<Node>) -> Self {
        ElectionService { node }
    }
}

fn missing_leader() -> Status {
    Status::invalid_argument("\"leader\" field must be provided")
}

/// Sets the leader's value if `leader` still leads; false if it does not.
async fn proclaim(node: &Node, caller: &Caller, leader: &LeaderKey, value: Vec<u8>) -> Result<bool, KvError> {
    let put = PutArgs { key: leader.key.clone(), value, lease: leader.lease, ..Default::default() };
    let txn = TxnArgs {
        compare: vec![created_at(&leader.key, leader.rev)],
        success: vec![Op::Put(put)],
        failure: Vec::new(),
    };
    let result = node.write_as(caller, Command::Write(Op::Txn(txn))).await?;
    Ok(matches!(result.outcome, Ok(OpResult::Txn { succeeded: true, .. })))
}

type ObserveStream = Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(&self, request: Request<CampaignRequest>) -> Result<Response<CampaignResponse>, Status> {
        let caller = caller(&self.node, &request).await?;
        let r = request.into_inner();
        let node = &self.node;
        let key = contender_key(&r.name, r.lease);
        let (mine, _) = claim(node, &caller, &key, r.lease, &r.value).await.map_err(status)?;
        let mut abandoned =
            ReleaseOnDrop { node: node.clone(), caller: caller.clone(), key: Some((key.clone(), mine.create_revision)) };
        let leader = LeaderKey { name: r.name.clone(), key: key.clone(), rev: mine.create_revision, lease: r.lease };
        if mine.value != r.value {
            // Campaigning again with a new value publishes it, as etcd does.
            proclaim(node, &caller, &leader, r.value).await.map_err(status)?;
        }
        wait_for_turn(node, &caller, &r.name, mine.create_revision).await.map_err(status)?;
        if !still_held(node, &caller, &key, mine.create_revision).await.map_err(status)? {
            abandoned.key = None;
            return Err(session_expired());
        }
        abandoned.key = None;
        Ok(Response::new(CampaignResponse { header: header(node, node.store.revision()), leader: Some(leader) }))
    }

    async fn proclaim(&self, request: Request<ProclaimRequest>) -> Result<Response<ProclaimResponse>, Status> {
        let caller = caller(&self.node, &request).await?;
        let r = request.into_inner();
        let leader = r.leader.ok_or_else(missing_leader)?;
        if !proclaim(&self.node, &caller, &leader, r.value).await.map_err(status)? {
            return Err(Status::unknown("election: not leader"));
        }
        Ok(Response::new(ProclaimResponse { header: header(&self.node, self.node.store.revision()) }))
    }

    async fn leader(&self, request: Request<LeaderRequest>) -> Result<Response<LeaderResponse>, Status> {
        let caller = caller(&self.node, &request).await?;
        let node = &self.node;
        let kv = first_contender(node, &caller, &request.into_inner().name).await.map_err(status)?;
        let kv = kv.ok_or_else(|| Status::unknown("election: no leader"))?;
        Ok(Response::new(LeaderResponse { header: header(node, node.store.revision()), kv: Some(to_pb_kv(kv)) }))
    }

    type ObserveStream = ObserveStream;

    async fn observe(&self, request: Request<LeaderRequest>) -> Result<Response<ObserveStream>, Status> {
        let caller = caller(&self.node, &request).await?;
        let name = request.into_inner().name;
        let node = self.node.clone();
        let (out, responses) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut applied = node.hub.subscribe();
            let mut stopping = node.stopping.clone();
            // (key, mod revision) of the leader last sent: a new leader or a new value is news.
            let mut sent: Option<(Vec<u8>, i64)> = None;
            loop {
                match first_contender(&node, &caller, &name).await {
                    Ok(Some(kv)) if sent.as_ref() != Some(&(kv.key.clone(), kv.mod_revision)) => {
                        sent = Some((kv.key.clone(), kv.mod_revision));
                        let response = LeaderResponse { header: header(&node, node.store.revision()), kv: Some(to_pb_kv(kv)) };
                        if out.send(Ok(response)).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = out.send(Err(status(e))).await;
                        return;
                    }
                }
                tokio::select! {
                    changed = applied.changed() => if changed.is_err() { return },
                    _ = stopping.wait_for(|s| *s) => return,
                    () = out.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(responses))))
    }

    async fn resign(&self, request: Request<ResignRequest>) -> Result<Response<ResignResponse>, Status> {
        let caller = caller(&self.node, &request).await?;
        let leader = request.into_inner().leader.ok_or_else(missing_leader)?;
        let revision = release(&self.node, &caller, &leader.key, Some(leader.rev)).await.map_err(status)?;
        Ok(Response::new(ResignResponse { header: header(&self.node, revision) }))
    }
}
