//! `etcdserverpb.Maintenance`: Status, alarms, hashes, defragmentation,
//! Snapshot (a copy of the state) and MoveLeader (leader transfer).

use std::sync::Arc;

use etcd_client::proto::{
    PbAlarmMember, PbAlarmRequest, PbAlarmResponse, PbDefragmentRequest, PbDefragmentResponse, PbDowngradeRequest,
    PbDowngradeResponse, PbHashKvRequest, PbHashKvResponse, PbHashRequest, PbHashResponse, PbMaintenanceService,
    PbMoveLeaderRequest, PbMoveLeaderResponse, PbSnapshotRequest, PbSnapshotResponse, PbStatusRequest,
    PbStatusResponse,
};
use tonic::{Request, Response, Status};

use super::{header, require_admin, require_user, status};
use crate::server::Node;
use crate::store::maintenance::{ALARM_CORRUPT, ALARM_NOSPACE};
use crate::store::types::{Command, KvError};

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
        // Anyone known may look at alarms; raising or clearing one is root's.
        match request.get_ref().action {
            0 => require_user(&self.node, &request).await?,
            _ => require_admin(&self.node, &request).await?,
        }
        let request = request.into_inner();
        let listed = |alarms: Vec<(u64, u8)>| -> Vec<PbAlarmMember> {
            alarms.into_iter().map(|(member_id, alarm)| PbAlarmMember { member_id, alarm: alarm.into() }).collect()
        };
        let alarms = match request.action {
            0 => {
                self.node.consensus.read_barrier().await.map_err(status)?;
                listed(self.node.store.alarms().map_err(status)?)
            }
            action @ (1 | 2) => {
                let alarm = u8::try_from(request.alarm).map_err(|_| Status::invalid_argument("unknown alarm type"))?;
                let activate = action == 1;
                let command = Command::Alarm { activate, member_id: request.member_id, alarm };
                self.node.consensus.write(command).await.map_err(status)?;
                if !activate {
                    tracing::info!(member_id = format!("{:x}", request.member_id), alarm, "alarm disarmed");
                }
                listed(vec![(request.member_id, alarm)])
            }
            _ => return Err(Status::invalid_argument("unknown alarm action")),
        };
        Ok(Response::new(PbAlarmResponse { header: header(&self.node, self.node.store.revision()), alarms }))
    }

    async fn status(&self, request: Request<PbStatusRequest>) -> Result<Response<PbStatusResponse>, Status> {
        require_user(&self.node, &request).await?;
        let metrics = self.node.consensus.metrics();
        let size = self.node.store.size_bytes() as i64;
        let cluster = self.node.consensus.cluster().await.map_err(status)?;
        let is_learner = cluster.members.iter().any(|m| m.id == self.node.member_id && m.is_learner);
        Ok(Response::new(PbStatusResponse {
            header: header(&self.node, self.node.store.revision()),
            version: ETCD_VERSION.to_string(),
            db_size: size,
            db_size_in_use: size,
            leader: metrics.current_leader.unwrap_or(0),
            raft_index: metrics.last_log_index.unwrap_or(0),
            raft_term: metrics.current_term,
            raft_applied_index: metrics.last_applied.map_or(0, |id| id.index),
            is_learner,
            errors: self
                .node
                .store
                .alarms()
                .map_err(status)?
                .into_iter()
                .map(|(member, alarm)| format!("memberID:{member} alarm:{} ", alarm_name(alarm)))
                .collect(),
            ..Default::default()
        }))
    }

    async fn defragment(&self, request: Request<PbDefragmentRequest>) -> Result<Response<PbDefragmentResponse>, Status> {
        require_admin(&self.node, &request).await?;
        let store = self.node.store.clone();
        let started = std::time::Instant::now();
        let before = store.size_bytes();
        tokio::task::spawn_blocking(move || store.defragment()).await.map_err(|e| Status::internal(e.to_string()))?;
        tracing::info!(
            took = ?started.elapsed(),
            size_before = before,
            size_after = self.node.store.size_bytes(),
            "finished defragmenting the state database"
        );
        // etcd's answer carries no header.
        Ok(Response::new(PbDefragmentResponse { header: None }))
    }

    async fn hash(&self, request: Request<PbHashRequest>) -> Result<Response<PbHashResponse>, Status> {
        require_admin(&self.node, &request).await?;
        let store = self.node.store.clone();
        let hash = blocking(move || store.hash()).await?;
        Ok(Response::new(PbHashResponse { header: header(&self.node, self.node.store.revision()), hash }))
    }

    async fn hash_kv(&self, request: Request<PbHashKvRequest>) -> Result<Response<PbHashKvResponse>, Status> {
        require_admin(&self.node, &request).await?;
        let (store, revision) = (self.node.store.clone(), request.get_ref().revision);
        let (hash, hash_revision, compact_revision) = blocking(move || store.hash_kv(revision)).await?;
        Ok(Response::new(PbHashKvResponse {
            header: header(&self.node, self.node.store.revision()),
            hash,
            compact_revision,
            hash_revision,
        }))
    }

    type SnapshotStream = tokio_stream::wrappers::ReceiverStream<Result<PbSnapshotResponse, Status>>;

    /// A point-in-time copy of this member's state, streamed from a RocksDB
    /// snapshot by a blocking thread as the client takes it.
    async fn snapshot(&self, request: Request<PbSnapshotRequest>) -> Result<Response<Self::SnapshotStream>, Status> {
        require_admin(&self.node, &request).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let store = self.node.store.clone();
        let mut header = header(&self.node, self.node.store.revision());
        tokio::task::spawn_blocking(move || {
            let sent = store.write_backup(|blob| {
                let message = PbSnapshotResponse { header: header.take(), blob, ..Default::default() };
                tx.blocking_send(Ok(message)).is_ok()
            });
            if let Err(e) = sent {
                let _ = tx.blocking_send(Err(status(e)));
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn move_leader(&self, request: Request<PbMoveLeaderRequest>) -> Result<Response<PbMoveLeaderResponse>, Status> {
        require_admin(&self.node, &request).await?;
        let target = request.into_inner().target_id;
        self.node.consensus.move_leader(target).await.map_err(status)?;
        // etcd's answer carries no header.
        Ok(Response::new(PbMoveLeaderResponse { header: None }))
    }

    async fn downgrade(&self, request: Request<PbDowngradeRequest>) -> Result<Response<PbDowngradeResponse>, Status> {
        require_admin(&self.node, &request).await?;
        Err(Status::failed_precondition(
            "cairn: cluster downgrade is not supported; every cairn version serves the etcd API it reports",
        ))
    }
}

/// etcd's AlarmType names.
fn alarm_name(alarm: u8) -> &'static str {
    match alarm {
        ALARM_NOSPACE => "NOSPACE",
        ALARM_CORRUPT => "CORRUPT",
        _ => "NONE",
    }
}

/// Runs a store read off the async workers.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T, KvError> + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(work).await.map_err(|e| Status::internal(e.to_string()))?.map_err(status)
}
