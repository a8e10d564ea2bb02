//! The server side of the peer protocol: Raft RPCs into openraft, and the
//! leader's half of write forwarding and ReadIndex.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::{BoxStream, StreamExt};
use openraft::{Snapshot, Vote};
use tokio::io::AsyncWriteExt;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use super::members::{ClusterInfo, MemberChange, Members};
use super::network::{removed_member_status, Method, Peers};
use super::peerpb::peer_server::Peer;
use super::peerpb::Payload;
use super::proposer::Proposer;
use super::read_index::ReadIndexRounds;
use super::snapshots::{Meta, SnapshotData};
use super::credentials::{self, Needs};
use super::consensus::answer_lease_query;
use super::{clock, decode, encode, transfer, PeerNode, PeerRefusal, Raft};
use crate::lease::{LeaseQuery, Lessor};
use crate::metrics::METRICS;
use crate::store::types::{Command, CommandResult};
use crate::store::Store;

#[derive(Clone)]
pub struct PeerService {
    pub(super) raft: Raft,
    pub(super) proposer: Proposer,
    pub(super) reads: ReadIndexRounds,
    pub(super) lessor: Arc<Lessor>,
    pub(super) members: Members,
    pub(super) store: Arc<Store>,
    pub(super) peers: Peers,
    pub(super) vouching: Arc<Mutex<Vouching>>,
    pub(super) cluster_id: u64,
    /// Turns true when the member stops: its AppendEntries streams end then,
    /// as the server's graceful stop waits for every open stream.
    pub(super) stopping: tokio::sync::watch::Receiver<bool>,
}

/// Senders missing from this member's membership that a member it knows
/// vouched for, and when a lookup last failed for each other sender.
#[derive(Default)]
pub(super) struct Vouching {
    vouched: HashSet<u64>,
    refused_at: HashMap<u64, Instant>,
}

/// A sender no known member vouched for is not looked up again for this long.
const LOOKUP_PAUSE: Duration = Duration::from_secs(1);

fn payload<T: serde::de::DeserializeOwned>(req: Request<Payload>) -> Result<T, Status> {
    count_received(req.metadata(), req.get_ref());
    decoded(&req.into_inner())
}

fn count_received(metadata: &MetadataMap, message: &Payload) {
    if let Some(sender) = credentials::sender(metadata) {
        METRICS.peer(sender).received_bytes().inc_by(message.data.len() as u64);
    }
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
        if super::known_removed(&self.store, sender).await {
            return Err(removed_member_status(sender));
        }
        if self.vouched_for(sender).await {
            return Ok(());
        }
        Err(refusal)
    }

    /// Whether a member this one knows has `sender` in its membership. A
    /// member whose log is behind (back after a long absence, or replaying
    /// the log from before its own addition) knows only older
    /// configurations, and must not refuse a leader that joined since (etcd
    /// takes such senders too); a stranger no member knows stays refused.
    async fn vouched_for(&self, sender: u64) -> bool {
        {
            let vouching = self.vouching.lock().unwrap_or_else(|p| p.into_inner());
            if vouching.vouched.contains(&sender) {
                return true;
            }
            if vouching.refused_at.get(&sender).is_some_and(|at| at.elapsed() < LOOKUP_PAUSE) {
                return false;
            }
        }
        let known: Vec<(u64, PeerNode)> = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            let me = metrics.id;
            metrics.membership_config.membership().nodes().filter(|(id, _)| **id != me).map(|(id, n)| (*id, n.clone())).collect()
        };
        for (id, node) in known {
            let asked = self.peers.call::<(), ClusterInfo>(id, &node, Some(LOOKUP_PAUSE), Method::ClusterInfo, &()).await;
            if asked.is_ok_and(|info| info.cluster_id == self.cluster_id && info.members.iter().any(|m| m.id == sender)) {
                tracing::info!(remote_peer_id = %format!("{sender:x}"), vouched_by = %format!("{id:x}"), "took a member this one does not know yet, which a known member vouched for");
                self.vouching.lock().unwrap_or_else(|p| p.into_inner()).vouched.insert(sender);
                return true;
            }
        }
        self.vouching.lock().unwrap_or_else(|p| p.into_inner()).refused_at.insert(sender, Instant::now());
        false
    }

    /// One AppendEntries call, unary or one message of a stream: admitted
    /// on its own, so a stream stops being served once its sender is no
    /// longer a member.
    async fn append(&self, metadata: &MetadataMap, call: &Payload) -> Result<Payload, Status> {
        self.admit(metadata, Needs::Member).await?;
        count_received(metadata, call);
        Ok(Payload { data: encode(&self.raft.append_entries(decoded(call)?).await) })
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
        let (metadata, _, call) = req.into_parts();
        Ok(Response::new(self.append(&metadata, &call).await?))
    }

    type AppendEntriesStreamStream = BoxStream<'static, Result<Payload, Status>>;

    /// Answers the calls in order; a refused or failed call ends the stream
    /// with its status, and the leader opens another.
    async fn append_entries_stream(
        &self,
        req: Request<Streaming<Payload>>,
    ) -> Result<Response<Self::AppendEntriesStreamStream>, Status> {
        self.admit(req.metadata(), Needs::Member).await?;
        let (metadata, _, calls) = req.into_parts();
        let serving = (self.clone(), metadata, calls, self.stopping.clone());
        let answers = futures::stream::unfold(Some(serving), |serving| async move {
            let (service, metadata, mut calls, mut stopping) = serving?;
            let call = tokio::select! {
                call = calls.message() => call,
                _ = stopping.wait_for(|stop| *stop) => return None,
            };
            let answer = match call {
                Ok(Some(call)) => service.append(&metadata, &call).await,
                Ok(None) => return None,
                Err(status) => Err(status),
            };
            let next = answer.is_ok().then_some((service, metadata, calls, stopping));
            Some((answer, next))
        });
        Ok(Response::new(answers.boxed()))
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
