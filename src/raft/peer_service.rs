//! The server side of the peer protocol: Raft RPCs into openraft, and the
//! leader's half of write forwarding and ReadIndex.

use std::sync::Arc;
use std::time::Duration;

use openraft::{Snapshot, Vote};
use tokio::io::AsyncWriteExt;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use super::members::{ClusterInfo, MemberChange, Members};
use super::network::{removed_member_status, Peers};
use super::peerpb::peer_server::Peer;
use super::peerpb::Payload;
use super::proposer::Proposer;
use super::read_index::ReadIndexRounds;
use super::snapshots::{Meta, SnapshotData};
use super::credentials::{self, Needs};
use super::consensus::answer_lease_query;
use super::{clock, decode, encode, transfer, PeerRefusal, Raft};
use crate::lease::{LeaseQuery, Lessor};
use crate::metrics::METRICS;
use crate::store::types::{Command, CommandResult};
use crate::store::Store;

pub struct PeerService {
    pub(super) raft: Raft,
    pub(super) proposer: Proposer,
    pub(super) reads: ReadIndexRounds,
    pub(super) lessor: Arc<Lessor>,
    pub(super) members: Members,
    pub(super) store: Arc<Store>,
    pub(super) peers: Peers,
    pub(super) cluster_id: u64,
}

fn payload<T: serde::de::DeserializeOwned>(req: Request<Payload>) -> Result<T, Status> {
    if let Some(sender) = credentials::sender(req.metadata()) {
        let bytes = req.get_ref().data.len() as u64;
        METRICS.peer_received_bytes.with_label_values(&[&format!("{sender:x}")]).inc_by(bytes);
    }
    decoded(&req.into_inner())
}

fn decoded<T: serde::de::DeserializeOwned>(message: &Payload) -> Result<T, Status> {
    decode(&message.data).map_err(|e| Status::invalid_argument(format!("bad peer payload: {e}")))
}

fn reply<T: serde::Serialize>(value: &T) -> Result<Response<Payload>, Status> {
    Ok(Response::new(Payload { data: encode(value) }))
}

impl PeerService {
    /// Refuses a request from another cluster or from a stranger. A member
    /// that knows no membership yet (one joining) takes its cluster's word.
    /// A member the cluster removed is told so: it stops instead of
    /// campaigning with its old configuration.
    async fn admit(&self, metadata: &MetadataMap, needs: Needs) -> Result<(), Status> {
        let metrics = self.raft.metrics();
        let is_member = |id| {
            let metrics = metrics.borrow();
            let membership = metrics.membership_config.membership();
            membership.get_node(&id).is_some() || membership.nodes().next().is_none()
        };
        let refusal = match credentials::admit(metadata, needs, self.cluster_id, is_member) {
            Ok(()) => return Ok(()),
            Err(refusal) => refusal,
        };
        let Some(sender) = credentials::sender(metadata).filter(|_| refusal.code() == tonic::Code::PermissionDenied)
        else {
            return Err(refusal);
        };
        let store = self.store.clone();
        if matches!(tokio::task::spawn_blocking(move || store.is_removed(sender)).await, Ok(Ok(true))) {
            return Err(removed_member_status(sender));
        }
        Err(refusal)
    }

    /// Writes a snapshot stream to `data`'s file (memory stays at a chunk or
    /// two) and installs it once complete.
    async fn receive_snapshot(&self, mut stream: Streaming<Payload>, data: SnapshotData) -> Result<Response<Payload>, Status> {
        let header = stream.message().await?.ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        let (vote, meta, size): (Vote<u64>, Meta, u64) = decoded(&header)?;
        let io_error = |e: std::io::Error| Status::internal(format!("receiving a snapshot: {e}"));
        let mut file = tokio::fs::File::from_std(data.file.try_clone().map_err(io_error)?);
        let mut received = 0u64;
        while let Some(chunk) = stream.message().await? {
            received += chunk.data.len() as u64;
            file.write_all(&chunk.data).await.map_err(io_error)?;
        }
        file.flush().await.map_err(io_error)?;
        if received != size {
            return Err(Status::aborted(format!("snapshot stream ended after {received} of {size} bytes")));
        }
        reply(&self.raft.install_full_snapshot(vote, Snapshot { meta, snapshot: Box::new(data) }).await)
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn append_entries(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        self.admit(req.metadata(), Needs::Member).await?;
        reply(&self.raft.append_entries(payload(req)?).await)
    }

    async fn vote(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        self.admit(req.metadata(), Needs::Member).await?;
        let (vote, transfer): (openraft::raft::VoteRequest<u64>, bool) = payload(req)?;
        if transfer {
            // The leader asked for this campaign: its lease must not stop it.
            clock::expire_leader_lease(Duration::from_millis(self.raft.config().election_timeout_max));
        }
        reply(&self.raft.vote(vote).await)
    }

    async fn snapshot(&self, req: Request<Streaming<Payload>>) -> Result<Response<Payload>, Status> {
        self.admit(req.metadata(), Needs::Member).await?;
        let data = self.raft.begin_receiving_snapshot().await.map_err(|e| Status::unavailable(e.to_string()))?;
        let temp = data.path.clone();
        let answer = self.receive_snapshot(req.into_inner(), *data).await;
        // An installed snapshot was moved into place; anything else is dropped.
        let _ = tokio::fs::remove_file(&temp).await;
        answer
    }

    async fn forward(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        self.admit(req.metadata(), Needs::Member).await?;
        let command: Command = payload(req)?;
        let result: Result<CommandResult, PeerRefusal> = self.proposer.propose(command).await;
        reply(&result)
    }

    async fn read_index(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        self.admit(req.metadata(), Needs::Member).await?;
        let result: Result<u64, PeerRefusal> = self.reads.read_index().await;
        reply(&result)
    }

    async fn lease(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        self.admit(req.metadata(), Needs::Member).await?;
        let query: LeaseQuery = payload(req)?;
        let patience = Duration::from_millis(self.raft.config().election_timeout_max);
        reply(&answer_lease_query(&self.lessor, &self.reads, patience, query).await)
    }

    async fn reconfigure(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        self.admit(req.metadata(), Needs::Member).await?;
        let change: MemberChange = payload(req)?;
        reply(&self.members.change(change).await)
    }

    async fn cluster_info(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        self.admit(req.metadata(), Needs::Protocol).await?;
        let info: ClusterInfo = self.members.view().await.map_err(|e| Status::internal(e.to_string()))?;
        reply(&info)
    }

    async fn campaign(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        self.admit(req.metadata(), Needs::Member).await?;
        reply(&transfer::campaign(&self.raft, &self.peers, payload(req)?).await)
    }

    async fn hash_kv(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        self.admit(req.metadata(), Needs::Member).await?;
        let revision: i64 = payload(req)?;
        let store = self.store.clone();
        let hashed = tokio::task::spawn_blocking(move || store.hash_kv(revision).map_err(|e| e.to_string()))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        reply(&hashed)
    }
}
