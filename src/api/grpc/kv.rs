//! `etcdserverpb.KV`: Range, Put, DeleteRange, Txn, Compact.

use std::sync::Arc;

use etcd_client::proto::{
    PbCompactionRequest, PbCompactionResponse, PbCompare, PbCompareTarget, PbDeleteRequest, PbDeleteResponse,
    PbKvService, PbPutRequest, PbPutResponse, PbRangeRequest, PbRangeResponse, PbRangeStreamResponse,
    PbResponseHeader, PbResponseOp, PbTargetUnion, PbTxnOpRequest, PbTxnOpResponse, PbTxnRequest, PbTxnRequestOp, PbTxnResponse,
};
use prost::Message;
use tonic::{Request, Response, Status};

use super::{caller, header, status, to_pb_kv, unimplemented};
use crate::auth::Caller;
use crate::metrics::METRICS;
use crate::server::Node;
use crate::store::check_duplicate_keys;
use crate::store::types::{
    Command, Compare, CompareResult, CompareTarget, DeleteArgs, KvError, Op, OpResult, PutArgs, RangeArgs,
    RangeResult, SortOrder, SortTarget, TxnArgs,
};

pub struct KvService {
    node: Arc<Node>,
}

impl KvService {
    pub fn new(node: Arc<Node>) -> Self {
        KvService { node }
    }

    fn check_size(&self, request: &impl Message) -> Result<(), Status> {
        if request.encoded_len() as u64 > self.node.limits.max_request_bytes {
            return Err(status(KvError::RequestTooLarge));
        }
        Ok(())
    }

    /// Commits a write and returns its result and revision.
    async fn commit(&self, caller: &Caller, op: Op) -> Result<(OpResult, i64), Status> {
        let result = self.node.write_as(caller, Command::Write(op)).await.map_err(status)?;
        let outcome = result.outcome.map_err(status)?;
        Ok((outcome, result.revision))
    }
}

fn range_args(r: PbRangeRequest) -> RangeArgs {
    RangeArgs {
        key: r.key,
        range_end: r.range_end,
        limit: r.limit,
        revision: r.revision,
        sort_order: match r.sort_order {
            1 => SortOrder::Ascend,
            2 => SortOrder::Descend,
            _ => SortOrder::None,
        },
        sort_target: match r.sort_target {
            1 => SortTarget::Version,
            2 => SortTarget::Create,
            3 => SortTarget::Mod,
            4 => SortTarget::Value,
            _ => SortTarget::Key,
        },
        keys_only: r.keys_only,
        count_only: r.count_only,
        min_mod_revision: r.min_mod_revision,
        max_mod_revision: r.max_mod_revision,
        min_create_revision: r.min_create_revision,
        max_create_revision: r.max_create_revision,
    }
}

fn put_args(r: PbPutRequest) -> Result<PutArgs, KvError> {
    if r.key.is_empty() {
        return Err(KvError::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(KvError::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(KvError::LeaseProvided);
    }
    Ok(PutArgs {
        key: r.key,
        value: r.value,
        lease: r.lease,
        prev_kv: r.prev_kv,
        ignore_value: r.ignore_value,
        ignore_lease: r.ignore_lease,
    })
}

fn delete_args(r: PbDeleteRequest) -> Result<DeleteArgs, KvError> {
    if r.key.is_empty() {
        return Err(KvError::EmptyKey);
    }
    Ok(DeleteArgs { key: r.key, range_end: r.range_end, prev_kv: r.prev_kv })
}

fn checked_range_args(r: PbRangeRequest) -> Result<RangeArgs, KvError> {
    if r.key.is_empty() {
        return Err(KvError::EmptyKey);
    }
    Ok(range_args(r))
}

fn compare(c: PbCompare) -> Result<Compare, KvError> {
    if c.key.is_empty() {
        return Err(KvError::EmptyKey);
    }
    let u = c.target_union;
    let number = |want: fn(&PbTargetUnion) -> Option<i64>| u.as_ref().and_then(want).unwrap_or(0);
    let target = match PbCompareTarget::try_from(c.target).unwrap_or(PbCompareTarget::Version) {
        PbCompareTarget::Version => CompareTarget::Version(number(|t| match t {
            PbTargetUnion::Version(v) => Some(*v),
            _ => None,
        })),
        PbCompareTarget::Create => CompareTarget::Create(number(|t| match t {
            PbTargetUnion::CreateRevision(v) => Some(*v),
            _ => None,
        })),
        PbCompareTarget::Mod => CompareTarget::Mod(number(|t| match t {
            PbTargetUnion::ModRevision(v) => Some(*v),
            _ => None,
        })),
        PbCompareTarget::Lease => CompareTarget::Lease(number(|t| match t {
            PbTargetUnion::Lease(v) => Some(*v),
            _ => None,
        })),
        PbCompareTarget::Value => CompareTarget::Value(match &u {
            Some(PbTargetUnion::Value(v)) => v.clone(),
            _ => Vec::new(),
        }),
    };
    let result = match c.result {
        1 => CompareResult::Greater,
        2 => CompareResult::Less,
        3 => CompareResult::NotEqual,
        _ => CompareResult::Equal,
    };
    Ok(Compare { result, target, key: c.key, range_end: c.range_end })
}

fn ops(list: Vec<PbTxnRequestOp>, max_ops: u64) -> Result<Vec<Op>, KvError> {
    list.into_iter()
        .map(|op| match op.request {
            Some(PbTxnOpRequest::RequestRange(r)) => checked_range_args(r).map(Op::Range),
            Some(PbTxnOpRequest::RequestPut(r)) => put_args(r).map(Op::Put),
            Some(PbTxnOpRequest::RequestDeleteRange(r)) => delete_args(r).map(Op::Delete),
            Some(PbTxnOpRequest::RequestTxn(t)) => txn_args(t, max_ops).map(Op::Txn),
            None => Err(KvError::KeyNotFound),
        })
        .collect()
}

/// etcd's budget: a txn may hold `max_ops` ops per list, and a nested txn
/// only what its parent's longest list leaves.
fn txn_args(t: PbTxnRequest, max_ops: u64) -> Result<TxnArgs, KvError> {
    let longest = t.compare.len().max(t.success.len()).max(t.failure.len()) as u64;
    if longest > max_ops {
        return Err(KvError::TooManyOps);
    }
    let left = max_ops - longest;
    Ok(TxnArgs {
        compare: t.compare.into_iter().map(compare).collect::<Result<_, _>>()?,
        success: ops(t.success, left)?,
        failure: ops(t.failure, left)?,
    })
}

fn range_response(header: Option<PbResponseHeader>, r: RangeResult) -> PbRangeResponse {
    PbRangeResponse { header, kvs: r.kvs.into_iter().map(to_pb_kv).collect(), more: r.more, count: r.count }
}

/// As etcd answers a txn: the ops' responses carry only the revision in
/// their headers, and a nested txn's header is empty.
fn txn_response(header: Option<PbResponseHeader>, result: OpResult, revision: i64) -> PbTxnResponse {
    let OpResult::Txn { succeeded, responses } = result else {
        unreachable!("a txn yields a txn result")
    };
    let op_header = || Some(PbResponseHeader { revision, ..Default::default() });
    let responses = responses
        .into_iter()
        .map(|r| PbResponseOp {
            response: Some(match r {
                OpResult::Range(r) => PbTxnOpResponse::ResponseRange(range_response(op_header(), r)),
                OpResult::Put { prev_kv } => {
                    PbTxnOpResponse::ResponsePut(PbPutResponse { header: op_header(), prev_kv: prev_kv.map(to_pb_kv) })
                }
                OpResult::Delete { deleted, prev_kvs } => PbTxnOpResponse::ResponseDeleteRange(PbDeleteResponse {
                    header: op_header(),
                    deleted,
                    prev_kvs: prev_kvs.into_iter().map(to_pb_kv).collect(),
                }),
                nested @ OpResult::Txn { .. } => {
                    PbTxnOpResponse::ResponseTxn(txn_response(Some(PbResponseHeader::default()), nested, revision))
                }
                OpResult::Done => unreachable!("txn ops report results"),
            }),
        })
        .collect();
    PbTxnResponse { header, succeeded, responses }
}

#[tonic::async_trait]
impl PbKvService for KvService {
    async fn range(&self, request: Request<PbRangeRequest>) -> Result<Response<PbRangeResponse>, Status> {
        METRICS.ranges.inc();
        let caller = caller(&self.node, &request).await?;
        let r = request.into_inner();
        let serializable = r.serializable;
        let args = checked_range_args(r).map_err(status)?;
        let (result, revision) = self.node.range(&caller, args, serializable).await.map_err(status)?;
        Ok(Response::new(range_response(header(&self.node, revision), result)))
    }

    type RangeStreamStream = futures::stream::Empty<Result<PbRangeStreamResponse, Status>>;

    async fn range_stream(&self, _: Request<PbRangeRequest>) -> Result<Response<Self::RangeStreamStream>, Status> {
        Err(unimplemented("RangeStream"))
    }

    async fn put(&self, request: Request<PbPutRequest>) -> Result<Response<PbPutResponse>, Status> {
        self.check_size(request.get_ref())?;
        let caller = caller(&self.node, &request).await?;
        METRICS.puts.inc();
        let args = put_args(request.into_inner()).map_err(status)?;
        let (result, revision) = self.commit(&caller, Op::Put(args)).await?;
        let OpResult::Put { prev_kv } = result else { unreachable!("a put yields a put result") };
        Ok(Response::new(PbPutResponse { header: header(&self.node, revision), prev_kv: prev_kv.map(to_pb_kv) }))
    }

    async fn delete_range(&self, request: Request<PbDeleteRequest>) -> Result<Response<PbDeleteResponse>, Status> {
        let caller = caller(&self.node, &request).await?;
        METRICS.deletes.inc();
        let args = delete_args(request.into_inner()).map_err(status)?;
        let (result, revision) = self.commit(&caller, Op::Delete(args)).await?;
        let OpResult::Delete { deleted, prev_kvs } = result else { unreachable!("a delete yields a delete result") };
        Ok(Response::new(PbDeleteResponse {
            header: header(&self.node, revision),
            deleted,
            prev_kvs: prev_kvs.into_iter().map(to_pb_kv).collect(),
        }))
    }

    async fn txn(&self, request: Request<PbTxnRequest>) -> Result<Response<PbTxnResponse>, Status> {
        self.check_size(request.get_ref())?;
        let caller = caller(&self.node, &request).await?;
        METRICS.txns.inc();
        let args = txn_args(request.into_inner(), self.node.limits.max_txn_ops).map_err(status)?;
        check_duplicate_keys(&args).map_err(status)?;
        let (result, revision) = if args.is_read_only() {
            self.node.read_txn(&caller, args, false).await.map_err(status)?
        } else {
            self.commit(&caller, Op::Txn(args)).await?
        };
        Ok(Response::new(txn_response(header(&self.node, revision), result, revision)))
    }

    async fn compact(&self, request: Request<PbCompactionRequest>) -> Result<Response<PbCompactionResponse>, Status> {
        let caller = caller(&self.node, &request).await?;
        // Compaction drops everyone's history: etcd (3.5.28 on) leaves it to root.
        self.node.store.auth.state().check_admin(caller.user()).map_err(status)?;
        let r = request.into_inner();
        let result = self
            .node
            .write_as(&caller, Command::Compact { revision: r.revision, physical: r.physical })
            .await
            .map_err(status)?;
        if r.physical {
            // etcd answers a physical compaction once this member has removed the old versions.
            let mut removed = self.node.store.physical_compaction();
            removed.wait_for(|done| *done >= r.revision).await.map_err(|_| status(KvError::Stopped))?;
        }
        Ok(Response::new(PbCompactionResponse { header: header(&self.node, result.revision) }))
    }
}
