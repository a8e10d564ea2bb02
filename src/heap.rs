//! The process heap: jemalloc, linked in place of glibc's malloc for Rust's
//! allocations and, its symbols being unprefixed, for RocksDB's too. Under a
//! thousand clients' puts glibc's malloc and free took a fifth of a leader's
//! CPU; jemalloc's per-thread caches and size-class slabs took 10-18% less of
//! the members' CPU per request (README, Performance).
//!
//! jemalloc keeps the pages a burst frees ("dirty") and returns them over its
//! decay time, and only while the process keeps allocating. After a burst
//! (a thousand clients' buffers) this module purges them at once, as Go's
//! runtime (etcd) returns such memory on its own, in the background.

use std::time::Duration;

use tikv_jemalloc_ctl::{epoch, stats};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// How often resident memory is checked for growth.
const CHECK_EVERY: Duration = Duration::from_secs(5);
/// Growth of resident memory since the last purge that earns another: less
/// is not worth walking every arena.
const PURGE_AFTER_GROWTH: u64 = 8 * 1024 * 1024;

/// Bytes the heap holds now: (in use, resident but not in use: pages jemalloc
/// keeps, slack in its slabs, its own metadata).
pub fn usage() -> (u64, u64) {
    // The statistics are a snapshot taken at each epoch.
    let (Ok(_), Ok(allocated), Ok(resident)) = (epoch::advance(), stats::allocated::read(), stats::resident::read()) else {
        return (0, 0);
    };
    (allocated as u64, resident.saturating_sub(allocated) as u64)
}

/// What the allocator takes for a buffer of `len` bytes (its size class); an
/// empty Vec allocates nothing.
pub fn allocation_bytes(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        // SAFETY: nallocx only computes a size class; it allocates nothing.
        unsafe { tikv_jemalloc_sys::nallocx(len, 0) }
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

/// Gives every arena's free pages back to the system; returns the resident
/// memory afterwards.
fn purge() -> u64 {
    // 4096 is MALLCTL_ARENAS_ALL: every arena at once.
    const ALL_ARENAS: &[u8] = b"arena.4096.purge\0";
    // SAFETY: the name is NUL-terminated, and a purge reads and writes no
    // value (null pointers, zero length); it moves no live allocation.
    let failed = unsafe {
        tikv_jemalloc_sys::mallctl(ALL_ARENAS.as_ptr().cast(), std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut(), 0)
    };
    if failed != 0 {
        tracing::warn!(error = failed, "jemalloc refused to purge its arenas");
    }
    resident_bytes()
}

/// Runs for the life of the process: once resident memory has grown by
/// `PURGE_AFTER_GROWTH` since the last purge and then stopped growing (the
/// burst is over), purges on the blocking pool. Not during the growth: the
/// pages would be taken again at once.
pub async fn return_freed_memory() {
    let mut after_last_purge = resident_bytes();
    let mut last = after_last_purge;
    let mut ticks = tokio::time::interval(CHECK_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let resident = resident_bytes();
        let (grown, growing) = (resident >= after_last_purge + PURGE_AFTER_GROWTH, resident > last);
        last = resident;
        if !grown {
            // Shrinking on its own (or idle): remember the lower level.
            after_last_purge = after_last_purge.min(resident);
        }
        if !grown || growing {
            continue;
        }
        let started = std::time::Instant::now();
        match tokio::task::spawn_blocking(purge).await {
            Ok(after) => {
                tracing::debug!(before = resident, after, took = ?started.elapsed(), "returned freed heap memory");
                (after_last_purge, last) = (after, after);
            }
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_purge_returns_what_a_burst_freed() {
        const MIB: u64 = 1024 * 1024;
        // All on one thread that stays alive, as a runtime's worker does (an
        // exiting thread's arena is purged on its own): 96 MiB in 4 KiB
        // blocks, of which every 32nd stays alive.
        std::thread::spawn(|| {
            let burst: Vec<Vec<u8>> = (0..24 * 1024).map(|i| vec![i as u8; 4096]).collect();
            let kept: Vec<Vec<u8>> = burst.into_iter().step_by(32).collect();
            let resident_after_free = resident_bytes();
            let (_, free) = usage();
            assert!(free >= 64 * MIB, "jemalloc keeps the freed pages: {free} bytes resident but free");
            let after = purge();
            assert!(
                after + 48 * MIB <= resident_after_free,
                "the purge returned at least 48 MiB: {resident_after_free} resident before, {after} after"
            );
            assert!(kept.iter().enumerate().all(|(i, block)| block[4095] == (i * 32) as u8), "live blocks are untouched");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn allocation_sizes_are_jemalloc_size_classes() {
        assert_eq!(allocation_bytes(0), 0);
        assert_eq!(allocation_bytes(1), 8);
        assert_eq!(allocation_bytes(17), 32);
        assert_eq!(allocation_bytes(257), 320);
        // Measured the same way the allocator does: what it reports it holds.
        let buffer = vec![0u8; 5000];
        // SAFETY: the pointer is a live allocation of jemalloc's.
        let real = unsafe { tikv_jemalloc_sys::malloc_usable_size(buffer.as_ptr().cast()) };
        assert_eq!(allocation_bytes(5000), real);
    }
}
