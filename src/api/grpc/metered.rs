//! grpc_server_started_total and grpc_server_handled_total, with the labels
//! of go-grpc-prometheus that etcd's dashboards use. The status of a call is
//! read from the response headers (an error answered at once) or from the
//! trailers at the end of its body.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http::HeaderMap;
use http_body::Frame;

use crate::metrics::METRICS;

/// The labels of one method: type, service, method.
#[derive(Clone)]
struct Call([String; 3]);

impl Call {
    fn of(path: &str) -> Option<Call> {
        let (service, method) = path.strip_prefix('/')?.split_once('/')?;
        let kind = match method {
            "Watch" | "LeaseKeepAlive" => "bidi_stream",
            "Snapshot" | "Observe" | "RangeStream" => "server_stream",
            _ => "unary",
        };
        Some(Call([kind.to_string(), service.to_string(), method.to_string()]))
    }

    fn handled(&self, headers: &HeaderMap) -> bool {
        let Some(status) = headers.get("grpc-status").and_then(|v| v.to_str().ok()?.parse::<i32>().ok()) else {
            return false;
        };
        let code = match tonic::Code::from_i32(status) {
            tonic::Code::Ok => "OK".to_string(),
            tonic::Code::Cancelled => "Canceled".to_string(),
            other => format!("{other:?}"),
        };
        let [kind, service, method] = &self.0;
        METRICS.grpc_handled.with_label_values(&[kind, service, method, &code]).inc();
        true
    }
}

pub async fn track(request: Request, next: Next) -> Response {
    let Some(call) = Call::of(request.uri().path()) else { return next.run(request).await };
    let [kind, service, method] = &call.0;
    METRICS.grpc_started.with_label_values(&[kind, service, method]).inc();
    let response = next.run(request).await;
    if call.handled(response.headers()) {
        return response;
    }
    response.map(|body| Body::new(Trailers { body, call: Some(call) }))
}

/// A response body that counts its call when the trailers go by.
struct Trailers {
    body: Body,
    call: Option<Call>,
}

impl http_body::Body for Trailers {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let frame = ready!(Pin::new(&mut self.body).poll_frame(cx));
        if let Some(Ok(Some(trailers))) = frame.as_ref().map(|f| f.as_ref().map(Frame::trailers_ref)) {
            if let Some(call) = self.call.take() {
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
