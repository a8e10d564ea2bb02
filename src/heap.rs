//! The process heap, in two allocators. Rust's allocations go to jemalloc:
//! under a thousand clients' puts glibc's malloc and free took a fifth of a
//! leader's CPU, and jemalloc's per-thread caches and size-class slabs cost
//! less (README, Performance). C and C++ code (RocksDB, libstdc++, libc) keeps
//! glibc's malloc: jemalloc reads the clock while it initializes, and with
//! its symbols in place of malloc a process started under libfaketime (how
//! the fault tests jump a member's clock) deadlocks before main, since
//! libfaketime's own start allocates.
//!
//! Both keep what a burst (a thousand clients' buffers) frees: jemalloc until
//! the pages decay (10 s, and only while the process allocates), glibc
//! wherever a live chunk sits above the freed ones. After a burst this module
//! gives both back at once, as Go's runtime (etcd) returns such memory on its
//! own, in the background.

use std::time::Duration;

use nix::libc;
use tikv_jemalloc_ctl::{epoch, stats};

#[global_allocator]
static RUST_ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// How often resident memory is checked for growth.
const CHECK_EVERY: Duration = Duration::from_secs(5);
/// Growth of resident memory since the last release that earns another: less
/// is not worth the locks of every arena a release takes.
const RELEASE_AFTER_GROWTH: u64 = 8 * 1024 * 1024;

/// Bytes both heaps hold now: (in use, resident or kept but not in use:
/// freed pages, slab slack, the allocators' own metadata).
pub fn usage() -> (u64, u64) {
    // SAFETY: mallinfo2 only reads malloc's own statistics.
    let glibc = unsafe { libc::mallinfo2() };
    // jemalloc's statistics are a snapshot taken at each epoch.
    let (allocated, resident) = match (epoch::advance(), stats::allocated::read(), stats::resident::read()) {
        (Ok(_), Ok(allocated), Ok(resident)) => (allocated, resident),
        _ => (0, 0),
    };
    ((allocated + glibc.uordblks) as u64, (resident.saturating_sub(allocated) + glibc.fordblks) as u64)
}

/// What jemalloc takes for a Rust buffer of `len` bytes (its size class); an
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

/// Gives the free pages of every arena of both allocators back to the
/// system; returns the resident memory afterwards. Blocks for a while (it
/// takes each arena's lock): call it from a blocking thread.
pub fn release() -> u64 {
    // 4096 is MALLCTL_ARENAS_ALL: every arena at once.
    const PURGE_ALL_ARENAS: &[u8] = b"arena.4096.purge\0";
    // SAFETY: the name is NUL-terminated, and a purge reads and writes no
    // value (null pointers, zero length); it moves no live allocation.
    let failed = unsafe {
        tikv_jemalloc_sys::mallctl(PURGE_ALL_ARENAS.as_ptr().cast(), std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut(), 0)
    };
    if failed != 0 {
        tracing::warn!(error = failed, "jemalloc refused to purge its arenas");
    }
    // SAFETY: malloc_trim takes each arena's lock itself; it moves no live
    // allocation.
    unsafe { libc::malloc_trim(0) };
    resident_bytes()
}

/// Runs for the life of the process: once resident memory has grown by
/// `RELEASE_AFTER_GROWTH` since the last release and then stopped growing
/// (the burst is over), releases on the blocking pool. Not during the growth:
/// the pages would be taken again at once, and a glibc trim holds each
/// arena's lock while it walks it (25 ms under a thousand clients' puts here).
pub async fn return_freed_memory() {
    let mut after_last_release = resident_bytes();
    let mut last = after_last_release;
    let mut ticks = tokio::time::interval(CHECK_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let resident = resident_bytes();
        let (grown, growing) = (resident >= after_last_release + RELEASE_AFTER_GROWTH, resident > last);
        last = resident;
        if !grown {
            // Shrinking on its own (or idle): remember the lower level.
            after_last_release = after_last_release.min(resident);
        }
        if !grown || growing {
            continue;
        }
        let started = std::time::Instant::now();
        match tokio::task::spawn_blocking(release).await {
            Ok(after) => {
                tracing::debug!(before = resident, after, took = ?started.elapsed(), "returned freed heap memory");
                (after_last_release, last) = (after, after);
            }
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;
    const BLOCK: usize = 4096;
    const BLOCKS: usize = 24 * 1024;

    #[test]
    fn a_release_returns_what_a_burst_freed_in_both_heaps() {
        // All on one thread that stays alive, as a runtime's worker does (an
        // exiting thread's jemalloc arena is purged on its own): 96 MiB in
        // 4 KiB blocks from each allocator, of which every 32nd stays alive,
        // pinning glibc's arena so that free() alone cannot give the rest back.
        std::thread::spawn(|| {
            let burst: Vec<Vec<u8>> = (0..BLOCKS).map(|i| vec![i as u8; BLOCK]).collect();
            let kept: Vec<Vec<u8>> = burst.into_iter().step_by(32).collect();
            // SAFETY: each block is malloc'd, written within its length, and
            // freed once (the kept ones at the end).
            let c_burst: Vec<*mut u8> = (0..BLOCKS)
                .map(|i| unsafe {
                    let block = libc::malloc(BLOCK).cast::<u8>();
                    block.write_bytes(i as u8, BLOCK);
                    block
                })
                .collect();
            let c_kept: Vec<*mut u8> = c_burst
                .into_iter()
                .enumerate()
                .filter_map(|(i, block)| if i % 32 == 0 { Some(block) } else { unsafe { libc::free(block.cast()) }; None })
                .collect();
            let resident_after_free = resident_bytes();
            let (_, free) = usage();
            assert!(free >= 160 * MIB, "the allocators keep the freed blocks: {free} bytes free");
            let after = release();
            assert!(
                after + 120 * MIB <= resident_after_free,
                "the release returned at least 120 MiB: {resident_after_free} resident before, {after} after"
            );
            assert!(kept.iter().enumerate().all(|(i, block)| block[BLOCK - 1] == (i * 32) as u8), "live blocks are untouched");
            // SAFETY: the kept blocks are live and BLOCK bytes long.
            assert!(c_kept.iter().enumerate().all(|(i, block)| unsafe { *block.add(BLOCK - 1) } == (i * 32) as u8));
            c_kept.into_iter().for_each(|block| unsafe { libc::free(block.cast()) });
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
        let buffer = vec![0u8; 5000];
        // SAFETY: the pointer is a live allocation of jemalloc's.
        let real = unsafe { tikv_jemalloc_sys::malloc_usable_size(buffer.as_ptr().cast()) };
        assert_eq!(allocation_bytes(5000), real);
    }
}
