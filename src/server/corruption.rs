//! etcd's corruption checks, each comparing this member's HashKV with its
//! peers' at one revision (a peer whose compact revision differs cannot be
//! compared and is only logged, as in etcd):
//! - initial (`--experimental-initial-corrupt-check`, 3.6's
//!   `--feature-gates=InitialCorruptCheck=true`): before it serves clients, a
//!   member refuses to start when a peer's hash differs;
//! - periodic (`--experimental-corrupt-check-time`): the leader compares at
//!   its current revision;
//! - after compaction (`--experimental-compact-hash-check-enabled`, every
//!   `--experimental-compact-hash-check-time`): the leader compares at each
//!   new compact revision.
//!
//! At run time a differing peer gets a CORRUPT alarm, raised through Raft:
//! every member then refuses writes ("etcdserver: corrupt cluster") and
//! `/readyz` fails `data_corruption` until an operator restores the member
//! and disarms the alarm.

use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;

use super::Node;
use crate::store::maintenance::ALARM_CORRUPT;
use crate::store::types::Command;

/// How long the initial check waits for Raft to report the membership it
/// loaded; a member joining with an empty log has none to report.
const MEMBERSHIP_LOAD_PATIENCE: Duration = Duration::from_secs(3);

/// HashKV: (hash, revision, compact revision).
type Hash = (u32, i64, i64);

async fn local_hash(node: &Node, revision: i64) -> anyhow::Result<Hash> {
    let store = node.store.clone();
    Ok(tokio::task::spawn_blocking(move || store.hash_kv(revision)).await??)
}

/// What comparing with the peers found.
#[derive(Default)]
struct Comparison {
    /// Peers whose hash differs: (peer id, their hash).
    differ: Vec<(u64, u32)>,
    /// Peers that could not be compared (down, behind, compacted elsewhere).
    unknown: usize,
}

async fn compare_with_peers(node: &Node, peers: Vec<u64>, (hash, revision, compact): Hash) -> Comparison {
    let mut found = Comparison::default();
    for peer in peers {
        let peer_hex = format!("{peer:x}");
        match node.consensus.peer_hash_kv(peer, revision).await {
            Ok((_, _, their_compact)) if their_compact != compact => {
                found.unknown += 1;
                tracing::warn!(
                    remote_peer_id = %peer_hex, revision, compact_revision = compact, remote_compact_revision = their_compact,
                    "cannot check the hash of a peer whose compact revision differs"
                )
            }
            Ok((theirs, _, _)) if theirs != hash => found.differ.push((peer, theirs)),
            Ok(_) => tracing::info!(remote_peer_id = %peer_hex, revision, hash, "corruption check: the peer agrees"),
            Err(e) => {
                found.unknown += 1;
                tracing::warn!(remote_peer_id = %peer_hex, revision, error = %e, "cannot fetch the hash of a peer")
            }
        }
    }
    found
}

pub async fn check_initial_hash(node: &Node) -> anyhow::Result<()> {
    let local = local_hash(node, 0).await?;
    let peers = node.consensus.loaded_peer_ids(MEMBERSHIP_LOAD_PATIENCE).await;
    if peers.is_empty() {
        tracing::warn!("initial corruption check skipped: this member knows no peers yet");
    }
    if let Some((peer, theirs)) = compare_with_peers(node, peers, local).await.differ.first() {
        return Err(anyhow!(
            "found data inconsistency with peers: at revision {} this member's hash is {}, \
             member {peer:x}'s is {theirs}; restore this member from a healthy one (etcdctl snapshot)",
            local.1,
            local.0
        ));
    }
    Ok(())
}

/// What a run-time check compares at: the current revision, or each new
/// compact revision.
#[derive(Clone, Copy)]
pub enum Checkpoint {
    Current,
    Compaction,
}

/// On the leader, every `every`: compares hashes at `at` and raises a
/// CORRUPT alarm for each peer that differs.
pub async fn check_periodically(node: Arc<Node>, every: Duration, at: Checkpoint) {
    let mut compared_compaction = 0;
    while node.idle(every).await {
        if node.consensus.leader() != Some(node.member_id) || node.store.corrupted() {
            continue;
        }
        let revision = match at {
            Checkpoint::Current => 0,
            Checkpoint::Compaction => match node.store.compact_revision() {
                compact if compact > compared_compaction => compact,
                _ => continue,
            },
        };
        let local = match local_hash(&node, revision).await {
            Ok(local) => local,
            Err(e) => {
                tracing::warn!(revision, error = %e, "corruption check: cannot hash this member's store");
                continue;
            }
        };
        let found = compare_with_peers(&node, node.consensus.peer_ids(), local).await;
        // A peer that has not compacted yet (or is down) is compared at the
        // next tick, until a newer compaction takes this one's place.
        if found.unknown == 0 {
            compared_compaction = compared_compaction.max(local.2);
        }
        for (peer, theirs) in found.differ {
            tracing::error!(
                remote_peer_id = %format!("{peer:x}"), revision = local.1, hash = local.0, remote_hash = theirs,
                "found data inconsistency with a peer; raising the CORRUPT alarm for it"
            );
            let alarm = Command::Alarm { activate: true, member_id: peer, alarm: ALARM_CORRUPT };
            if let Err(e) = node.write(alarm).await {
                tracing::warn!(error = %e, "raising the CORRUPT alarm");
            }
        }
    }
}
