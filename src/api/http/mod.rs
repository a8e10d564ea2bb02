//! etcd's HTTP endpoints on the client port: the health endpoints
//! (`health`), /metrics, /version, and the JSON gateway (`gateway`).

pub mod gateway;
mod health;
mod metrics;

use std::sync::Arc;

use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::api::grpc::ETCD_VERSION;
use crate::server::Node;

pub fn router(node: Arc<Node>) -> Router {
    health::routes().merge(metrics::routes()).route("/version", get(version)).with_state(node)
}

/// What `--listen-metrics-urls` serves, as etcd: metrics and the health endpoints, no gRPC.
pub fn metrics_router(node: Arc<Node>) -> Router {
    health::routes().merge(metrics::routes()).with_state(node)
}

async fn version() -> Json<Value> {
    Json(json!({"etcdserver": ETCD_VERSION, "etcdcluster": "3.5.0", "cairn": env!("CARGO_PKG_VERSION")}))
}
