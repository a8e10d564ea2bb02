//! The key-value domain as the state machine sees it, independent of protobuf.
//! `api/grpc` maps etcd's messages to and from these types.
//!
//! Keys and values go through `serde_bytes`: postcard writes them exactly as
//! it writes a sequence of u8 (length, then the bytes), so the log, the store
//! and the peers see the same bytes, but as one copy instead of one call per byte.

use serde::{Deserialize, Serialize};

use crate::heap;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub lease: i64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortOrder {
    #[default]
    None,
    Ascend,
    Descend,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortTarget {
    #[default]
    Key,
    Version,
    Create,
    Mod,
    Value,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeArgs {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub range_end: Vec<u8>,
    pub limit: i64,
    pub revision: i64,
    pub sort_order: SortOrder,
    pub sort_target: SortTarget,
    pub keys_only: bool,
    pub count_only: bool,
    pub min_mod_revision: i64,
    pub max_mod_revision: i64,
    pub min_create_revision: i64,
    pub max_create_revision: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    pub more: bool,
    pub count: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutArgs {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub lease: i64,
    pub prev_kv: bool,
    pub ignore_value: bool,
    pub ignore_lease: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteArgs {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub range_end: Vec<u8>,
    pub prev_kv: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareResult {
    Equal,
    Greater,
    Less,
    NotEqual,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    Version(i64),
    Create(i64),
    Mod(i64),
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    Lease(i64),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    pub result: CompareResult,
    pub target: CompareTarget,
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub range_end: Vec<u8>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnArgs {
    pub compare: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Range(RangeArgs),
    Put(PutArgs),
    Delete(DeleteArgs),
    Txn(TxnArgs),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResult {
    Range(RangeResult),
    Put { prev_kv: Option<KeyValue> },
    Delete { deleted: i64, prev_kvs: Vec<KeyValue> },
    Txn { succeeded: bool, responses: Vec<OpResult> },
    /// A command with nothing to report beyond the revision (compaction, members).
    Done,
}

/// One key's change as watchers see it: its new state (or deletion, whose
/// `kv` holds only the key and the revision) and the state it replaced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub kv: KeyValue,
    pub deleted: bool,
    pub prev: Option<KeyValue>,
}

/// Every change of one revision, in the order the command made them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevisionChanges {
    pub revision: i64,
    pub changes: Vec<Change>,
}

impl Change {
    /// The memory the change holds: its struct and its buffers as malloc
    /// rounds them. Counting keys and values alone, the watch history held
    /// 1.6 times its budget with 8-byte keys and 256-byte values.
    pub fn size_bytes(&self) -> usize {
        size_of::<Change>() + self.buffers_bytes()
    }

    fn buffers_bytes(&self) -> usize {
        let buffers = |kv: &KeyValue| heap::allocation_bytes(kv.key.capacity()) + heap::allocation_bytes(kv.value.capacity());
        buffers(&self.kv) + self.prev.as_ref().map_or(0, buffers)
    }
}

impl RevisionChanges {
    /// The memory the revision holds in the watch hub: the Arc around it (two
    /// counts and the struct), its slot in the hub's queue, its changes.
    pub fn size_bytes(&self) -> usize {
        let arc = heap::allocation_bytes(2 * size_of::<usize>() + size_of::<RevisionChanges>());
        let changes = heap::allocation_bytes(self.changes.capacity() * size_of::<Change>());
        arc + size_of::<usize>() + changes + self.changes.iter().map(Change::buffers_bytes).sum::<usize>()
    }
}

/// A member as the cluster records it: Raft knows it by id and peer URLs; the
/// client URLs are published by the member itself once it runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
}

/// What goes through the Raft log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A Put, DeleteRange or Txn from a client.
    Write(Op),
    Compact { revision: i64, physical: bool },
    PublishMember(MemberInfo),
    LeaseGrant { id: i64, ttl: i64 },
    /// Deletes the lease and, in one revision, every key attached to it.
    LeaseRevoke { id: i64 },
    /// Records the TTLs leases had left (lease id, seconds), so a restart resumes from them.
    LeaseCheckpoint(Vec<(i64, i64)>),
    /// Member `id`, about to join as a learner, is to become a voter once it
    /// has caught up (what `member add` without `--learner` asks for).
    MarkPendingVoter { id: u64 },
    /// Raises (or clears) alarm `alarm` of member `member_id`, on every member alike.
    Alarm { activate: bool, member_id: u64, alarm: u8 },
    /// A change to users, roles or auth itself, asked for by `caller`.
    Auth { caller: Option<String>, change: crate::auth::AuthChange },
    /// A client's command made while auth was on: applied only if `user`
    /// may do it by the auth state of the moment it is applied.
    Authorized { user: String, command: Box<Command> },
}

/// The state machine's answer to one committed command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResult {
    /// The store revision once the command was applied.
    pub revision: i64,
    pub outcome: Result<OpResult, KvError>,
}

/// Errors a client can see, each with etcd's gRPC code and message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum KvError {
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: too many requests")]
    TooManyRequests,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExist,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    #[error("etcdserver: server stopped")]
    Stopped,
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: {0}")]
    Internal(String),
    /// A read limited to memory (`Reach::Memory`) met data on disk; it is
    /// retried where it may block, and never reaches a client.
    #[error("etcdserver: storage: the read needs the disk")]
    NeedsDisk,
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    #[error("etcdserver: given member URLs are invalid")]
    BadPeerUrls,
    #[error("etcdserver: unhealthy cluster")]
    Unhealthy,
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    NotEnoughStartedMembers,
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("etcdserver: too many learner members in cluster")]
    TooManyLearners,
    #[error("etcdserver: the member has been permanently removed from the cluster")]
    MemberRemoved,
    #[error("etcdserver: member is installing a snapshot from the leader, retry")]
    InstallingSnapshot,
    #[error("etcdserver: not leader")]
    NotLeader,
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    #[error("etcdserver: request timed out, leader transfer took too long")]
    LeaderTransferTimeout,
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    #[error("etcdserver: user name not found")]
    UserNotFound,
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("etcdserver: permission not given")]
    PermissionNotGiven,
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    #[error("etcdserver: revision of auth store is old")]
    AuthOldRevision,
    #[error("etcdserver: corrupt cluster")]
    Corrupt,
}

impl Op {
    /// True when executing the op cannot change the store, so it may be served
    /// as a (linearizable) read instead of going through the Raft log.
    pub fn is_read_only(&self) -> bool {
        match self {
            Op::Range(_) => true,
            Op::Put(_) | Op::Delete(_) => false,
            Op::Txn(t) => t.is_read_only(),
        }
    }
}

impl Command {
    /// Roughly how many bytes the command carries, to bound group commits.
    pub fn payload_bytes(&self) -> usize {
        fn op_bytes(op: &Op) -> usize {
            match op {
                Op::Range(r) => r.key.len() + r.range_end.len(),
                Op::Put(p) => p.key.len() + p.value.len(),
                Op::Delete(d) => d.key.len() + d.range_end.len(),
                Op::Txn(t) => t.success.iter().chain(&t.failure).map(op_bytes).sum::<usize>() + 64 * t.compare.len(),
            }
        }
        match self {
            Command::Write(op) => op_bytes(op),
            Command::LeaseCheckpoint(list) => 16 * list.len(),
            Command::Authorized { command, .. } => command.payload_bytes(),
            Command::Compact { .. }
            | Command::PublishMember(_)
            | Command::LeaseGrant { .. }
            | Command::LeaseRevoke { .. }
            | Command::MarkPendingVoter { .. }
            | Command::Alarm { .. }
            | Command::Auth { .. } => 64,
        }
    }
}

impl Command {
    /// True when a client's command may add data (see `Op::adds_data`).
    pub fn adds_data(&self) -> bool {
        match self.unwrapped() {
            Command::Write(op) => op.adds_data(),
            _ => false,
        }
    }

    /// True when the command changes keys or leases: what a CORRUPT alarm
    /// refuses (as etcd's corrupt applier does); alarms, members and auth
    /// still get through, so the alarm can be handled.
    pub fn changes_data(&self) -> bool {
        match self.unwrapped() {
            Command::Write(op) => !op.is_read_only(),
            Command::Compact { .. } | Command::LeaseGrant { .. } | Command::LeaseRevoke { .. } => true,
            _ => false,
        }
    }

    /// True when the command may share one write with the commands around
    /// it (`Store::apply_run`): a client's write whose reads all see the
    /// latest state, which the commands before it in the run leave in the
    /// overlay. A read at a given revision may need history the run has not
    /// yet written, and the other commands change what later ones check
    /// (leases, auth, alarms, the compact revision).
    pub fn joins_run(&self) -> bool {
        match self.unwrapped() {
            Command::Write(op) => op.reads_latest_only(),
            _ => false,
        }
    }

    /// The command itself, without the user an `Authorized` one carries.
    pub fn unwrapped(&self) -> &Command {
        match self {
            Command::Authorized { command, .. } => command.unwrapped(),
            command => command,
        }
    }
}

impl Op {
    /// True when every range in the op reads at the latest revision.
    fn reads_latest_only(&self) -> bool {
        match self {
            Op::Range(r) => r.revision <= 0,
            Op::Put(_) | Op::Delete(_) => true,
            Op::Txn(t) => t.success.iter().chain(&t.failure).all(Op::reads_latest_only),
        }
    }

    /// True when the op may add data: what the space quota refuses, while
    /// deletes still get through to free space (as etcd's quota does).
    pub fn adds_data(&self) -> bool {
        match self {
            Op::Put(_) => true,
            Op::Range(_) | Op::Delete(_) => false,
            Op::Txn(t) => t.success.iter().chain(&t.failure).any(Op::adds_data),
        }
    }
}

impl TxnArgs {
    pub fn is_read_only(&self) -> bool {
        self.success.iter().chain(&self.failure).all(Op::is_read_only)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `KeyValue` as it was before `serde_bytes`: plain sequences of u8.
    #[derive(Serialize)]
    struct PlainKeyValue {
        key: Vec<u8>,
        create_revision: i64,
        mod_revision: i64,
        version: i64,
        value: Vec<u8>,
        lease: i64,
    }

    #[test]
    fn bytes_are_encoded_as_they_were_before_serde_bytes() {
        let kv = KeyValue { key: b"key".to_vec(), create_revision: 2, mod_revision: 300, version: 1, value: vec![7; 200], lease: -1 };
        let plain = PlainKeyValue { key: kv.key.clone(), create_revision: 2, mod_revision: 300, version: 1, value: kv.value.clone(), lease: -1 };
        let encoded = postcard::to_allocvec(&kv).unwrap();
        assert_eq!(encoded, postcard::to_allocvec(&plain).unwrap());
        assert_eq!(postcard::from_bytes::<KeyValue>(&encoded).unwrap(), kv);
    }
}
