//! `/metrics`: what `crate::metrics` recorded, with the gauges of this
//! member's state read now.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::metrics::METRICS;
use crate::server::Node;

pub fn routes() -> Router<Arc<Node>> {
    Router::new().route("/metrics", get(metrics))
}

async fn metrics(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let raft = node.consensus.metrics();
    METRICS.has_leader.set(i64::from(raft.current_leader.is_some()));
    METRICS.is_leader.set(i64::from(raft.current_leader == Some(node.member_id)));
    let applied = raft.last_applied.map_or(0, |id| id.index) as i64;
    METRICS.proposals_applied.set(applied);
    // openraft 0.9 reports no commit index: what is applied was committed.
    METRICS.proposals_committed.set(applied.max(METRICS.proposals_committed.get()));
    // RocksDB keeps no free pages: every byte it holds is in use.
    let size = node.store.size_bytes() as i64;
    METRICS.db_total_size_bytes.set(size);
    METRICS.db_in_use_bytes.set(size);
    METRICS.keys.set(node.store.estimated_keys() as i64);
    let (state_memtables, state_cache) = node.memory.state.usage();
    let (log_memtables, log_cache) = node.memory.log.usage();
    for (part, bytes) in [
        ("state_memtables", state_memtables),
        ("state_block_cache", state_cache),
        ("log_memtables", log_memtables),
        ("log_block_cache", log_cache),
        ("watch_history", node.hub.kept_bytes()),
    ] {
        METRICS.memory_bytes.with_label_values(&[part]).set(bytes as i64);
    }
    let (in_use, free) = crate::heap::usage();
    METRICS.heap_bytes.with_label_values(&["in_use"]).set(in_use as i64);
    METRICS.heap_bytes.with_label_values(&["free"]).set(free as i64);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], METRICS.render())
}
