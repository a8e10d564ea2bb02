//! `etcdserverpb.Watch/Watch`: maps the stream's protobuf messages to a
//! `watch::Session` and back, and splits large responses into fragments for
//! watchers that asked for them.

use std::pin::Pin;
use std::sync::Arc;

use etcd_client::proto::{PbEvent, PbWatchRequest, PbWatchRequestUnion, PbWatchResponse, PbWatchService};
use futures::{Stream, StreamExt};
use prost::Message;
use tonic::{Request, Response, Status, Streaming};

use super::{caller, header, status, to_pb_kv};
use crate::auth::{Access, Caller};
use crate::server::Node;
use crate::store::types::{Change, KvError};
use crate::watch::{CreateArgs, Output, Request as WatchRequest, Session, SessionSettings, WatchPermission};

/// No leader for this many election timeouts ends require-leader streams, as in etcd.
const NO_LEADER_ELECTIONS: u32 = 3;

const FILTER_NOPUT: i32 = 0;
const FILTER_NODELETE: i32 = 1;

pub struct WatchService {
    node: Arc<Node>,
}

impl WatchService {
    pub fn new(node: Arc<Node>) -> Self {
        WatchService { node }
    }
}

fn watch_request(request: PbWatchRequest) -> Option<WatchRequest> {
    Some(match request.request_union? {
        PbWatchRequestUnion::CreateRequest(c) => WatchRequest::Create(CreateArgs {
            key: c.key,
            range_end: c.range_end,
            start_revision: c.start_revision,
            prev_kv: c.prev_kv,
            no_put: c.filters.contains(&FILTER_NOPUT),
            no_delete: c.filters.contains(&FILTER_NODELETE),
            progress_notify: c.progress_notify,
            fragment: c.fragment,
            watch_id: c.watch_id,
        }),
        PbWatchRequestUnion::CancelRequest(c) => WatchRequest::Cancel(c.watch_id),
        PbWatchRequestUnion::ProgressRequest(_) => WatchRequest::Progress,
    })
}

fn pb_event(change: Change) -> PbEvent {
    PbEvent { r#type: i32::from(change.deleted), kv: Some(to_pb_kv(change.kv)), prev_kv: change.prev.map(to_pb_kv) }
}

/// The protobuf responses for one session output: several for an events
/// response larger than `max_bytes` whose watcher accepts fragments.
fn responses(node: &Node, output: Output, max_bytes: usize) -> Vec<PbWatchResponse> {
    let base = |watch_id: i64, revision: i64| PbWatchResponse { header: header(node, revision), watch_id, ..Default::default() };
    match output {
        Output::Created { watch_id, revision, refused } => vec![PbWatchResponse {
            created: true,
            canceled: refused.is_some(),
            cancel_reason: refused.unwrap_or_default(),
            ..base(watch_id, revision)
        }],
        Output::Events { watch_id, revision, events, fragment } => {
            let whole = PbWatchResponse { events: events.into_iter().map(pb_event).collect(), ..base(watch_id, revision) };
            if fragment && whole.events.len() > 1 && whole.encoded_len() > max_bytes {
                fragments(whole, max_bytes)
            } else {
                vec![whole]
            }
        }
        Output::Compacted { watch_id, revision, compact_revision } => {
            vec![PbWatchResponse { compact_revision, canceled: true, ..base(watch_id, revision) }]
        }
        Output::Canceled { watch_id, revision } => vec![PbWatchResponse { canceled: true, ..base(watch_id, revision) }],
        Output::Progress { watch_id, revision } => vec![base(watch_id, revision)],
    }
}

/// Splits a response so each part stays under `max_bytes` (a part holds at
/// least one event); every part but the last is marked as a fragment.
fn fragments(mut whole: PbWatchResponse, max_bytes: usize) -> Vec<PbWatchResponse> {
    let events = std::mem::take(&mut whole.events);
    let empty = PbWatchResponse { fragment: true, ..whole };
    let mut parts = Vec::new();
    let mut current = empty.clone();
    let mut current_bytes = empty.encoded_len();
    for event in events {
        // An event's share of a response: its bytes plus field tag and length.
        let event_bytes = event.encoded_len() + 1 + prost::length_delimiter_len(event.encoded_len());
        if !current.events.is_empty() && current_bytes + event_bytes > max_bytes {
            parts.push(std::mem::replace(&mut current, empty.clone()));
            current_bytes = empty.encoded_len();
        }
        current_bytes += event_bytes;
        current.events.push(event);
    }
    current.fragment = false;
    parts.push(current);
    parts
}

/// The stream's caller may watch what its user may read. A refusal reads as
/// etcd's: the gRPC status the error would have been, as text.
fn watch_permission(node: Arc<Node>, caller: Result<Caller, Status>) -> WatchPermission {
    let as_text = |s: Status| format!("rpc error: code = {:?} desc = {}", s.code(), s.message());
    match caller {
        Ok(caller) => Box::new(move |key, range_end| {
            let auth = node.store.auth.state();
            auth.check_keys(caller.user(), key, range_end, Access::Read).map_err(|e| as_text(status(e)))
        }),
        Err(refused) => {
            let reason = as_text(refused);
            Box::new(move |_, _| Err(reason.clone()))
        }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<PbWatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl PbWatchService for WatchService {
    type WatchStream = WatchStream;

    async fn watch(&self, request: Request<Streaming<PbWatchRequest>>) -> Result<Response<WatchStream>, Status> {
        // etcd clients send this with WithRequireLeader.
        let require_leader = request.metadata().get("hasleader").is_some_and(|v| v == "true");
        let node = self.node.clone();
        if require_leader && node.consensus.leader().is_none() {
            return Err(status(KvError::NoLeader));
        }
        let permitted = watch_permission(node.clone(), caller(&node, &request).await);
        // A broken inbound stream counts as one the client closed.
        let requests = request
            .into_inner()
            .take_while(|r| std::future::ready(r.is_ok()))
            .filter_map(|r| std::future::ready(r.ok().and_then(watch_request)));
        let settings = SessionSettings { progress_interval: node.limits.watch_progress_notify_interval };
        let ended = {
            let node = node.clone();
            let mut stopping = node.stopping.clone();
            async move {
                let patience = node.consensus.election_timeout() * NO_LEADER_ELECTIONS;
                tokio::select! {
                    _ = stopping.wait_for(|s| *s) => KvError::Stopped,
                    () = node.consensus.leader_lost(patience), if require_leader => KvError::NoLeader,
                }
            }
        };
        let outputs = Session::serve(node.hub.clone(), node.store.clone(), settings, permitted, requests, ended);
        let max_bytes = node.limits.max_request_bytes as usize;
        let responses = outputs.flat_map(move |output| {
            let parts: Vec<Result<PbWatchResponse, Status>> = match output {
                Ok(output) => responses(&node, output, max_bytes).into_iter().map(Ok).collect(),
                Err(e) => vec![Err(status(e))],
            };
            futures::stream::iter(parts)
        });
        Ok(Response::new(Box::pin(responses)))
    }
}
