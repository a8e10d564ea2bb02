//! `etcdserverpb.Maintenance`: Status and an empty alarm list so far; the
//! rest of the service belongs to a later issue and says so.

use std::sync::Arc;

use etcd_client::proto::{
    PbAlarmRequest, PbAlarmResponse, PbDefragmentRequest, PbDefragmentResponse, PbDowngradeRequest,
    PbDowngradeResponse, PbHashKvRequest, PbHashKvResponse, PbHashRequest, PbHashResponse, PbMaintenanceService,
    PbMoveLeaderRequest, PbMoveLeaderResponse, PbSnapshotRequest, PbSnapshotResponse, PbStatusRequest,
    PbStatusResponse,
};
use tonic::{Request, Response, Status};

use super::{header, unimplemented};
use crate::server::Node;

/// The etcd server version cairn answers as (the API level it implements).
pub const ETCD_VERSION: &str = "3.5.0";

pub struct MaintenanceService {
    node: Arc<Node>,
}

impl MaintenanceService {
    pub fn new(node: Arc<Node>) -> Self {
        MaintenanceService { node }
    }
}

#[tonic::async_trait]
impl PbMaintenanceService for MaintenanceService {
    async fn alarm(&self, request: Request<PbAlarmRequest>) -> Result<Response<PbAlarmResponse>, Status> {
        // 0 = GET: cairn raises no alarms yet (it refuses writes over quota directly).
        if request.get_ref().action != 0 {
            return Err(unimplemented("Alarm activate/deactivate"));
        }
        Ok(Response::new(PbAlarmResponse { header: header(&self.node, self.node.store.revision()), alarms: Vec::new() }))
    }

    async fn status(&self, _: Request<PbStatusRequest>) -> Result<Response<PbStatusResponse>, Status> {
        let metrics = self.node.consensus.metrics();
        let size = self.node.store.size_bytes() as i64;
        Ok(Response::new(PbStatusResponse {
            header: header(&self.node, self.node.store.revision()),
            version: ETCD_VERSION.to_string(),
            db_size: size,
            db_size_in_use: size,
            leader: metrics.current_leader.unwrap_or(0),
            raft_index: metrics.last_log_index.unwrap_or(0),
            raft_term: metrics.current_term,
            raft_applied_index: metrics.last_applied.map_or(0, |id| id.index),
            is_learner: false,
            ..Default::default()
        }))
    }

    async fn defragment(&self, _: Request<PbDefragmentRequest>) -> Result<Response<PbDefragmentResponse>, Status> {
        Err(unimplemented("Defragment"))
    }

    async fn hash(&self, _: Request<PbHashRequest>) -> Result<Response<PbHashResponse>, Status> {
        Err(unimplemented("Hash"))
    }

    async fn hash_kv(&self, _: Request<PbHashKvRequest>) -> Result<Response<PbHashKvResponse>, Status> {
        Err(unimplemented("HashKV"))
    }

    type SnapshotStream = futures::stream::Empty<Result<PbSnapshotResponse, Status>>;

    async fn snapshot(&self, _: Request<PbSnapshotRequest>) -> Result<Response<Self::SnapshotStream>, Status> {
        Err(unimplemented("Snapshot"))
    }

    async fn move_leader(&self, _: Request<PbMoveLeaderRequest>) -> Result<Response<PbMoveLeaderResponse>, Status> {
        Err(unimplemented("MoveLeader"))
    }

    async fn downgrade(&self, _: Request<PbDowngradeRequest>) -> Result<Response<PbDowngradeResponse>, Status> {
        Err(unimplemented("Downgrade"))
    }
}
