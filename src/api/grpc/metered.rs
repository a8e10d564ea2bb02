//! grpc_server_started_total, grpc_server_handled_total (and, with
//! `--metrics extensive`, grpc_server_handling_seconds), with the labels of
//! go-grpc-prometheus that etcd's dashboards use, and the bytes clients send
//! and receive. The status of a call is read from the response headers (an
//! error answered at once) or from the trailers at the end of its body.

use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http::HeaderMap;
use http_body::Frame;
use prometheus::IntCounter;

use crate::metrics::METRICS;

/// One call, known by its path (`/service/method`). The path is shared with
/// the request's URI, so counting a call allocates nothing.
struct Call {
    uri: http::Uri,
    started: Instant,
}

impl Call {
    fn of(uri: &http::Uri) -> Option<Call> {
        let call = Call { uri: uri.clone(), started: Instant::now() };
        call.split()?;
        Some(call)
    }

    fn split(&self) -> Option<(&str, &str)> {
        self.uri.path().strip_prefix('/')?.split_once('/')
    }

    /// grpc_type, grpc_service and grpc_method.
    fn labels(&self) -> [&str; 3] {
        let (service, method) = self.split().unwrap_or_default();
        let kind = match method {
            "Watch" | "LeaseKeepAlive" => "bidi_stream",
            "Snapshot" | "Observe" | "RangeStream" => "server_stream",
            _ => "unary",
        };
        [kind, service, method]
    }

    fn started(&self) {
        METRICS.grpc_started.with_label_values(&self.labels()).inc();
    }

    fn handled(&self, headers: &HeaderMap) -> bool {
        let Some(status) = headers.get("grpc-status").and_then(|v| v.to_str().ok()?.parse::<i32>().ok()) else {
            return false;
        };
        let [kind, service, method] = self.labels();
        METRICS.grpc_handled.with_label_values(&[kind, service, method, code_name(tonic::Code::from_i32(status))]).inc();
        if METRICS.extensive() {
            METRICS.grpc_handling_seconds.with_label_values(&[kind, service, method]).observe(self.started.elapsed().as_secs_f64());
        }
        true
    }
}

/// The code as grpc-go spells it.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

pub async fn track(request: Request, next: Next) -> Response {
    let Some(call) = Call::of(request.uri()) else { return next.run(request).await };
    call.started();
    let request = request.map(|body| Body::new(Counted { body, bytes: &METRICS.client_grpc_received_bytes, call: None }));
    let response = next.run(request).await;
    // An error answered at once carries its status in the headers.
    let call = (!call.handled(response.headers())).then_some(call);
    response.map(|body| Body::new(Counted { body, bytes: &METRICS.client_grpc_sent_bytes, call }))
}

/// A request or response body that counts its bytes, and, for a response
/// whose status comes in the trailers, counts its call when they go by.
struct Counted {
    body: Body,
    bytes: &'static IntCounter,
    call: Option<Call>,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let frame = ready!(Pin::new(&mut self.body).poll_frame(cx));
        if let Some(Ok(frame)) = &frame {
            if let Some(data) = frame.data_ref() {
                self.bytes.inc_by(data.len() as u64);
            } else if let (Some(trailers), Some(call)) = (frame.trailers_ref(), self.call.take()) {
                call.handled(trailers);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
