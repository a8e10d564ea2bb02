//! The process heap (glibc malloc): what it holds, and giving freed memory
//! back to the system after a burst. glibc returns memory only from the top
//! of each arena; what a burst of requests (a thousand clients' buffers) frees
//! below chunks still in use stays resident until `malloc_trim`. After the
//! request mix of scripts/bench-vs-etcd.sh, a leader held 124 MiB resident of
//! which a trim returned 31 MiB; Go's runtime (etcd) returns such memory on
//! its own, in the background.

use std::time::Duration;

use nix::libc;

/// How often resident memory is checked for growth.
const CHECK_EVERY: Duration = Duration::from_secs(5);
/// Growth of resident memory since the last trim that earns another: less
/// is not worth the arena locks a trim takes.
const TRIM_AFTER_GROWTH: u64 = 8 * 1024 * 1024;

/// Bytes the heap holds now: (in use, free but kept by malloc).
pub fn usage() -> (u64, u64) {
    // SAFETY: mallinfo2 only reads malloc's own statistics.
    let info = unsafe { libc::mallinfo2() };
    (info.uordblks as u64, info.fordblks as u64)
}

/// What malloc takes for a buffer of `len` bytes: an 8-byte header, rounded
/// up to 16, at least 32; an empty Vec allocates nothing.
pub fn allocation_bytes(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        (len + 8).next_multiple_of(16).max(32)
    }
}

/// This process's resident memory, in bytes (0 if /proc cannot say).
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
    kib.unwrap_or(0) * 1024
}

/// Gives the free pages inside malloc's arenas back to the system; returns
/// the resident memory afterwards.
fn trim() -> u64 {
    // SAFETY: malloc_trim takes each arena's lock itself; it moves no live
    // allocation.
    unsafe { libc::malloc_trim(0) };
    resident_bytes()
}

/// Runs for the life of the process: once resident memory has grown by
/// `TRIM_AFTER_GROWTH` since the last trim and then stopped growing (the
/// burst is over), trims on the blocking pool. Not during the growth: a trim
/// holds each arena's lock while it walks it, 25 ms under a thousand clients'
/// puts here, long enough to show in their latency.
pub async fn return_freed_memory() {
    let mut after_last_trim = resident_bytes();
    let mut last = after_last_trim;
    let mut ticks = tokio::time::interval(CHECK_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let resident = resident_bytes();
        let (grown, growing) = (resident >= after_last_trim + TRIM_AFTER_GROWTH, resident > last);
        last = resident;
        if !grown {
            // Shrinking on its own (or idle): remember the lower level.
            after_last_trim = after_last_trim.min(resident);
        }
        if !grown || growing {
            continue;
        }
        let started = std::time::Instant::now();
        match tokio::task::spawn_blocking(trim).await {
            Ok(after) => {
                tracing::debug!(before = resident, after, took = ?started.elapsed(), "returned freed heap memory");
                (after_last_trim, last) = (after, after);
            }
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trim_returns_what_a_burst_freed_below_live_chunks() {
        const MIB: u64 = 1024 * 1024;
        // A burst on its own thread (so in an arena of its own): 96 MiB in
        // 4 KiB blocks, of which every 32nd stays alive, pinning the arena so
        // that free() alone cannot give the rest back.
        let (kept, resident_after_free) = std::thread::spawn(|| {
            let burst: Vec<Vec<u8>> = (0..24 * 1024).map(|i| vec![i as u8; 4096]).collect();
            let kept: Vec<Vec<u8>> = burst.into_iter().step_by(32).collect();
            (kept, resident_bytes())
        })
        .join()
        .unwrap();
        let (_, free) = usage();
        assert!(free >= 64 * MIB, "malloc keeps the freed blocks: {free} bytes free");
        let after = trim();
        assert!(
            after + 48 * MIB <= resident_after_free,
            "the trim returned at least 48 MiB: {resident_after_free} resident before, {after} after"
        );
        assert!(kept.iter().enumerate().all(|(i, block)| block[4095] == (i * 32) as u8), "live blocks are untouched");
    }
}
