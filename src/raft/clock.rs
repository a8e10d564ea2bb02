//! Raft's clock: tokio's, except that it can be moved forward past the leader
//! lease when the leader hands over leadership.
//!
//! openraft 0.9 has no leader transfer, and its followers refuse any vote
//! request while the lease of the leader they last heard from runs (an
//! election timeout). etcd's transfer campaign is exempt from that check
//! (raft's CampaignTransfer); here a member that receives a vote request
//! marked as a transfer moves its Raft clock forward by one lease before
//! handing the request to openraft, so the lease it holds has expired. Raft's
//! safety does not depend on time: the lease only spares the cluster needless
//! elections, and cairn's linearizable reads use quorum rounds, not leases.
//!
//! The clock is per process, as a member is.

use std::future::Future;
use std::ops::{Add, AddAssign, Sub, SubAssign};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use openraft::{AsyncRuntime, OptionalSend, TokioRuntime};

/// How far (in nanoseconds) Raft's clock runs ahead of tokio's; it only grows.
static AHEAD_NANOS: AtomicU64 = AtomicU64::new(0);

fn ahead() -> Duration {
    Duration::from_nanos(AHEAD_NANOS.load(Ordering::Acquire))
}

/// Moves Raft's clock forward past a leader lease of `lease`, so that a vote
/// request handled next is not refused for a lease that still runs.
pub fn expire_leader_lease(lease: Duration) {
    let step = lease + Duration::from_millis(1);
    AHEAD_NANOS.fetch_add(step.as_nanos() as u64, Ordering::AcqRel);
}

/// A point in Raft's time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RaftInstant(tokio::time::Instant);

impl RaftInstant {
    /// The tokio instant at which Raft's clock will read `self` (or has read
    /// it), given how far ahead it runs now.
    fn on_tokio_clock(self) -> tokio::time::Instant {
        self.0.checked_sub(ahead()).unwrap_or_else(tokio::time::Instant::now)
    }
}

impl openraft::Instant for RaftInstant {
    fn now() -> Self {
        RaftInstant(tokio::time::Instant::now() + ahead())
    }
}

impl Add<Duration> for RaftInstant {
    type Output = RaftInstant;
    fn add(self, d: Duration) -> RaftInstant {
        RaftInstant(self.0 + d)
    }
}

impl AddAssign<Duration> for RaftInstant {
    fn add_assign(&mut self, d: Duration) {
        self.0 += d;
    }
}

impl Sub<Duration> for RaftInstant {
    type Output = RaftInstant;
    fn sub(self, d: Duration) -> RaftInstant {
        RaftInstant(self.0 - d)
    }
}

impl SubAssign<Duration> for RaftInstant {
    fn sub_assign(&mut self, d: Duration) {
        self.0 -= d;
    }
}

impl Sub<RaftInstant> for RaftInstant {
    type Output = Duration;
    fn sub(self, earlier: RaftInstant) -> Duration {
        self.0.saturating_duration_since(earlier.0)
    }
}

/// tokio, with Raft's clock.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RaftRuntime;

impl AsyncRuntime for RaftRuntime {
    type JoinError = <TokioRuntime as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <TokioRuntime as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <TokioRuntime as AsyncRuntime>::Sleep;
    type Instant = RaftInstant;
    type TimeoutError = <TokioRuntime as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = <TokioRuntime as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = <TokioRuntime as AsyncRuntime>::ThreadLocalRng;
    type OneshotSender<T: OptionalSend> = <TokioRuntime as AsyncRuntime>::OneshotSender<T>;
    type OneshotReceiverError = <TokioRuntime as AsyncRuntime>::OneshotReceiverError;
    type OneshotReceiver<T: OptionalSend> = <TokioRuntime as AsyncRuntime>::OneshotReceiver<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        TokioRuntime::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        TokioRuntime::sleep(duration)
    }

    fn sleep_until(deadline: RaftInstant) -> Self::Sleep {
        TokioRuntime::sleep_until(deadline.on_tokio_clock())
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(duration: Duration, future: F) -> Self::Timeout<R, F> {
        TokioRuntime::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(deadline: RaftInstant, future: F) -> Self::Timeout<R, F> {
        TokioRuntime::timeout_at(deadline.on_tokio_clock(), future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        TokioRuntime::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        TokioRuntime::thread_rng()
    }

    fn oneshot<T: OptionalSend>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>) {
        TokioRuntime::oneshot()
    }
}

#[cfg(test)]
mod tests {
    use openraft::Instant;

    use super::*;

    #[tokio::test]
    async fn expiring_the_lease_moves_raft_time_past_it_and_keeps_timers_working() {
        let lease = Duration::from_secs(3);
        let before = RaftInstant::now();
        expire_leader_lease(lease);
        assert!(RaftInstant::now() - before > lease, "a lease taken before has expired");
        // A deadline set before the jump fires no later than it would have.
        let started = tokio::time::Instant::now();
        RaftRuntime::sleep_until(before + Duration::from_millis(20)).await;
        assert!(started.elapsed() < Duration::from_secs(1));
        // A deadline set after the jump still waits its full time.
        let started = tokio::time::Instant::now();
        RaftRuntime::sleep_until(RaftInstant::now() + Duration::from_millis(50)).await;
        assert!(started.elapsed() >= Duration::from_millis(50));
    }
}
