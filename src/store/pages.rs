//! What a paginated LIST's next page needs to know without counting again.
//!
//! etcd's Range answers `count`, the number of keys from `key` to the end of
//! the range, and Kubernetes reads every page after the first at the first
//! page's revision, from just past the last key it got. At a fixed revision
//! the keys are fixed (MVCC), so the next page's count is this page's count
//! less the keys it returned: remembering it turns a LIST of N keys from N²/limit
//! rows read into N.

use std::collections::VecDeque;
use std::sync::Mutex;

/// Pages remembered: about one per LIST in progress.
const REMEMBERED: usize = 64;

struct NextPage {
    /// Where the next page starts: just past the last key returned.
    start: Vec<u8>,
    range_end: Vec<u8>,
    revision: i64,
    /// Keys from `start` to the end of the range at `revision`.
    count: i64,
}

#[derive(Default)]
pub struct PageCounts(Mutex<VecDeque<NextPage>>);

impl PageCounts {
    /// The count of `[start, range_end)` at `revision`, if a page that ended
    /// just before `start` was served.
    pub fn count(&self, start: &[u8], range_end: &[u8], revision: i64) -> Option<i64> {
        let pages = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let page = pages.iter().find(|p| p.revision == revision && p.start == start && p.range_end == range_end)?;
        Some(page.count)
    }

    /// A page of `[_, range_end)` at `revision` returned every key up to and
    /// including `last`, and `count_after` keys follow it.
    pub fn remember(&self, last: &[u8], range_end: &[u8], revision: i64, count_after: i64) {
        let start = [last, &[0]].concat();
        let mut pages = self.0.lock().unwrap_or_else(|p| p.into_inner());
        pages.retain(|p| !(p.revision == revision && p.start == start && p.range_end == range_end));
        if pages.len() == REMEMBERED {
            pages.pop_front();
        }
        pages.push_back(NextPage { start, range_end: range_end.to_vec(), revision, count: count_after });
    }
}
