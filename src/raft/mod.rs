//! Consensus: openraft's type configuration, the RocksDB log and state machine
//! adapters, the peer network, and `Consensus`, which turns client commands
//! into committed results and provides linearizable read barriers.

mod clock;
mod consensus;
mod durability;
pub mod credentials;
pub mod dial;
mod log_store;
mod log_tail;
pub mod members;
pub mod network;
mod peer_service;
mod proposer;
mod read_index;
pub mod snapshots;
mod state_machine;
mod transfer;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::store::types::CommandResult;

pub use consensus::{Consensus, RaftSettings};
pub use log_store::LogStore;
use proposer::Proposal;
pub use peer_service::PeerService;
pub use state_machine::StateMachine;

/// A member as Raft's membership config holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerNode {
    pub name: String,
    pub peer_urls: Vec<String>,
}

impl fmt::Display for PeerNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.name, self.peer_urls.join(","))
    }
}

openraft::declare_raft_types!(
    pub TypeConfig:
        // One entry carries the commands gathered for one group commit.
        D = Proposal,
        R = Vec<CommandResult>,
        NodeId = u64,
        Node = PeerNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = snapshots::SnapshotData,
        AsyncRuntime = clock::RaftRuntime,
        Responder = openraft::impls::OneshotResponder<TypeConfig>,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<u64>;
pub type StoredMembership = openraft::StoredMembership<u64, PeerNode>;

/// What a leader answers to a forwarded write or read-index request when it
/// cannot serve it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum PeerRefusal {
    /// Not the leader (any more); the hint names who is, if known.
    NotLeader(Option<u64>),
    /// The leader could not reach a quorum just now; worth another try.
    NoQuorum,
    /// The member is shutting down.
    Stopped,
    Failed(String),
    /// The leader holds too many commands not yet proposed: back-pressure.
    TooManyRequests,
}

impl PeerRefusal {
    pub fn from_raft_error<E>(e: openraft::error::RaftError<u64, E>) -> PeerRefusal
    where
        E: fmt::Debug + fmt::Display + openraft::TryAsRef<openraft::error::ForwardToLeader<u64, PeerNode>>,
    {
        if let Some(f) = e.forward_to_leader() {
            return PeerRefusal::NotLeader(f.leader_id);
        }
        match e {
            openraft::error::RaftError::Fatal(openraft::error::Fatal::Stopped) => PeerRefusal::Stopped,
            // The API errors besides ForwardToLeader: QuorumNotEnough (reads), which passes.
            openraft::error::RaftError::APIError(_) => PeerRefusal::NoQuorum,
            e => PeerRefusal::Failed(e.to_string()),
        }
    }
}

/// True once the state database records member `id` as removed (read off
/// the async workers; an unreadable record counts as not removed).
async fn known_removed(store: &std::sync::Arc<crate::store::Store>, id: u64) -> bool {
    let store = store.clone();
    matches!(tokio::task::spawn_blocking(move || store.is_removed(id)).await, Ok(Ok(true)))
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("in-memory serialization cannot fail")
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}

/// The generated client and server of proto/peer.proto.
pub mod peerpb {
    tonic::include_proto!("cairn.peer");
}
