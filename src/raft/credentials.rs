//! Who sends a peer request. Every request carries the peer protocol
//! version and the sender's cluster id and member id as gRPC metadata; the
//! receiver refuses a request in a protocol it does not speak, from another
//! cluster (a member started with another --initial-cluster-token, or a
//! stray process pointed at the wrong peers), or from a member it does not
//! know, before any of it reaches Raft.

use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::service::Interceptor;
use tonic::{Request, Status};

const PROTOCOL_HEADER: &str = "cairn-peer-protocol";
const CLUSTER_HEADER: &str = "cairn-cluster-id";
const MEMBER_HEADER: &str = "cairn-member-id";

/// The peer wire format's version (the postcard payloads of raft/'s
/// types): raised when a payload changes incompatibly, so that members of
/// two versions refuse each other's requests instead of misreading them.
pub const PEER_PROTOCOL: u32 = 1;

/// The sender's side: adds this member's credentials to each request.
#[derive(Clone, Debug)]
pub struct Credentials {
    cluster: Option<AsciiMetadataValue>,
    member: Option<AsciiMetadataValue>,
}

fn hex_value(id: u64) -> Option<AsciiMetadataValue> {
    (id != 0).then(|| AsciiMetadataValue::try_from(format!("{id:x}")).expect("hex digits are valid metadata"))
}

impl Credentials {
    pub fn of_member(member_id: u64, cluster_id: u64) -> Credentials {
        Credentials { cluster: hex_value(cluster_id), member: hex_value(member_id) }
    }

    /// A process that is not a member yet: it may only ask for the cluster.
    pub fn anonymous() -> Credentials {
        Credentials { cluster: None, member: None }
    }
}

impl Interceptor for Credentials {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let metadata = request.metadata_mut();
        metadata.insert(PROTOCOL_HEADER, AsciiMetadataValue::from(PEER_PROTOCOL));
        if let Some(cluster) = &self.cluster {
            metadata.insert(CLUSTER_HEADER, cluster.clone());
        }
        if let Some(member) = &self.member {
            metadata.insert(MEMBER_HEADER, member.clone());
        }
        Ok(request)
    }
}

/// The member id a request claims to come from.
pub fn sender(metadata: &MetadataMap) -> Option<u64> {
    header_id(metadata, MEMBER_HEADER)
}

fn header_id(metadata: &MetadataMap, name: &str) -> Option<u64> {
    let text = metadata.get(name)?.to_str().ok()?;
    u64::from_str_radix(text, 16).ok()
}

/// What a request may do with the credentials it carries.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// Asking who is in the cluster: anyone speaking the protocol (a member
    /// about to join has no ids yet).
    Protocol,
    /// Anything else: a member of this cluster.
    Member,
}

/// The receiver's side: Ok when the request may go on.
pub fn admit(metadata: &MetadataMap, needs: Needs, cluster_id: u64, is_member: impl Fn(u64) -> bool) -> Result<(), Status> {
    let protocol = metadata.get(PROTOCOL_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("none");
    if protocol != PEER_PROTOCOL.to_string() {
        tracing::warn!(remote_protocol = protocol, local_protocol = PEER_PROTOCOL, "rejected a peer request in another peer protocol");
        return Err(Status::failed_precondition(format!(
            "cairn: peer protocol {protocol} is not understood by this member (it speaks {PEER_PROTOCOL})"
        )));
    }
    let remote_cluster = header_id(metadata, CLUSTER_HEADER);
    let remote_member = header_id(metadata, MEMBER_HEADER);
    if needs == Needs::Protocol && remote_cluster.is_none() {
        return Ok(());
    }
    if remote_cluster != Some(cluster_id) {
        tracing::warn!(
            local_member_cluster_id = format!("{cluster_id:x}"),
            remote_peer_cluster_id = format!("{:x}", remote_cluster.unwrap_or_default()),
            remote_peer_id = format!("{:x}", remote_member.unwrap_or_default()),
            "request cluster ID mismatch"
        );
        return Err(Status::failed_precondition(format!(
            "cairn: request cluster ID mismatch: the request is for cluster {:x}, this is cluster {cluster_id:x}",
            remote_cluster.unwrap_or_default()
        )));
    }
    match remote_member {
        Some(id) if is_member(id) => Ok(()),
        _ if needs == Needs::Protocol => Ok(()),
        id => {
            let id = format!("{:x}", id.unwrap_or_default());
            tracing::warn!(remote_peer_id = %id, "rejected a peer request from a member not in this cluster");
            Err(Status::permission_denied(format!("cairn: member {id} is not a member of cluster {cluster_id:x}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(credentials: Credentials) -> MetadataMap {
        let mut credentials = credentials;
        credentials.call(Request::new(())).unwrap().metadata().clone()
    }

    #[test]
    fn members_of_this_cluster_only() {
        let known = |id| id == 7;
        let ok = |c, needs| admit(&metadata(c), needs, 0xc1, known);
        assert!(ok(Credentials::of_member(7, 0xc1), Needs::Member).is_ok());
        assert_eq!(ok(Credentials::of_member(7, 0xc2), Needs::Member).unwrap_err().code(), tonic::Code::FailedPrecondition);
        assert_eq!(ok(Credentials::of_member(8, 0xc1), Needs::Member).unwrap_err().code(), tonic::Code::PermissionDenied);
        assert!(ok(Credentials::anonymous(), Needs::Member).is_err());
        assert!(ok(Credentials::anonymous(), Needs::Protocol).is_ok());
        assert!(ok(Credentials::of_member(8, 0xc2), Needs::Protocol).is_err());
        let mut other_version = metadata(Credentials::of_member(7, 0xc1));
        other_version.insert(PROTOCOL_HEADER, AsciiMetadataValue::from(PEER_PROTOCOL + 1));
        assert!(admit(&other_version, Needs::Member, 0xc1, known).unwrap_err().message().contains("peer protocol 2"));
        assert!(admit(&MetadataMap::new(), Needs::Protocol, 0xc1, known).is_err());
    }
}
