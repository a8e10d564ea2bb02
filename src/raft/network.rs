//! The client side of the peer protocol: one lazily connected gRPC channel per
//! member, used by openraft's replication and by request forwarding.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::future::Future;
use std::io::SeekFrom;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{
    Fatal, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, ReplicationClosed, StreamingError, Timeout,
    Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};
use openraft::{OptionalSend, RPCTypes, Snapshot, Vote};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use super::credentials::Credentials;
use super::dial::Dialer;
use super::durability::Durability;
use super::peerpb::peer_client::PeerClient;
use super::peerpb::Payload;
use super::{decode, encode, PeerNode, TypeConfig};
use crate::metrics::{PeerMeters, METRICS};

/// Channels to the other members, shared by Raft replication and forwarding.
#[derive(Clone)]
pub struct Peers {
    channels: Arc<Mutex<HashMap<u64, (PeerNode, Channel)>>>,
    /// Since when each member has answered every call without a break (as
    /// etcd's transport tracks "active since"); absent after a failed call.
    active_since: Arc<Mutex<HashMap<u64, Instant>>>,
    /// Turns true when a peer refused this member's vote request because
    /// the cluster removed it.
    removed: Arc<tokio::sync::watch::Sender<bool>>,
    /// The term of this member's campaign on a leader's request (transfer):
    /// its vote requests in that term say so.
    transfer_campaign_term: Arc<AtomicU64>,
    /// AppendEntries streams no connection is using, by member, with the
    /// node they were opened to: openraft 0.9 makes a connection for every
    /// leadership check (a round of linearizable reads or lease renewals),
    /// and a new stream costs a round trip and a task on the member before
    /// its first call.
    idle_streams: Arc<Mutex<HashMap<u64, Vec<(PeerNode, AppendStream)>>>>,
    credentials: Credentials,
    dialer: Dialer,
}

/// Idle streams kept per member: one for the leadership checks, spares for
/// the rare check that overlaps another.
const IDLE_STREAMS_PER_MEMBER: usize = 4;

impl Peers {
    pub fn new(credentials: Credentials, dialer: Dialer) -> Peers {
        Peers {
            channels: Default::default(),
            active_since: Default::default(),
            idle_streams: Default::default(),
            removed: Arc::new(tokio::sync::watch::channel(false).0),
            transfer_campaign_term: Default::default(),
            credentials,
            dialer,
        }
    }
}

/// The status a member answers a vote request from a removed member with.
pub fn removed_member_status(id: u64) -> tonic::Status {
    tonic::Status::failed_precondition(format!("{REMOVED_MEMBER}: {id:x}"))
}

const REMOVED_MEMBER: &str = "cairn: vote refused to a member removed from the cluster";

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("peer unreachable: {0}")]
    Transport(#[from] tonic::Status),
    #[error("member {0} has no usable peer URL")]
    NoUrl(u64),
    #[error("bad peer payload: {0}")]
    Payload(#[from] postcard::Error),
}

impl Peers {
    pub fn channel(&self, id: u64, node: &PeerNode) -> Result<Channel, CallError> {
        let mut channels = self.channels.lock().expect("peer channel map poisoned");
        if let Some((known, channel)) = channels.get(&id) {
            if known == node {
                return Ok(channel.clone());
            }
        }
        let url = node.peer_urls.first().ok_or(CallError::NoUrl(id))?;
        let channel = Endpoint::from_shared(url.clone())
            .map_err(|_| CallError::NoUrl(id))?
            .http2_keep_alive_interval(Duration::from_secs(5))
            .connect_with_connector_lazy(self.dialer.clone());
        channels.insert(id, (node.clone(), channel.clone()));
        Ok(channel)
    }

    /// Since when member `id` has answered every call, if it answers now.
    pub fn active_since(&self, id: u64) -> Option<Instant> {
        self.active_since.lock().expect("peer health map poisoned").get(&id).copied()
    }

    /// Notes a call's outcome, and logs a member's going quiet or coming
    /// back once, as etcd does, not each failed retry.
    fn record_health(&self, id: u64, failure: Option<&tonic::Status>) {
        let mut health = self.active_since.lock().expect("peer health map poisoned");
        match failure {
            None => {
                if let Entry::Vacant(since) = health.entry(id) {
                    since.insert(Instant::now());
                    tracing::info!(peer = format!("{id:x}"), "peer became active");
                }
            }
            Some(status) => {
                if health.remove(&id).is_some() {
                    let (peer, error) = (format!("{id:x}"), status.message());
                    tracing::warn!(peer, error, "peer became inactive (message send to peer failed)");
                }
            }
        }
    }

    /// Turns true once another member says this one was removed.
    pub fn removed_signal(&self) -> tokio::sync::watch::Receiver<bool> {
        self.removed.subscribe()
    }

    /// Marks this member's vote requests in `term` as a leader transfer.
    pub fn mark_transfer_campaign(&self, term: u64) {
        self.transfer_campaign_term.store(term, Ordering::Release);
    }

    fn client(&self, id: u64, node: &PeerNode) -> Result<PeerClient<InterceptedService<Channel, Credentials>>, CallError> {
        Ok(PeerClient::with_interceptor(self.channel(id, node)?, self.credentials.clone())
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX))
    }

    /// One unary peer call: `method` picks the RPC, the payload is postcard.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        id: u64,
        node: &PeerNode,
        timeout: Option<Duration>,
        method: Method,
        request: &Req,
    ) -> Result<Resp, CallError> {
        self.call_encoded(id, node, timeout, method, encode(request)).await
    }

    async fn call_encoded<Resp: DeserializeOwned>(
        &self,
        id: u64,
        node: &PeerNode,
        timeout: Option<Duration>,
        method: Method,
        data: Vec<u8>,
    ) -> Result<Resp, CallError> {
        let mut client = self.client(id, node)?;
        // Counted where requests are sent: their bytes and their answers'.
        let meters = METRICS.peer(id);
        meters.sent_bytes().inc_by(data.len() as u64);
        let mut req = tonic::Request::new(Payload { data });
        if let Some(t) = timeout {
            req.set_timeout(t);
        }
        let reply = match method {
            Method::AppendEntries => client.append_entries(req).await,
            Method::Vote => client.vote(req).await,
            Method::Forward => client.forward(req).await,
            Method::ReadIndex => client.read_index(req).await,
            Method::Lease => client.lease(req).await,
            Method::Reconfigure => client.reconfigure(req).await,
            Method::ClusterInfo => client.cluster_info(req).await,
            Method::Campaign => client.campaign(req).await,
            Method::HashKv => client.hash_kv(req).await,
        };
        self.take_answer(id, &meters, reply.map(tonic::Response::into_inner))
    }

    /// What every answer from member `id` goes through, a call's or a
    /// stream message's: the removed-member signal, the member's health,
    /// the byte count, the payload.
    fn take_answer<Resp: DeserializeOwned>(
        &self,
        id: u64,
        meters: &PeerMeters,
        reply: Result<Payload, tonic::Status>,
    ) -> Result<Resp, CallError> {
        if let Err(status) = &reply {
            if status.code() == tonic::Code::FailedPrecondition && status.message().starts_with(REMOVED_MEMBER) {
                self.removed.send_replace(true);
            }
        }
        self.record_health(id, reply.as_ref().err());
        let reply = reply?;
        meters.received_bytes().inc_by(reply.data.len() as u64);
        Ok(decode(&reply.data)?)
    }

    async fn open_append_stream(&self, id: u64, node: &PeerNode) -> Result<AppendStream, tonic::Status> {
        let mut client = self.client(id, node).map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let (calls, queued) = tokio::sync::mpsc::channel(1);
        let queued = tokio_stream::wrappers::ReceiverStream::new(queued);
        let answers = client.append_entries_stream(queued).await?.into_inner();
        Ok(AppendStream { calls, answers, unanswered: false })
    }

    /// An idle stream to member `id` at `node`, if one is still open.
    fn take_idle_stream(&self, id: u64, node: &PeerNode) -> Option<AppendStream> {
        let mut idle = self.idle_streams.lock().expect("idle stream map poisoned");
        let streams = idle.get_mut(&id)?;
        while let Some((opened_to, stream)) = streams.pop() {
            if opened_to == *node && stream.usable() {
                return Some(stream);
            }
        }
        None
    }

    fn keep_idle_stream(&self, id: u64, node: &PeerNode, stream: AppendStream) {
        if !stream.usable() {
            return;
        }
        let mut idle = self.idle_streams.lock().expect("idle stream map poisoned");
        let streams = idle.entry(id).or_default();
        if streams.len() < IDLE_STREAMS_PER_MEMBER {
            streams.push((node.clone(), stream));
        }
    }
}

/// A leader's open AppendEntries stream to one member. openraft 0.9 sends
/// a member one call at a time, so each answer is the last call's.
struct AppendStream {
    calls: tokio::sync::mpsc::Sender<Payload>,
    answers: tonic::Streaming<Payload>,
    /// A call went out whose answer was not read: its caller gave up on it
    /// (openraft drops a call at the same deadline as ours, and may be
    /// first). That answer would be taken for the next call's, so the
    /// stream is not used again.
    unanswered: bool,
}

impl AppendStream {
    async fn exchange(&mut self, request: Vec<u8>) -> Result<Payload, tonic::Status> {
        let closed = || tonic::Status::unavailable("the member closed the AppendEntries stream");
        self.unanswered = true;
        self.calls.send(Payload { data: request }).await.map_err(|_| closed())?;
        let answer = self.answers.message().await?.ok_or_else(closed)?;
        self.unanswered = false;
        Ok(answer)
    }

    fn usable(&self) -> bool {
        !self.unanswered && !self.calls.is_closed()
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Method {
    AppendEntries,
    Vote,
    Forward,
    ReadIndex,
    Lease,
    Reconfigure,
    ClusterInfo,
    Campaign,
    HashKv,
}

/// Raft's connections to the other members: the peers, and this member's
/// log on disk, which caps the commit index sent (see `durability`).
#[derive(Clone)]
pub struct RaftPeers {
    pub peers: Peers,
    pub durability: Durability,
    /// How soon a leader tries again a member that did not answer.
    pub retry: Duration,
}

impl RaftNetworkFactory<TypeConfig> for RaftPeers {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: u64, node: &PeerNode) -> PeerConnection {
        let (peers, durability, retry) = (self.peers.clone(), self.durability.clone(), self.retry);
        PeerConnection { peers, durability, retry, target, node: node.clone(), stream: None, unary_only: false }
    }
}

pub struct PeerConnection {
    peers: Peers,
    durability: Durability,
    retry: Duration,
    target: u64,
    node: PeerNode,
    /// Opened by the first AppendEntries call, and again after a failed one.
    stream: Option<AppendStream>,
    /// The member does not know the stream (an older cairn): unary calls.
    unary_only: bool,
}

impl Drop for PeerConnection {
    fn drop(&mut self) {
        if let Some(stream) = self.stream.take() {
            self.peers.keep_idle_stream(self.target, &self.node, stream);
        }
    }
}

/// openraft 0.9 gives an AppendEntries call one heartbeat interval, the
/// follower's fsync included; a call larger than this is split.
const MAX_APPEND_BYTES: usize = 1024 * 1024;

/// The largest peer request a member takes. An AppendEntries call is split
/// at MAX_APPEND_BYTES unless one entry alone is larger (a group commit: at
/// most 512 KiB plus one request), and snapshots come in 1 MiB chunks; the
/// floor leaves room for members configured with larger requests.
pub fn peer_message_limit(max_request_bytes: u64) -> usize {
    (usize::try_from(max_request_bytes).unwrap_or(usize::MAX / 4) + 2 * MAX_APPEND_BYTES).max(64 << 20)
}

impl PeerConnection {
    async fn raft_call<Resp: DeserializeOwned, E: std::error::Error + DeserializeOwned>(
        &self,
        method: Method,
        request: Vec<u8>,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<u64, PeerNode, RaftError<u64, E>>> {
        let reply = self.peers.call_encoded(self.target, &self.node, Some(option.hard_ttl()), method, request).await;
        self.raft_answer(reply)
    }

    fn raft_answer<Resp, E: std::error::Error>(
        &self,
        reply: Result<Result<Resp, RaftError<u64, E>>, CallError>,
    ) -> Result<Resp, RPCError<u64, PeerNode, RaftError<u64, E>>> {
        let reply = reply.map_err(|e| match e {
            CallError::Payload(_) => RPCError::Network(NetworkError::new(&e)),
            _ => RPCError::Unreachable(Unreachable::new(&e)),
        })?;
        reply.map_err(|e| RPCError::RemoteError(RemoteError::new_with_node(self.target, self.node.clone(), e)))
    }

    /// An AppendEntries call from leader `leader` on the stream to the
    /// member: this connection's, an idle one, or a new one. A call that
    /// fails or times out leaves its stream unusable: its answer, if it
    /// comes, must not be taken for the next call's.
    async fn append_on_stream(
        &mut self,
        leader: u64,
        request: Vec<u8>,
        option: &RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, PeerNode, RaftError<u64>>> {
        let deadline = tokio::time::Instant::now() + option.hard_ttl();
        let meters = METRICS.peer(self.target);
        if self.stream.as_ref().is_some_and(|s| !s.usable()) {
            self.stream = None;
        }
        if self.stream.is_none() && !self.unary_only {
            match self.peers.take_idle_stream(self.target, &self.node) {
                Some(idle) => self.stream = Some(idle),
                None => match by(deadline, self.peers.open_append_stream(self.target, &self.node)).await {
                    Ok(opened) => self.stream = Some(opened),
                    // A member of an older cairn.
                    Err(refused) if refused.code() == tonic::Code::Unimplemented => self.unary_only = true,
                    Err(refused) => return self.stream_answer(leader, option, &meters, Err(refused)),
                },
            }
        }
        let Some(stream) = &mut self.stream else {
            return self.raft_call(Method::AppendEntries, request, option).await;
        };
        meters.sent_bytes().inc_by(request.len() as u64);
        let reply = by(deadline, stream.exchange(request)).await;
        self.stream_answer(leader, option, &meters, reply)
    }

    /// A member that answers late (a slow fsync) is a timeout to openraft,
    /// which tries again with the next entries or heartbeat; an unreachable
    /// member gets nothing for a back-off period, and while it waits, a
    /// cluster whose other follower is down commits nothing.
    fn stream_answer(
        &self,
        leader: u64,
        option: &RPCOption,
        meters: &PeerMeters,
        reply: Result<Payload, tonic::Status>,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, PeerNode, RaftError<u64>>> {
        let late = matches!(&reply, Err(status) if status.code() == tonic::Code::DeadlineExceeded);
        match self.raft_answer(self.peers.take_answer(self.target, meters, reply)) {
            Err(RPCError::Unreachable(_)) if late => Err(RPCError::Timeout(Timeout {
                action: RPCTypes::AppendEntries,
                id: leader,
                target: self.target,
                timeout: option.hard_ttl(),
            })),
            answer => answer,
        }
    }
}

/// `call`'s outcome, or a deadline error once `deadline` passed.
async fn by<T>(
    deadline: tokio::time::Instant,
    call: impl Future<Output = Result<T, tonic::Status>>,
) -> Result<T, tonic::Status> {
    let late = || tonic::Status::deadline_exceeded("the member did not answer in time");
    tokio::time::timeout_at(deadline, call).await.unwrap_or_else(|_| Err(late()))
}

fn unreachable<E: std::error::Error + 'static>(e: &E) -> StreamingError<TypeConfig, Fatal<u64>> {
    StreamingError::Unreachable(Unreachable::new(e))
}

/// A snapshot file goes to a follower in messages of this size.
const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;

impl PeerConnection {
    /// Streams a snapshot file to the follower, which answers once it has
    /// installed it. Installing a large state takes as long as it takes; the
    /// transfer fails early only when the follower takes no data for
    /// `stalled`, or when HTTP/2 keepalives find the connection dead.
    async fn stream_snapshot(
        &self,
        vote: Vote<u64>,
        snapshot: Snapshot<TypeConfig>,
        stalled: Duration,
    ) -> Result<SnapshotResponse<u64>, StreamingError<TypeConfig, Fatal<u64>>> {
        let mut file = tokio::fs::File::from_std(snapshot.snapshot.file);
        let size = file.metadata().await.map_err(|e| unreachable(&e))?.len();
        file.seek(SeekFrom::Start(0)).await.map_err(|e| unreachable(&e))?;
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let header = Payload { data: encode(&(&vote, &snapshot.meta, size)) };
        let meters = METRICS.peer(self.target);
        let feed = async move {
            tx.send(header).await.ok();
            loop {
                let mut data = Vec::with_capacity(SNAPSHOT_CHUNK_BYTES);
                while data.len() < SNAPSHOT_CHUNK_BYTES && file.read_buf(&mut data).await? > 0 {}
                if data.is_empty() {
                    return Ok(());
                }
                meters.sent_bytes().inc_by(data.len() as u64);
                match tokio::time::timeout(stalled, tx.send(Payload { data })).await {
                    Err(_) => return Err(std::io::Error::other(format!("the follower took no snapshot data for {stalled:?}"))),
                    // The call ended early: its answer says why.
                    Ok(Err(_)) => return Ok(()),
                    Ok(Ok(())) => {}
                }
            }
        };
        let mut client = self.peers.client(self.target, &self.node).map_err(|e| unreachable(&e))?;
        let call = client.snapshot(tokio_stream::wrappers::ReceiverStream::new(rx));
        tokio::pin!(call);
        let ended_early = tokio::select! {
            fed = feed => match fed {
                Ok(()) => None,
                Err(e) => return Err(StreamingError::Network(NetworkError::new(&e))),
            },
            answer = &mut call => Some(answer),
        };
        let answer = match ended_early {
            Some(answer) => answer,
            None => call.await,
        };
        self.peers.record_health(self.target, answer.as_ref().err());
        let answer = answer.map_err(|e| unreachable(&e))?.into_inner();
        let installed: Result<SnapshotResponse<u64>, Fatal<u64>> =
            decode(&answer.data).map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        installed.map_err(|e| StreamingError::RemoteError(RemoteError::new_with_node(self.target, self.node.clone(), e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    /// After a failed call, a leader sends a member nothing (heartbeats
    /// included) for this long. openraft's 500 ms kept a restarted member
    /// that long without the commit index it needs to serve reads; etcd's
    /// peer streams dial again every 100 ms.
    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(self.retry))
    }

    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, PeerNode, RaftError<u64>>> {
        rpc.leader_commit = self.durability.cap(rpc.leader_commit);
        let request = encode(&rpc);
        let entries = rpc.entries.len();
        if request.len() > MAX_APPEND_BYTES && entries > 1 {
            // openraft retries at once with at most this many entries.
            let hint = (entries * MAX_APPEND_BYTES / request.len()).max(1) as u64;
            return Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(hint)));
        }
        let leader = rpc.vote.leader_id().voted_for().unwrap_or_default();
        if entries > 0 {
            return self.append_on_stream(leader, request, &option).await;
        }
        // A heartbeat: no entries, so no fsync on the follower; its time is
        // the round trip etcd's prober measures.
        let sent = Instant::now();
        let answer = self.append_on_stream(leader, request, &option).await;
        match &answer {
            Ok(_) => METRICS.peer(self.target).round_trip_seconds().observe(sent.elapsed().as_secs_f64()),
            Err(RPCError::Unreachable(_) | RPCError::Network(_) | RPCError::Timeout(_)) => {
                METRICS.heartbeat_send_failures.inc()
            }
            Err(_) => {}
        }
        answer
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<u64>,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<u64>, StreamingError<TypeConfig, Fatal<u64>>> {
        let sent = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            sent = self.stream_snapshot(vote, snapshot, option.hard_ttl()) => sent,
        };
        // openraft's own line for this is among the per-retry ones filtered out.
        if let Err(e) = &sent {
            tracing::warn!(peer = format!("{:x}", self.target), error = %e, "sending a snapshot to a member failed");
        }
        sent
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, PeerNode, RaftError<u64>>> {
        let transfer = self.peers.transfer_campaign_term.load(Ordering::Acquire) == rpc.vote.leader_id().term;
        self.raft_call(Method::Vote, encode(&(&rpc, transfer)), &option).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use futures::stream::{BoxStream, StreamExt};
    use openraft::raft::AppendEntriesResponse::{HigherVote, Success};
    use tonic::{Request, Response, Status, Streaming};

    use super::*;
    use crate::raft::peerpb::peer_server::{Peer, PeerServer};

    /// A member that answers AppendEntries, counting how it was asked; a
    /// call in term 99 it answers late, and differently.
    #[derive(Clone, Default)]
    struct Member {
        knows_streams: bool,
        streams: Arc<AtomicUsize>,
        unary_calls: Arc<AtomicUsize>,
    }

    async fn answer(call: &Payload) -> Result<Payload, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> =
            decode(&call.data).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let answer: Result<AppendEntriesResponse<u64>, RaftError<u64>> = match rpc.vote.leader_id().term {
            99 => {
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok(HigherVote(Vote::new(100, 3)))
            }
            _ => Ok(Success),
        };
        Ok(Payload { data: encode(&answer) })
    }

    type Answer = Result<Response<Payload>, Status>;

    #[tonic::async_trait]
    impl Peer for Member {
        async fn append_entries(&self, req: Request<Payload>) -> Answer {
            self.unary_calls.fetch_add(1, Ordering::SeqCst);
            Ok(Response::new(answer(req.get_ref()).await?))
        }

        type AppendEntriesStreamStream = BoxStream<'static, Result<Payload, Status>>;

        async fn append_entries_stream(
            &self,
            req: Request<Streaming<Payload>>,
        ) -> Result<Response<Self::AppendEntriesStreamStream>, Status> {
            if !self.knows_streams {
                return Err(Status::unimplemented(""));
            }
            self.streams.fetch_add(1, Ordering::SeqCst);
            let answers = futures::stream::unfold(req.into_inner(), |mut calls| async move {
                let call = calls.message().await.ok()??;
                Some((answer(&call).await, calls))
            });
            Ok(Response::new(answers.boxed()))
        }

        async fn vote(&self, _: Request<Payload>) -> Answer {
            Err(Status::unimplemented(""))
        }
        async fn snapshot(&self, _: Request<Streaming<Payload>>) -> Answer {
            Err(Status::unimplemented(""))
        }
        async fn forward(&self, _: Request<Payload>) -> Answer {
            Err(Status::unimplemented(""))
        }
        async fn read_index(&self, _: Request<Payload>) -> Answer {
            Err(Status::unimplemented(""))
        }
        async fn lease(&self, _: Request<Payload>) -> Answer {
            Err(Status::unimplemented(""))
        }
        async fn reconfigure(&self, _: Request<Payload>) -> Answer {
            Err(Status::unimplemented(""))
        }
        async fn cluster_info(&self, _: Request<Payload>) -> Answer {
            Err(Status::unimplemented(""))
        }
        async fn campaign(&self, _: Request<Payload>) -> Answer {
            Err(Status::unimplemented(""))
        }
        async fn hash_kv(&self, _: Request<Payload>) -> Answer {
            Err(Status::unimplemented(""))
        }
    }

    /// Serves `member` on a loopback port.
    async fn serve(member: Member) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tonic::transport::Server::builder().add_service(PeerServer::new(member));
        tokio::spawn(server.serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)));
        address
    }

    /// A leader's connections to member 2 at `address`.
    fn factory(address: std::net::SocketAddr) -> (RaftPeers, PeerNode) {
        let node = PeerNode { name: "m2".into(), peer_urls: vec![format!("http://{address}")] };
        let peers = Peers::new(Credentials::anonymous(), Dialer::default());
        (RaftPeers { peers, durability: Durability::new(None), retry: Duration::from_millis(10) }, node)
    }

    async fn connect(member: Member) -> PeerConnection {
        connect_to(serve(member).await).await
    }

    async fn connect_to(address: std::net::SocketAddr) -> PeerConnection {
        let (mut factory, node) = factory(address);
        factory.new_client(2, &node).await
    }

    async fn send(
        connection: &mut PeerConnection,
        term: u64,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, PeerNode, RaftError<u64>>> {
        let vote = Vote::new_committed(term, 1);
        let rpc = AppendEntriesRequest { vote, prev_log_id: None, entries: vec![], leader_commit: None };
        connection.append_entries(rpc, RPCOption::new(Duration::from_millis(150))).await
    }

    #[tokio::test]
    async fn calls_share_one_stream_until_one_times_out_and_a_late_answer_is_not_taken_for_the_next() {
        let member = Member { knows_streams: true, ..Member::default() };
        let mut connection = connect(member.clone()).await;
        for _ in 0..3 {
            assert_eq!(send(&mut connection, 2).await.unwrap(), Success);
        }
        assert_eq!(member.streams.load(Ordering::SeqCst), 1);

        let late = send(&mut connection, 99).await;
        assert!(matches!(late, Err(RPCError::Timeout(_))), "answered after the deadline: {late:?}");
        // The late answer (HigherVote) would be this call's on the same stream.
        assert_eq!(send(&mut connection, 2).await.unwrap(), Success);
        assert_eq!(member.streams.load(Ordering::SeqCst), 2, "a new stream after the timeout");
        assert_eq!(member.unary_calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_call_its_caller_dropped_leaves_no_answer_for_the_next() {
        let member = Member { knows_streams: true, ..Member::default() };
        let mut connection = connect(member.clone()).await;
        assert_eq!(send(&mut connection, 2).await.unwrap(), Success);
        // openraft drops a call at its own deadline, which may pass first.
        let dropped = tokio::time::timeout(Duration::from_millis(50), send(&mut connection, 99)).await;
        assert!(dropped.is_err(), "answered before the caller gave up: {dropped:?}");
        assert_eq!(send(&mut connection, 2).await.unwrap(), Success, "the dropped call's late answer was taken");
        assert_eq!(member.streams.load(Ordering::SeqCst), 2, "a new stream after the dropped call");
    }

    #[tokio::test]
    async fn connections_one_after_another_share_an_idle_stream_but_not_one_a_dropped_call_left() {
        let member = Member { knows_streams: true, ..Member::default() };
        let (mut factory, node) = factory(serve(member.clone()).await);
        for _ in 0..3 {
            let mut connection = factory.new_client(2, &node).await;
            assert_eq!(send(&mut connection, 2).await.unwrap(), Success);
        }
        assert_eq!(member.streams.load(Ordering::SeqCst), 1, "one stream for three connections in turn");

        let mut connection = factory.new_client(2, &node).await;
        let dropped = tokio::time::timeout(Duration::from_millis(50), send(&mut connection, 99)).await;
        assert!(dropped.is_err(), "answered before the caller gave up: {dropped:?}");
        drop(connection);
        let mut connection = factory.new_client(2, &node).await;
        assert_eq!(send(&mut connection, 2).await.unwrap(), Success, "the dropped call's late answer was taken");
        assert_eq!(member.streams.load(Ordering::SeqCst), 2, "the stream with a call unanswered was not kept");
    }

    #[tokio::test]
    async fn a_member_nothing_listens_for_is_unreachable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let mut connection = connect_to(address).await;
        let refused = send(&mut connection, 2).await;
        assert!(matches!(refused, Err(RPCError::Unreachable(_))), "{refused:?}");
    }

    #[tokio::test]
    async fn a_member_that_does_not_know_the_stream_gets_unary_calls() {
        let member = Member { knows_streams: false, ..Member::default() };
        let mut connection = connect(member.clone()).await;
        for _ in 0..2 {
            assert_eq!(send(&mut connection, 2).await.unwrap(), Success);
        }
        assert_eq!(member.unary_calls.load(Ordering::SeqCst), 2);
        assert!(connection.peers.active_since(2).is_some(), "no failure recorded for the first call");
    }
}
