//! RocksDB's memory, capped. By default RocksDB gives every column family up
//! to 2 × 64 MiB of memtables and keeps the index and filter blocks of every
//! table file in memory outside any cache, so a member's memory grows with
//! its store and a bulk load fills every memtable. Here all memtables of a
//! database share one budget (past it, RocksDB flushes the largest early;
//! writes are not stalled for it, so a burst may overshoot until the flush
//! ends) and index and filter blocks live in the block cache, which has its
//! own. `--memory-budget-bytes` sets a member's total, which also bounds the
//! watch hub's history of recent changes.

use rocksdb::{BlockBasedIndexType, BlockBasedOptions, Cache, Options, WriteBufferManager};

/// One database's memory: its memtables' budget and its block cache, shared
/// by its column families and kept here to report what they hold.
pub struct MemoryBudget {
    memtables: WriteBufferManager,
    block_cache: Cache,
}

impl MemoryBudget {
    fn of(memtables: usize, block_cache: usize) -> MemoryBudget {
        MemoryBudget {
            memtables: WriteBufferManager::new_write_buffer_manager(memtables, false),
            block_cache: Cache::new_lru_cache(block_cache),
        }
    }

    /// Bytes held now: (memtables, block cache).
    pub fn usage(&self) -> (usize, usize) {
        (self.memtables.get_usage(), self.block_cache.get_usage())
    }
}

const MIB: u64 = 1024 * 1024;

/// `--memory-budget-bytes` when not set: a small member. Measured with
/// scripts/bench-vs-etcd.sh (100,000 objects of 1-4 KiB), 64 MiB loaded,
/// listed and served the request mix as fast as 256 MiB did, at a third of
/// the resident memory; stores of gigabytes fill faster with more.
pub const DEFAULT_MEMBER_BYTES: u64 = 64 * MIB;
/// Below this the memtables are so small that flushes and compactions of
/// tiny files would cost more than the memory saved.
pub const MIN_MEMBER_BYTES: u64 = 16 * MIB;

/// A member's memory for caches and write buffers (`--memory-budget-bytes`).
pub struct MemberBudget {
    /// The state database: large and read by every request, so it gets the
    /// most, two thirds of that for writes.
    pub state: MemoryBudget,
    /// The Raft log: written once, read back by replication while recent.
    pub log: MemoryBudget,
    /// Recent changes kept for watchers that start a little in the past.
    pub watch_history: usize,
}

impl MemberBudget {
    pub fn of(bytes: u64) -> MemberBudget {
        let sixteenth = (bytes / 16) as usize;
        MemberBudget {
            state: MemoryBudget::of(6 * sixteenth, 3 * sixteenth),
            log: MemoryBudget::of(2 * sixteenth, sixteenth),
            watch_history: 4 * sixteenth,
        }
    }
}

impl Default for MemberBudget {
    fn default() -> Self {
        MemberBudget::of(DEFAULT_MEMBER_BYTES)
    }
}

/// Options for a database (and its column families) that stays within `budget`.
pub fn bounded_options(budget: &MemoryBudget) -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_write_buffer_manager(&budget.memtables);
    // A memtable may take half the budget: one fills while another flushes.
    opts.set_write_buffer_size(budget.memtables.get_buffer_size() / 2);
    // A write-ahead log file goes once every column family has flushed what
    // it holds. RocksDB's own bound is four times all memtables at their
    // largest (the unused default family's 64 MiB ones included), so the
    // Raft log's family of rare small writes (vote, commit index) kept
    // hundreds of MiB of files after a load, on disk and replayed at the
    // next start (0.5 s after 100,000 objects). Past twice the budget, the
    // families holding the oldest file are flushed instead.
    opts.set_max_total_wal_size(2 * budget.memtables.get_buffer_size() as u64);
    // A table file goes to the disk a MiB at a time as it is written, not all
    // at its closing fsync, which would hold up the Raft log's fsyncs behind it.
    opts.set_bytes_per_sync(1 << 20);
    let mut tables = BlockBasedOptions::default();
    tables.set_block_cache(&budget.block_cache);
    // Partitioned indexes: a lookup brings a 4 KiB partition into the cache,
    // not the whole index of a 64 MiB file; the small top level stays put.
    tables.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
    tables.set_metadata_block_size(4096);
    tables.set_cache_index_and_filter_blocks(true);
    tables.set_pin_top_level_index_and_filter(true);
    tables.set_pin_l0_filter_and_index_blocks_in_cache(true);
    opts.set_block_based_table_factory(&tables);
    opts
}
