//! `etcdserverpb.Cluster`: runtime reconfiguration through Raft membership
//! changes (run by the leader, see `raft::members`), and the member list.

use std::sync::Arc;

use etcd_client::proto::{
    PbClusterService, PbMember, PbMemberAddRequest, PbMemberAddResponse, PbMemberListRequest, PbMemberListResponse,
    PbMemberPromoteRequest, PbMemberPromoteResponse, PbMemberRemoveRequest, PbMemberRemoveResponse,
    PbMemberUpdateRequest, PbMemberUpdateResponse,
};
use tonic::{Request, Response, Status};

use super::{header, require_admin, require_user, status};
use crate::raft::members::{MemberChange, MemberView};
use crate::server::Node;

pub struct ClusterService {
    node: Arc<Node>,
}

impl ClusterService {
    pub fn new(node: Arc<Node>) -> Self {
        ClusterService { node }
    }

    /// Makes a change and returns the members as they are after it: the
    /// barrier makes this member's view include the committed change.
    async fn change(&self, change: MemberChange) -> Result<(u64, Vec<PbMember>), Status> {
        let id = self.node.consensus.change_members(change).await.map_err(status)?;
        Ok((id, self.members(true).await?))
    }

    async fn members(&self, linearizable: bool) -> Result<Vec<PbMember>, Status> {
        if linearizable {
            self.node.consensus.read_barrier().await.map_err(status)?;
        }
        let cluster = self.node.consensus.cluster().await.map_err(status)?;
        Ok(cluster.members.into_iter().map(to_pb_member).collect())
    }

    /// etcd's Cluster service leaves the revision out of its headers.
    fn header(&self) -> Option<etcd_client::proto::PbResponseHeader> {
        header(&self.node, 0)
    }
}

fn to_pb_member(m: MemberView) -> PbMember {
    PbMember { id: m.id, name: m.name, peer_ur_ls: m.peer_urls, client_ur_ls: m.client_urls, is_learner: m.is_learner }
}

#[tonic::async_trait]
impl PbClusterService for ClusterService {
    async fn member_add(&self, request: Request<PbMemberAddRequest>) -> Result<Response<PbMemberAddResponse>, Status> {
        require_admin(&self.node, &request).await?;
        let request = request.into_inner();
        let change = MemberChange::Add { peer_urls: request.peer_ur_ls, learner: request.is_learner };
        let (id, members) = self.change(change).await?;
        let member = members.iter().find(|m| m.id == id).cloned();
        Ok(Response::new(PbMemberAddResponse { header: self.header(), member, members }))
    }

    async fn member_remove(
        &self,
        request: Request<PbMemberRemoveRequest>,
    ) -> Result<Response<PbMemberRemoveResponse>, Status> {
        require_admin(&self.node, &request).await?;
        let (_, members) = self.change(MemberChange::Remove { id: request.get_ref().id }).await?;
        Ok(Response::new(PbMemberRemoveResponse { header: self.header(), members }))
    }

    async fn member_update(
        &self,
        request: Request<PbMemberUpdateRequest>,
    ) -> Result<Response<PbMemberUpdateResponse>, Status> {
        require_admin(&self.node, &request).await?;
        let request = request.into_inner();
        let (_, members) = self.change(MemberChange::Update { id: request.id, peer_urls: request.peer_ur_ls }).await?;
        Ok(Response::new(PbMemberUpdateResponse { header: self.header(), members }))
    }

    async fn member_list(&self, request: Request<PbMemberListRequest>) -> Result<Response<PbMemberListResponse>, Status> {
        require_user(&self.node, &request).await?;
        let members = self.members(request.get_ref().linearizable).await?;
        Ok(Response::new(PbMemberListResponse { header: self.header(), members }))
    }

    async fn member_promote(
        &self,
        request: Request<PbMemberPromoteRequest>,
    ) -> Result<Response<PbMemberPromoteResponse>, Status> {
        require_admin(&self.node, &request).await?;
        let (_, members) = self.change(MemberChange::Promote { id: request.get_ref().id }).await?;
        Ok(Response::new(PbMemberPromoteResponse { header: self.header(), members }))
    }
}
