//! Members cut off from each other by the network (each on a host of its
//! own, tests/common/netns.rs), not only stopped.

mod common;

use std::time::{Duration, Instant};

use common::netns::Network;
use common::*;
use etcd_client::LockOptions;

/// The case of two lock holders: a client keeps its lease alive through a
/// leader that is then cut off from its majority. The old leader must stop
/// renewing the lease (etcd's CheckQuorum), so that by the time the majority
/// expires the lease and hands the lock to another client, the first client
/// has already seen its lease lapse.
#[test]
fn a_leader_cut_off_from_its_majority_stops_renewing_leases() {
    let Some(network) = Network::create(3) else { return };
    let dir = tempfile::tempdir().unwrap();
    let cluster: Vec<String> = (0..3).map(|h| format!("m{h}=http://{}:2380", network.ip(h))).collect();
    let mut members: Vec<Member> =
        (0..3).map(|h| Member::networked(dir.path(), &format!("m{h}"), &network, h, &cluster.join(","))).collect();
    members.iter_mut().for_each(Member::start);
    members.iter().for_each(|m| m.wait_healthy(Duration::from_secs(20)));
    let rt = runtime();
    let leader = rt.block_on(leader_index(&members));
    let follower = (leader + 1) % 3;
    const TTL: i64 = 5;
    let election_timeout = Duration::from_secs(1);

    rt.block_on(async {
        let mut holder = client(&[members[leader].endpoint()]).await;
        let lease = holder.lease_grant(TTL, None).await.unwrap().id();
        holder.lock("lk", Some(LockOptions::new().with_lease(lease))).await.unwrap();
        let (mut keeper, mut answers) = holder.lease_keep_alive(lease).await.unwrap();

        let mut waiter = client(&[members[follower].endpoint()]).await;
        let waiter_lease = waiter.lease_grant(60, None).await.unwrap().id();
        let waiting = tokio::spawn(async move {
            waiter.lock("lk", Some(LockOptions::new().with_lease(waiter_lease))).await.unwrap();
            Instant::now()
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!waiting.is_finished(), "the lock is held");

        network.isolate(leader);
        let cut = Instant::now();
        // The holder renews as etcd's clients do, and trusts its lease for a
        // TTL after each answer it gets.
        let mut trusted_until = cut;
        let failed_at = loop {
            let renewed = async {
                keeper.keep_alive().await?;
                answers.message().await
            };
            match tokio::time::timeout(Duration::from_secs(10), renewed).await {
                Ok(Ok(Some(answer))) if answer.ttl() > 0 => {
                    trusted_until = Instant::now() + Duration::from_secs(answer.ttl() as u64);
                    assert!(cut.elapsed() < Duration::from_secs(30), "the cut-off leader keeps renewing the lease");
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                _ => break Instant::now(),
            }
        };
        assert!(
            failed_at - cut < 2 * election_timeout + Duration::from_millis(500),
            "keepalive failed {:?} after the cut; an election timeout is {election_timeout:?}",
            failed_at - cut
        );
        let acquired = tokio::time::timeout(Duration::from_secs(30), waiting).await.expect("the lock passes on").unwrap();
        assert!(
            acquired > trusted_until,
            "the lock passed on {:?} before the first holder's lease lapsed from its own view",
            trusted_until - acquired
        );
    });
    network.heal(leader);
}
