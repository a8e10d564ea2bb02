//! etcd's initial corruption check (`--experimental-initial-corrupt-check`,
//! 3.6's `--feature-gates=InitialCorruptCheck=true`): before it serves
//! clients, a member compares its HashKV at its revision with every
//! reachable peer's at that revision, and stops when one differs. A peer
//! that cannot answer (down, behind, compacted differently) is only logged,
//! as in etcd.

use anyhow::anyhow;

use super::Node;

pub async fn check_initial_hash(node: &Node) -> anyhow::Result<()> {
    let store = node.store.clone();
    let (hash, revision, compact) = tokio::task::spawn_blocking(move || store.hash_kv(0)).await??;
    for peer in node.consensus.peer_ids() {
        let peer_hex = format!("{peer:x}");
        match node.consensus.peer_hash_kv(peer, revision).await {
            Ok((_, _, their_compact)) if their_compact != compact => tracing::warn!(
                remote_peer_id = %peer_hex, revision, compact_revision = compact, remote_compact_revision = their_compact,
                "cannot check the hash of a peer whose compact revision differs"
            ),
            Ok((theirs, _, _)) if theirs != hash => {
                return Err(anyhow!(
                    "found data inconsistency with peers: at revision {revision} this member's hash is {hash}, \
                     member {peer_hex}'s is {theirs}; restore this member from a healthy one (etcdctl snapshot)"
                ));
            }
            Ok(_) => tracing::info!(remote_peer_id = %peer_hex, revision, hash, "initial corruption check: the peer agrees"),
            Err(e) => tracing::warn!(remote_peer_id = %peer_hex, revision, error = %e, "cannot fetch the hash of a peer"),
        }
    }
    Ok(())
}
