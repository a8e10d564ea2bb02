//! The client port: etcd's gRPC services and its HTTP endpoints, served on
//! the same listener as etcd does. The only module that knows protobuf types.

pub mod authority;
pub mod grpc;
pub mod http;

use std::sync::Arc;

use tonic::service::Routes;

use crate::server::Node;

pub fn client_routes(node: Arc<Node>) -> Routes {
    let grpc = grpc::routes(node.clone()).into_axum_router().layer(axum::middleware::from_fn(grpc::metered::track));
    Routes::from(grpc.merge(http::router(node)))
}
