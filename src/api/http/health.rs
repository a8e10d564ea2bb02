//! etcd's health endpoints: `/health` (etcd 3.4's JSON answer, with
//! `?serializable=true` and `?exclude=ALARM`), and etcd 3.6's `/livez` and
//! `/readyz`, made of named checks that can be excluded, asked for one at a
//! time (`/readyz/linearizable_read`) and listed with `?verbose`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::server::Node;
use crate::store::maintenance::{ALARM_CORRUPT, ALARM_NOSPACE};
use crate::store::types::KvError;

/// How long a check that needs a quorum waits for one: a probe must answer
/// while its caller still listens.
const QUORUM_PATIENCE: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Check {
    DataCorruption,
    SerializableRead,
    LinearizableRead,
    NonLearner,
}

/// `/livez`: the process serves. `/readyz`: it can serve linearizably.
const LIVEZ: &[Check] = &[Check::SerializableRead];
const READYZ: &[Check] = &[Check::DataCorruption, Check::SerializableRead, Check::LinearizableRead, Check::NonLearner];

impl Check {
    fn name(self) -> &'static str {
        match self {
            Check::DataCorruption => "data_corruption",
            Check::SerializableRead => "serializable_read",
            Check::LinearizableRead => "linearizable_read",
            Check::NonLearner => "non_learner",
        }
    }

    /// Ok, or etcd's reason for the failure.
    async fn run(self, node: &Node) -> Result<(), String> {
        match self {
            Check::DataCorruption => match node.store.alarms() {
                Ok(alarms) if alarms.iter().any(|(_, alarm)| *alarm == ALARM_CORRUPT) => Err("alarm activated: CORRUPT".into()),
                Ok(_) => Ok(()),
                Err(e) => Err(e.to_string()),
            },
            Check::SerializableRead => node.probe_read(true).await.map_err(|e| e.to_string()),
            Check::LinearizableRead => bounded(node.probe_read(false)).await.map_err(|e| e.to_string()),
            Check::NonLearner => match node.consensus.is_voter() {
                true => Ok(()),
                false => Err("not supported for learner".into()),
            },
        }
    }
}

async fn bounded(work: impl std::future::Future<Output = Result<(), KvError>>) -> Result<(), KvError> {
    tokio::time::timeout(QUORUM_PATIENCE, work).await.unwrap_or(Err(KvError::Timeout))
}

pub fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/health", get(health))
        .route("/livez", get(livez))
        .route("/livez/{check}", get(livez_check))
        .route("/readyz", get(readyz))
        .route("/readyz/{check}", get(readyz_check))
}

async fn livez(node: State<Arc<Node>>, query: RawQuery) -> Response {
    all_checks(node, query, LIVEZ).await
}

async fn livez_check(node: State<Arc<Node>>, name: Path<String>, query: RawQuery) -> Response {
    one_check(node, name, query, LIVEZ).await
}

async fn readyz(node: State<Arc<Node>>, query: RawQuery) -> Response {
    all_checks(node, query, READYZ).await
}

async fn readyz_check(node: State<Arc<Node>>, name: Path<String>, query: RawQuery) -> Response {
    one_check(node, name, query, READYZ).await
}

/// The values of `name` in a query string (`exclude` may come several times).
fn query_values(query: &Option<String>, name: &str) -> Vec<String> {
    let pairs = url::form_urlencoded::parse(query.as_deref().unwrap_or_default().as_bytes());
    pairs.filter(|(k, _)| k == name).map(|(_, v)| v.into_owned()).filter(|v| !v.is_empty()).collect()
}

/// `verbose` counts by its presence, whatever its value (as etcd).
fn is_verbose(query: &Option<String>) -> bool {
    url::form_urlencoded::parse(query.as_deref().unwrap_or_default().as_bytes()).any(|(k, _)| k == "verbose")
}

fn text(status: StatusCode, body: String) -> Response {
    let headers = [(header::CONTENT_TYPE, "text/plain; charset=utf-8"), (header::X_CONTENT_TYPE_OPTIONS, "nosniff")];
    (status, headers, body).into_response()
}

/// Runs `checks`; etcd's answer: `ok` (after the check lines with `verbose`),
/// or 503 with every check's line whenever one fails.
async fn answer(node: &Node, checks: &[Check], verbose: bool) -> Response {
    let mut lines = String::new();
    let mut failed = false;
    for check in checks {
        match check.run(node).await {
            Ok(()) => lines.push_str(&format!("[+]{} ok\n", check.name())),
            Err(reason) => {
                failed = true;
                lines.push_str(&format!("[-]{} failed: {reason}\n", check.name()));
            }
        }
    }
    match (failed, verbose) {
        (true, _) => {
            tracing::warn!(checks = %lines.trim_end().replace('\n', "; "), "health check error");
            text(StatusCode::SERVICE_UNAVAILABLE, lines + "\n")
        }
        (false, true) => text(StatusCode::OK, lines + "ok\n"),
        (false, false) => text(StatusCode::OK, "ok\n".into()),
    }
}

async fn all_checks(State(node): State<Arc<Node>>, RawQuery(query): RawQuery, checks: &[Check]) -> Response {
    let excluded = query_values(&query, "exclude");
    let unknown: Vec<&String> = excluded.iter().filter(|e| !checks.iter().any(|c| c.name() == e.as_str())).collect();
    if !unknown.is_empty() {
        // As etcd: kept for compatibility, not an error.
        tracing::warn!(missing_health_checks = ?unknown, "some health checks cannot be excluded");
    }
    let chosen: Vec<Check> = checks.iter().copied().filter(|c| !excluded.iter().any(|e| e == c.name())).collect();
    answer(&node, &chosen, is_verbose(&query)).await
}

async fn one_check(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    checks: &[Check],
) -> Response {
    let Some(check) = checks.iter().copied().find(|c| c.name() == name) else {
        return text(StatusCode::NOT_FOUND, "404 page not found\n".into());
    };
    answer(&node, &[check], is_verbose(&query)).await
}

fn alarm_name(alarm: u8) -> &'static str {
    match alarm {
        ALARM_NOSPACE => "NOSPACE",
        ALARM_CORRUPT => "CORRUPT",
        _ => "UNKNOWN",
    }
}

/// etcd's `/health`: no alarm (but those `?exclude`d), a leader, and a read;
/// `?serializable=true` asks for neither a leader nor a quorum, so a
/// liveness probe does not restart healthy members cut off from the rest.
async fn health(State(node): State<Arc<Node>>, RawQuery(query): RawQuery) -> Response {
    let excluded = query_values(&query, "exclude");
    let serializable = query_values(&query, "serializable").iter().any(|v| v == "true");
    let alarms = node.store.alarms();
    let alarm = alarms.iter().flatten().map(|(_, a)| alarm_name(*a)).find(|a| !excluded.iter().any(|e| e == a));
    let reason = if let Some(alarm) = alarm {
        Some(format!("ALARM {alarm}"))
    } else if let Err(e) = alarms {
        Some(format!("ALARM READ ERROR:{e}"))
    } else if !serializable && node.consensus.leader().is_none() {
        Some("RAFT NO LEADER".to_string())
    } else {
        bounded(node.probe_read(serializable)).await.err().map(|e| format!("RANGE ERROR:{e}"))
    };
    match reason {
        None => (StatusCode::OK, r#"{"health":"true","reason":""}"#).into_response(),
        Some(reason) => {
            let body = serde_json::json!({"health": "false", "reason": reason}).to_string() + "\n";
            text(StatusCode::SERVICE_UNAVAILABLE, body)
        }
    }
}
