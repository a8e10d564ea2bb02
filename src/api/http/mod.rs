//! etcd's HTTP endpoints on the client port: /health, /version, /livez, /readyz.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::api::grpc::ETCD_VERSION;
use crate::server::Node;

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/readyz", get(health))
        .route("/livez", get(livez))
        .route("/version", get(version))
        .with_state(node)
}

/// Healthy only when the member has a leader and a quorum answers: the same
/// ReadIndex round a linearizable read needs, bounded to a second.
async fn health(State(node): State<Arc<Node>>) -> (StatusCode, Json<Value>) {
    let reason = match node.consensus.leader() {
        None => Some("RAFT NO LEADER".to_string()),
        Some(_) => match tokio::time::timeout(Duration::from_secs(1), node.consensus.read_barrier()).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("QUORUM TIMEOUT".to_string()),
        },
    };
    match reason {
        None => (StatusCode::OK, Json(json!({"health": "true", "reason": ""}))),
        Some(r) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"health": "false", "reason": r}))),
    }
}

async fn livez() -> (StatusCode, &'static str) {
    (StatusCode::OK, "ok")
}

async fn version() -> Json<Value> {
    Json(json!({"etcdserver": ETCD_VERSION, "etcdcluster": "3.5.0", "cairn": env!("CARGO_PKG_VERSION")}))
}
