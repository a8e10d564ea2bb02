//! The client port: etcd's gRPC services and its HTTP endpoints, served on
//! the same listener as etcd does. The only module that knows protobuf types.

pub mod authority;
pub mod grpc;
pub mod http;

use std::sync::Arc;

use tonic::service::Routes;

use crate::server::Node;

/// What a client listener serves.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ClientSurface {
    GrpcAndHttp,
    Grpc,
    Http,
}

/// The client API: gRPC, and the HTTP endpoints with the JSON gateway
/// (unless `gateway` is off), which calls the same gRPC services.
pub fn client_routes(node: Arc<Node>, surface: ClientSurface, gateway: bool) -> Routes {
    let grpc = grpc::routes(node.clone()).into_axum_router().layer(axum::middleware::from_fn(grpc::metered::track));
    let mut routes = match surface {
        ClientSurface::Http => axum::Router::new(),
        ClientSurface::GrpcAndHttp | ClientSurface::Grpc => grpc.clone(),
    };
    if surface != ClientSurface::Grpc {
        routes = routes.merge(http::router(node.clone()));
        if gateway {
            routes = routes.merge(http::gateway::routes(grpc, node.limits.max_request_bytes as usize));
        }
        routes = routes.fallback(unknown_path);
    }
    Routes::from(routes)
}

/// An unknown gRPC method is `Unimplemented`; any other unknown path is
/// HTTP's 404, as etcd answers it.
async fn unknown_path(headers: axum::http::HeaderMap) -> axum::response::Response {
    let grpc = headers.get(axum::http::header::CONTENT_TYPE).is_some_and(|t| t.as_bytes().starts_with(b"application/grpc"));
    match grpc {
        true => tonic::Status::unimplemented("").into_http(),
        false => axum::response::IntoResponse::into_response((axum::http::StatusCode::NOT_FOUND, "404 page not found\n")),
    }
}
