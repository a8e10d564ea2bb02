//! `etcdserverpb.Cluster`: MemberList so far. Raft's membership says who is
//! in the cluster; the members' own published records add client URLs.

use std::sync::Arc;

use etcd_client::proto::{
    PbClusterService, PbMember, PbMemberAddRequest, PbMemberAddResponse, PbMemberListRequest, PbMemberListResponse,
    PbMemberPromoteRequest, PbMemberPromoteResponse, PbMemberRemoveRequest, PbMemberRemoveResponse,
    PbMemberUpdateRequest, PbMemberUpdateResponse,
};
use tonic::{Request, Response, Status};

use super::{header, status, unimplemented};
use crate::server::Node;

pub struct ClusterService {
    node: Arc<Node>,
}

impl ClusterService {
    pub fn new(node: Arc<Node>) -> Self {
        ClusterService { node }
    }
}

#[tonic::async_trait]
impl PbClusterService for ClusterService {
    async fn member_add(&self, _: Request<PbMemberAddRequest>) -> Result<Response<PbMemberAddResponse>, Status> {
        Err(unimplemented("MemberAdd"))
    }

    async fn member_remove(&self, _: Request<PbMemberRemoveRequest>) -> Result<Response<PbMemberRemoveResponse>, Status> {
        Err(unimplemented("MemberRemove"))
    }

    async fn member_update(&self, _: Request<PbMemberUpdateRequest>) -> Result<Response<PbMemberUpdateResponse>, Status> {
        Err(unimplemented("MemberUpdate"))
    }

    async fn member_list(&self, request: Request<PbMemberListRequest>) -> Result<Response<PbMemberListResponse>, Status> {
        if request.get_ref().linearizable {
            self.node.consensus.read_barrier().await.map_err(status)?;
        }
        let published = self.node.store.members();
        let members = self
            .node
            .consensus
            .members()
            .into_iter()
            .map(|(id, peer)| {
                let record = published.iter().find(|m| m.id == id);
                PbMember {
                    id,
                    // etcd lists a member that has not published itself yet with an empty name.
                    name: record.map(|m| m.name.clone()).unwrap_or_default(),
                    peer_ur_ls: peer.peer_urls,
                    client_ur_ls: record.map(|m| m.client_urls.clone()).unwrap_or_default(),
                    is_learner: false,
                }
            })
            .collect();
        Ok(Response::new(PbMemberListResponse { header: header(&self.node, self.node.store.revision()), members }))
    }

    async fn member_promote(&self, _: Request<PbMemberPromoteRequest>) -> Result<Response<PbMemberPromoteResponse>, Status> {
        Err(unimplemented("MemberPromote"))
    }
}
