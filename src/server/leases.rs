//! The leader's lease duties: take over the leases' time when this member
//! becomes leader, revoke what expires (through Raft, at etcd's pace), and
//! checkpoint remaining TTLs so a restart of every member resumes from them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Node;
use crate::store::types::Command;

const TICK: Duration = Duration::from_millis(100);
/// etcd revokes at most 1000 expired leases a second, so a mass expiry
/// shares the log with other writes instead of stalling them.
const REVOKES_PER_TICK: usize = 100;
/// Leases per checkpoint command.
const CHECKPOINT_BATCH: usize = 1000;

pub async fn keep_leases(node: Arc<Node>, checkpoint_interval: Duration) {
    let lessor = node.lessor.clone();
    let mut stopping = node.stopping.clone();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_checkpoint = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopping.wait_for(|s| *s) => return,
        }
        if node.consensus.leader() != Some(node.member_id) {
            if lessor.is_primary() {
                lessor.demote();
            }
            continue;
        }
        if !lessor.is_primary() {
            // Every lease granted or renewed under the old leader must be
            // applied here before this member keeps their time.
            if node.consensus.read_barrier().await.is_ok() {
                lessor.promote(node.consensus.election_timeout());
                last_checkpoint = Instant::now();
            }
            continue;
        }
        for id in lessor.take_expired(REVOKES_PER_TICK) {
            let node = node.clone();
            tokio::spawn(async move {
                if let Err(e) = node.write(Command::LeaseRevoke { id }).await {
                    tracing::debug!(lease = format!("{id:x}"), error = %e, "revoking an expired lease; will retry");
                }
            });
        }
        // Every lease's remaining TTL each interval; a renewal resets its own
        // lease's checkpoint before it is answered (Node::renew_lease).
        if last_checkpoint.elapsed() < checkpoint_interval {
            continue;
        }
        last_checkpoint = Instant::now();
        for chunk in lessor.remaining_ttls().chunks(CHECKPOINT_BATCH) {
            if let Err(e) = node.write(Command::LeaseCheckpoint(chunk.to_vec())).await {
                tracing::debug!(error = %e, "checkpointing lease TTLs");
            }
        }
    }
}
