//! The log's newest entries in memory: those appended but not yet written,
//! which readers must see at once, and the last ones written, kept so that
//! applying and replicating what was just committed reads no RocksDB (a
//! RocksDB read from an async task costs a hop to a blocking thread, about a
//! tenth of a lone put's time).
//!
//! The entries always form one run of indexes: written ones at the front,
//! unwritten ones at the back. Beyond the budget, written entries leave from
//! the front (an unwritten one never does); a truncation cuts the back, and
//! a purge the front.

use std::collections::BTreeMap;

use openraft::Entry;

use super::{LogId, TypeConfig};

/// Written entries are kept while their encoded sizes sum to at most this:
/// room for the entries committed but not yet applied, which under load are
/// the two group commits in flight. They stay while the member idles, and in
/// memory take about half as much again as encoded: 4 MiB here added 10 MiB
/// to a member's resident memory after a thousand clients' puts.
const KEEP_WRITTEN_BYTES: usize = 1 << 20;

struct Slot {
    /// The number of the append that put the entry here: a write of an
    /// earlier append of the same index (before a truncation) is not this
    /// entry's.
    append: u64,
    entry: Entry<TypeConfig>,
    /// Its encoded size.
    bytes: usize,
    written: bool,
}

#[derive(Default)]
pub(super) struct LogTail {
    slots: BTreeMap<u64, Slot>,
    written_bytes: usize,
}

impl LogTail {
    pub fn push(&mut self, append: u64, entry: Entry<TypeConfig>, bytes: usize) {
        let index = entry.log_id.index;
        self.cut_from(index);
        self.slots.insert(index, Slot { append, entry, bytes, written: false });
    }

    /// The first index held, if any.
    pub fn first_index(&self) -> Option<u64> {
        self.slots.first_key_value().map(|(&index, _)| index)
    }

    pub fn last_log_id(&self) -> Option<LogId> {
        self.slots.last_key_value().map(|(_, slot)| slot.entry.log_id)
    }

    /// Copies of the entries held with index in `from..to`.
    pub fn entries(&self, from: u64, to: u64) -> Vec<Entry<TypeConfig>> {
        self.slots.range(from..to).map(|(_, slot)| slot.entry.clone()).collect()
    }

    /// Append number `append` wrote the entries at `indexes`; the oldest
    /// written entries beyond the budget leave.
    pub fn written(&mut self, append: u64, indexes: impl IntoIterator<Item = u64>) {
        for index in indexes {
            if let Some(slot) = self.slots.get_mut(&index).filter(|s| s.append == append && !s.written) {
                slot.written = true;
                self.written_bytes += slot.bytes;
            }
        }
        while self.written_bytes > KEEP_WRITTEN_BYTES {
            let Some(oldest) = self.slots.first_entry().filter(|s| s.get().written) else { break };
            self.written_bytes -= oldest.remove().bytes;
        }
    }

    /// Drops every entry with index `from` or later (a truncation).
    pub fn cut_from(&mut self, from: u64) {
        let cut = self.slots.split_off(&from);
        self.forget(cut.into_values());
    }

    /// Drops every entry with index `upto` or earlier (a purge).
    pub fn drop_upto(&mut self, upto: u64) {
        let kept = self.slots.split_off(&upto.saturating_add(1));
        let dropped = std::mem::replace(&mut self.slots, kept);
        self.forget(dropped.into_values());
    }

    fn forget(&mut self, slots: impl Iterator<Item = Slot>) {
        self.written_bytes -= slots.filter(|s| s.written).map(|s| s.bytes).sum::<usize>();
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    fn entry(index: u64) -> Entry<TypeConfig> {
        Entry { log_id: LogId::new(CommittedLeaderId::new(1, 1), index), payload: EntryPayload::Blank }
    }

    fn indexes(tail: &LogTail) -> Vec<u64> {
        tail.entries(0, u64::MAX).iter().map(|e| e.log_id.index).collect()
    }

    #[test]
    fn written_entries_stay_within_the_budget_and_unwritten_ones_always() {
        let mut tail = LogTail::default();
        let half = KEEP_WRITTEN_BYTES / 2;
        for index in 1..=4 {
            tail.push(index, entry(index), half);
        }
        tail.written(1, [1]);
        tail.written(2, [2]);
        assert_eq!(indexes(&tail), [1, 2, 3, 4], "two halves fit");
        tail.written(3, [3]);
        assert_eq!(indexes(&tail), [2, 3, 4], "the oldest written entry left");
        assert_eq!(tail.written_bytes, 2 * half);
        // Entries only leave from the front once written.
        tail.push(5, entry(5), 3 * KEEP_WRITTEN_BYTES);
        tail.written(5, [5]);
        assert_eq!(indexes(&tail), [4, 5], "index 4 is not written: it and everything after it stay");
        assert_eq!(tail.first_index(), Some(4));
        assert_eq!(tail.last_log_id().map(|l| l.index), Some(5));
    }

    #[test]
    fn a_write_of_an_entry_replaced_after_a_truncation_does_not_count() {
        let mut tail = LogTail::default();
        tail.push(1, entry(7), 10);
        tail.push(2, entry(7), 10);
        tail.written(1, [7]);
        assert_eq!(tail.written_bytes, 0);
        tail.written(2, [7]);
        assert_eq!(tail.written_bytes, 10);
    }

    #[test]
    fn truncations_and_purges_forget_the_written_bytes_they_drop() {
        let mut tail = LogTail::default();
        for index in 1..=6 {
            tail.push(index, entry(index), 100);
        }
        tail.written(1, [1]);
        tail.written(2, [2]);
        tail.written(5, [5]);
        tail.cut_from(5);
        assert_eq!((indexes(&tail), tail.written_bytes), (vec![1, 2, 3, 4], 200));
        tail.drop_upto(1);
        assert_eq!((indexes(&tail), tail.written_bytes), (vec![2, 3, 4], 100));
        assert_eq!(tail.entries(3, 4).len(), 1);
    }
}
