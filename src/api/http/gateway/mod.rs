//! etcd's gRPC gateway: `POST /v3/…` with a JSON body, answered in JSON.
//! Each request is transcoded to protobuf and handed to this member's own
//! gRPC services in-process, so a gateway client gets exactly what a gRPC
//! client gets: the same checks, auth (the `Authorization` header is the
//! token) and errors, and the same metrics.

mod transcode;

use std::convert::Infallible;
use std::sync::LazyLock;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use futures::{Stream, StreamExt};
use http::uri::PathAndQuery;
use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor};
use tonic::client::Grpc;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::{Code, Status, Streaming};

use crate::tls::ConnInfo;
use transcode::{from_json, json_messages, to_json, DynamicCodec};

static DESCRIPTORS: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(include_bytes!(concat!(env!("OUT_DIR"), "/gateway.bin")).as_ref())
        .expect("build.rs writes a valid descriptor set")
});

/// etcd's gateway paths and the gRPC methods behind them.
const ROUTES: &[(&str, &str, &str)] = &[
    ("/v3/kv/range", "etcdserverpb.KV", "Range"),
    ("/v3/kv/put", "etcdserverpb.KV", "Put"),
    ("/v3/kv/deleterange", "etcdserverpb.KV", "DeleteRange"),
    ("/v3/kv/txn", "etcdserverpb.KV", "Txn"),
    ("/v3/kv/compaction", "etcdserverpb.KV", "Compact"),
    ("/v3/watch", "etcdserverpb.Watch", "Watch"),
    ("/v3/lease/grant", "etcdserverpb.Lease", "LeaseGrant"),
    ("/v3/lease/revoke", "etcdserverpb.Lease", "LeaseRevoke"),
    ("/v3/kv/lease/revoke", "etcdserverpb.Lease", "LeaseRevoke"),
    ("/v3/lease/keepalive", "etcdserverpb.Lease", "LeaseKeepAlive"),
    ("/v3/lease/timetolive", "etcdserverpb.Lease", "LeaseTimeToLive"),
    ("/v3/kv/lease/timetolive", "etcdserverpb.Lease", "LeaseTimeToLive"),
    ("/v3/lease/leases", "etcdserverpb.Lease", "LeaseLeases"),
    ("/v3/kv/lease/leases", "etcdserverpb.Lease", "LeaseLeases"),
    ("/v3/cluster/member/add", "etcdserverpb.Cluster", "MemberAdd"),
    ("/v3/cluster/member/remove", "etcdserverpb.Cluster", "MemberRemove"),
    ("/v3/cluster/member/update", "etcdserverpb.Cluster", "MemberUpdate"),
    ("/v3/cluster/member/list", "etcdserverpb.Cluster", "MemberList"),
    ("/v3/cluster/member/promote", "etcdserverpb.Cluster", "MemberPromote"),
    ("/v3/maintenance/alarm", "etcdserverpb.Maintenance", "Alarm"),
    ("/v3/maintenance/status", "etcdserverpb.Maintenance", "Status"),
    ("/v3/maintenance/defragment", "etcdserverpb.Maintenance", "Defragment"),
    ("/v3/maintenance/hash", "etcdserverpb.Maintenance", "Hash"),
    ("/v3/maintenance/hashkv", "etcdserverpb.Maintenance", "HashKV"),
    ("/v3/maintenance/snapshot", "etcdserverpb.Maintenance", "Snapshot"),
    ("/v3/maintenance/transfer-leadership", "etcdserverpb.Maintenance", "MoveLeader"),
    ("/v3/maintenance/downgrade", "etcdserverpb.Maintenance", "Downgrade"),
    ("/v3/auth/enable", "etcdserverpb.Auth", "AuthEnable"),
    ("/v3/auth/disable", "etcdserverpb.Auth", "AuthDisable"),
    ("/v3/auth/status", "etcdserverpb.Auth", "AuthStatus"),
    ("/v3/auth/authenticate", "etcdserverpb.Auth", "Authenticate"),
    ("/v3/auth/user/add", "etcdserverpb.Auth", "UserAdd"),
    ("/v3/auth/user/get", "etcdserverpb.Auth", "UserGet"),
    ("/v3/auth/user/list", "etcdserverpb.Auth", "UserList"),
    ("/v3/auth/user/delete", "etcdserverpb.Auth", "UserDelete"),
    ("/v3/auth/user/changepw", "etcdserverpb.Auth", "UserChangePassword"),
    ("/v3/auth/user/grant", "etcdserverpb.Auth", "UserGrantRole"),
    ("/v3/auth/user/revoke", "etcdserverpb.Auth", "UserRevokeRole"),
    ("/v3/auth/role/add", "etcdserverpb.Auth", "RoleAdd"),
    ("/v3/auth/role/get", "etcdserverpb.Auth", "RoleGet"),
    ("/v3/auth/role/list", "etcdserverpb.Auth", "RoleList"),
    ("/v3/auth/role/delete", "etcdserverpb.Auth", "RoleDelete"),
    ("/v3/auth/role/grant", "etcdserverpb.Auth", "RoleGrantPermission"),
    ("/v3/auth/role/revoke", "etcdserverpb.Auth", "RoleRevokePermission"),
    ("/v3/lock/lock", "v3lockpb.Lock", "Lock"),
    ("/v3/lock/unlock", "v3lockpb.Lock", "Unlock"),
    ("/v3/election/campaign", "v3electionpb.Election", "Campaign"),
    ("/v3/election/proclaim", "v3electionpb.Election", "Proclaim"),
    ("/v3/election/leader", "v3electionpb.Election", "Leader"),
    ("/v3/election/observe", "v3electionpb.Election", "Observe"),
    ("/v3/election/resign", "v3electionpb.Election", "Resign"),
];

/// etcd 3.4 also serves every path under `/v3beta`, which tooz's etcd3gw
/// driver uses.
const OLD_PREFIX: &str = "/v3beta";

/// Routes every gateway path to `grpc`, the member's gRPC services.
pub fn routes(grpc: Router, max_request_bytes: usize) -> Router {
    // Base64 makes bytes a third longer, and JSON adds names and quotes.
    let max_body_bytes = 2 * max_request_bytes + 64 * 1024;
    ROUTES.iter().fold(Router::new(), |router, &(path, service, method)| {
        let method = method_descriptor(service, method);
        let grpc_path = PathAndQuery::try_from(format!("/{}/{}", method.parent_service().full_name(), method.name()))
            .expect("service and method names make a valid path");
        let grpc = grpc.clone();
        let handler =
            post(move |request: Request| call(grpc.clone(), method.clone(), grpc_path.clone(), max_body_bytes, request));
        let old_path = path.replacen("/v3", OLD_PREFIX, 1);
        router.route(path, handler.clone()).route(&old_path, handler)
    })
}

fn method_descriptor(service: &str, method: &str) -> MethodDescriptor {
    let service = DESCRIPTORS.get_service_by_name(service).expect("every gateway service is in the descriptor set");
    let found = service.methods().find(|m| m.name() == method);
    found.expect("every gateway method is in the descriptor set")
}

/// `path` is the gRPC method's, `/service/method`.
async fn call(grpc: Router, method: MethodDescriptor, path: PathAndQuery, max_body_bytes: usize, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let metadata = forwarded_metadata(&parts.headers);
    let mut extensions = tonic::Extensions::new();
    if let Some(connection) = parts.extensions.get::<ConnInfo>() {
        extensions.insert(connection.clone());
    }
    let codec = DynamicCodec { output: method.output() };
    let mut client = Grpc::new(grpc).max_decoding_message_size(usize::MAX);
    let ready = client.ready().await;
    debug_assert!(ready.is_ok(), "an axum router is always ready");
    let responses = if method.is_client_streaming() {
        let requests = json_messages(method.input(), body.into_data_stream());
        client.streaming(tonic::Request::from_parts(metadata, extensions, requests), path, codec).await
    } else {
        let json = match axum::body::to_bytes(body, max_body_bytes).await {
            Ok(json) => json,
            Err(e) => return unary_error(&Status::invalid_argument(e.to_string())),
        };
        let message = match from_json(&method.input(), &json) {
            Ok(message) => message,
            Err(e) => return unary_error(&Status::invalid_argument(e)),
        };
        client.server_streaming(tonic::Request::from_parts(metadata, extensions, message), path, codec).await
    };
    match responses {
        Ok(responses) if method.is_server_streaming() => streamed(responses.into_inner()),
        Ok(mut responses) => match responses.get_mut().message().await {
            Ok(Some(message)) => json_response(StatusCode::OK, &message),
            Ok(None) => unary_error(&Status::internal("the service sent no response")),
            Err(status) => unary_error(&status),
        },
        Err(status) if method.is_server_streaming() => stream_error(&status),
        Err(status) => unary_error(&status),
    }
}

/// What grpc-gateway passes on as gRPC metadata: `Authorization`, and every
/// `Grpc-Metadata-<name>` header as `<name>`.
fn forwarded_metadata(headers: &HeaderMap) -> MetadataMap {
    let mut metadata = MetadataMap::new();
    for (name, value) in headers {
        let key = match name.as_str() {
            "authorization" => "authorization",
            other => match other.strip_prefix("grpc-metadata-") {
                Some(key) => key,
                None => continue,
            },
        };
        if let (Ok(key), Ok(value)) = (MetadataKey::from_bytes(key.as_bytes()), MetadataValue::try_from(value.as_bytes())) {
            metadata.append(key, value);
        }
    }
    metadata
}

fn json_response(status: StatusCode, message: &DynamicMessage) -> Response {
    let mut json = Vec::with_capacity(256);
    to_json(message, &mut json);
    (status, [(header::CONTENT_TYPE, "application/json")], json).into_response()
}

/// A streaming call's answer: each message as `{"result":…}` and a line
/// break, and a failure, the last chunk, as `{"error":{…}}` alone.
fn streamed(responses: Streaming<DynamicMessage>) -> Response {
    let chunks = responses.map(|response| {
        Ok(match response {
            Ok(message) => {
                let mut line = Vec::with_capacity(256);
                line.extend_from_slice(b"{\"result\":");
                to_json(&message, &mut line);
                line.extend_from_slice(b"}\n");
                line
            }
            Err(status) => stream_error_chunk(&status),
        })
    });
    streaming_body(StatusCode::OK, chunks)
}

fn streaming_body(status: StatusCode, chunks: impl Stream<Item = Result<Vec<u8>, Infallible>> + Send + 'static) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], Body::from_stream(chunks)).into_response()
}

fn stream_error(status: &Status) -> Response {
    let chunk = stream_error_chunk(status);
    streaming_body(http_status(status.code()), futures::stream::once(async move { Ok(chunk) }))
}

fn stream_error_chunk(status: &Status) -> Vec<u8> {
    let http = http_status(status.code());
    let chunk = serde_json::json!({"error": {
        "grpc_code": status.code() as i32,
        "http_code": http.as_u16(),
        "message": status.message(),
        "http_status": http.canonical_reason().unwrap_or_default(),
    }});
    chunk.to_string().into_bytes()
}

/// A unary call's failure as grpc-gateway 1 writes it.
fn unary_error(status: &Status) -> Response {
    let body = serde_json::json!({"error": status.message(), "message": status.message(), "code": status.code() as i32});
    (http_status(status.code()), [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// grpc-gateway's HTTP status for a gRPC code.
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_names_a_method_of_the_descriptor_set() {
        for &(_, service, method) in ROUTES {
            method_descriptor(service, method);
        }
    }
}
