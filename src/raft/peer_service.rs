//! The server side of the peer protocol: Raft RPCs into openraft, and the
//! leader's half of write forwarding and ReadIndex.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::peerpb::peer_server::Peer;
use super::peerpb::Payload;
use super::proposer::Proposer;
use super::read_index::ReadIndexRounds;
use super::{decode, encode, PeerRefusal, Raft};
use crate::lease::{LeaseQuery, Lessor};
use crate::store::types::{Command, CommandResult};

pub struct PeerService {
    raft: Raft,
    proposer: Proposer,
    reads: ReadIndexRounds,
    lessor: Arc<Lessor>,
}

impl PeerService {
    pub fn new(raft: Raft, proposer: Proposer, reads: ReadIndexRounds, lessor: Arc<Lessor>) -> PeerService {
        PeerService { raft, proposer, reads, lessor }
    }
}

fn payload<T: serde::de::DeserializeOwned>(req: Request<Payload>) -> Result<T, Status> {
    decode(&req.into_inner().data).map_err(|e| Status::invalid_argument(format!("bad peer payload: {e}")))
}

fn reply<T: serde::Serialize>(value: &T) -> Result<Response<Payload>, Status> {
    Ok(Response::new(Payload { data: encode(value) }))
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn append_entries(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        reply(&self.raft.append_entries(payload(req)?).await)
    }

    async fn vote(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        reply(&self.raft.vote(payload(req)?).await)
    }

    async fn install_snapshot(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        reply(&self.raft.install_snapshot(payload(req)?).await)
    }

    async fn forward(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        let command: Command = payload(req)?;
        let result: Result<CommandResult, PeerRefusal> = self.proposer.propose(command).await;
        reply(&result)
    }

    async fn read_index(&self, _req: Request<Payload>) -> Result<Response<Payload>, Status> {
        let result: Result<u64, PeerRefusal> = self.reads.read_index().await;
        reply(&result)
    }

    async fn lease(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        let query: LeaseQuery = payload(req)?;
        reply(&self.lessor.answer(query))
    }
}
