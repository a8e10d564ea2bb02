//! etcd's gRPC services; one file per service. Shared here: response headers,
//! key-value conversion, and etcd's error codes and messages.

pub mod auth;
mod cluster;
mod election;
mod kv;
mod lease;
mod lock;
mod maintenance;
pub mod metered;
mod ownership;
mod watch;

pub use maintenance::ETCD_VERSION;

use std::future::Future;
use std::sync::Arc;

use etcd_client::proto::{
    PbClusterServer, PbKeyValue, PbKvServer, PbLeaseServer, PbMaintenanceServer, PbResponseHeader, PbWatchServer,
};
use tonic::service::Routes;
use tonic::{Code, Request, Status};

use crate::auth::Caller;
use crate::server::Node;
use crate::tls::identity::common_name;
use crate::tls::ConnInfo;
use crate::store::types::{KeyValue, KvError};

/// gRPC framing beyond the request itself that etcd allows on top of
/// --max-request-bytes.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

pub fn routes(node: Arc<Node>) -> Routes {
    let max_recv = node.limits.max_request_bytes as usize + GRPC_OVERHEAD_BYTES;
    Routes::new(PbKvServer::new(kv::KvService::new(node.clone())).max_decoding_message_size(max_recv).max_encoding_message_size(usize::MAX))
        .add_service(PbMaintenanceServer::new(maintenance::MaintenanceService::new(node.clone())))
        .add_service(PbClusterServer::new(cluster::ClusterService::new(node.clone())))
        .add_service(PbWatchServer::new(watch::WatchService::new(node.clone())).max_encoding_message_size(usize::MAX))
        .add_service(PbLeaseServer::new(lease::LeaseService::new(node.clone())))
        .add_service(auth::pb::etcdserverpb::auth_server::AuthServer::new(auth::AuthService::new(node.clone())))
        .add_service(lock::pb::lock_server::LockServer::new(lock::LockService::new(node.clone())))
        .add_service(election::pb::election_server::ElectionServer::new(election::ElectionService::new(node)))
}

/// Who sent `request`: the user its token names (etcd's `token` metadata,
/// or `authorization` as the gateway passes it on), else the common name of
/// its connection's verified client certificate. The future holds nothing
/// of the request, so a stream's request may be asked about.
pub fn caller<'n, T>(node: &'n Node, request: &Request<T>) -> impl Future<Output = Result<Caller, Status>> + Send + 'n {
    let metadata = request.metadata();
    let token = metadata
        .get("token")
        .or_else(|| metadata.get("authorization"))
        .and_then(|v| v.to_str().ok())
        .map(|t| t.strip_prefix("Bearer ").unwrap_or(t).to_string());
    let common_name = match token {
        None if node.store.auth.state().enabled => client_common_name(request),
        _ => None,
    };
    async move { node.identify(token, common_name).await.map_err(status) }
}

fn client_common_name<T>(request: &Request<T>) -> Option<String> {
    let chain = request.extensions().get::<ConnInfo>()?.peer_certificates.as_ref()?;
    common_name(chain.first()?)
}

/// With auth on, that the sender of `request` holds the root role.
pub async fn require_admin<T>(node: &Node, request: &Request<T>) -> Result<(), Status> {
    let caller = caller(node, request).await?;
    node.store.auth.state().check_admin(caller.user()).map_err(status)
}

/// With auth on, that the sender of `request` is a known user.
pub async fn require_user<T>(node: &Node, request: &Request<T>) -> Result<(), Status> {
    let caller = caller(node, request).await?;
    node.store.auth.state().check_user(caller.user()).map_err(status)
}

pub fn header(node: &Node, revision: i64) -> Option<PbResponseHeader> {
    let h = node.header(revision);
    Some(PbResponseHeader { cluster_id: h.cluster_id, member_id: h.member_id, revision: h.revision, raft_term: h.raft_term })
}

pub fn to_pb_kv(kv: KeyValue) -> PbKeyValue {
    PbKeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

/// etcd's gRPC status for each error; clients match on code and message.
pub fn status(e: KvError) -> Status {
    let code = match e {
        KvError::EmptyKey
        | KvError::KeyNotFound
        | KvError::ValueProvided
        | KvError::LeaseProvided
        | KvError::TooManyOps
        | KvError::DuplicateKey
        | KvError::RequestTooLarge
        | KvError::BadPeerUrls
        | KvError::UserEmpty
        | KvError::RoleEmpty
        | KvError::AuthFailed
        | KvError::PermissionNotGiven
        | KvError::InvalidAuthMgmt
        | KvError::AuthOldRevision => Code::InvalidArgument,
        KvError::Compacted | KvError::FutureRevision | KvError::LeaseTtlTooLarge => Code::OutOfRange,
        KvError::LeaseExist
        | KvError::PeerUrlExists
        | KvError::NotEnoughStartedMembers
        | KvError::MemberNotLearner
        | KvError::LearnerNotReady
        | KvError::TooManyLearners
        | KvError::MemberRemoved
        | KvError::NotLeader
        | KvError::BadLeaderTransferee
        | KvError::RootUserNotExist
        | KvError::RootRoleNotExist
        | KvError::UserAlreadyExist
        | KvError::UserNotFound
        | KvError::RoleAlreadyExist
        | KvError::RoleNotFound
        | KvError::RoleNotGranted
        | KvError::PermissionNotGranted
        | KvError::AuthNotEnabled => Code::FailedPrecondition,
        KvError::PermissionDenied => Code::PermissionDenied,
        KvError::InvalidAuthToken => Code::Unauthenticated,
        KvError::LeaderTransferTimeout => Code::DeadlineExceeded,
        KvError::LeaseNotFound | KvError::MemberNotFound => Code::NotFound,
        KvError::NoSpace | KvError::TooManyRequests => Code::ResourceExhausted,
        KvError::NoLeader | KvError::LeaderChanged | KvError::Timeout | KvError::Stopped | KvError::Unhealthy | KvError::InstallingSnapshot => {
            Code::Unavailable
        }
        KvError::Internal(_) | KvError::NeedsDisk => Code::Internal,
        KvError::Corrupt => Code::DataLoss,
    };
    Status::new(code, e.to_string())
}

pub fn unimplemented(what: &str) -> Status {
    Status::unimplemented(format!("cairn: {what} is not implemented yet"))
}
