//! Linearizability of each key's history, as a single register, by the
//! Wing–Gong search with Lowe's memo of (operations taken, state) that
//! porcupine and knossos use. Keys are independent (locality), so each key is
//! searched alone.

use std::collections::{BTreeMap, HashMap, HashSet};

/// What a client asked of one key and what it learned.
#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    Put { value: String },
    /// A linearizable read; `None`: the key was absent.
    Get { found: Option<String> },
    /// A Txn writing `value` if the key holds `expect` (`None`: absent);
    /// `succeeded` is `None` when the answer never came.
    Cas { expect: Option<String>, value: String, succeeded: Option<bool> },
    /// A Txn with a compare and no operations: a read of one bit.
    Compare { expect: Option<String>, holds: bool },
    /// `deleted` is `None` when the answer never came; `marker` is the key
    /// the delete wrote in the same transaction.
    Delete { deleted: Option<bool>, marker: String },
}

#[derive(Clone, Debug)]
pub struct Op {
    pub client: usize,
    pub key: String,
    /// Microseconds since the history began: when the request was sent, and
    /// when its answer arrived (`None`: it never did, so the operation may
    /// take effect at any point after its call, or never).
    pub call: u64,
    pub ret: Option<u64>,
    /// The store revision the answer carried.
    pub revision: Option<i64>,
    pub kind: Kind,
}

impl Kind {
    pub fn is_read(&self) -> bool {
        matches!(self, Kind::Get { .. } | Kind::Compare { .. })
    }

    /// What an answered operation wrote: `Some(Some(value))` for a put,
    /// `Some(None)` for a delete that removed the key, `None` when it wrote
    /// nothing.
    pub fn written(&self) -> Option<Option<String>> {
        match self {
            Kind::Put { value } | Kind::Cas { value, succeeded: Some(true), .. } => Some(Some(value.clone())),
            Kind::Delete { deleted: Some(true), .. } => Some(None),
            _ => None,
        }
    }
}

/// The register's value, interned: `None` is an absent key.
type State = Option<u32>;

/// One operation with its values interned, ready for the search.
#[derive(Clone, Copy)]
enum Step {
    Put(u32),
    Get(Option<u32>),
    Cas { expect: Option<u32>, value: u32, succeeded: Option<bool> },
    Compare { expect: Option<u32>, holds: bool },
    Delete(Option<bool>),
}

impl Step {
    /// The state after this operation from `state`, or `None` when the
    /// operation's answer cannot have come from `state`. A compare of a value
    /// against an absent key is false, as in etcd.
    fn apply(self, state: State) -> Option<State> {
        let matches = |expect: Option<u32>| expect == state;
        match self {
            Step::Put(v) => Some(Some(v)),
            Step::Get(found) => (found == state).then_some(state),
            Step::Cas { expect, value, succeeded } => {
                let holds = matches(expect);
                match succeeded {
                    Some(s) if s != holds => None,
                    _ => Some(if holds { Some(value) } else { state }),
                }
            }
            Step::Compare { expect, holds } => (matches(expect) == holds).then_some(state),
            Step::Delete(deleted) => match deleted {
                Some(d) if d != state.is_some() => None,
                _ => Some(None),
            },
        }
    }
}

/// A key whose history no order explains, with a smallest history found
/// that still shows it; or one whose search gave up (`undecided`), with its
/// whole history.
#[derive(Debug)]
pub struct Violation {
    pub key: String,
    pub undecided: bool,
    pub witness: Vec<Op>,
}

/// The search's memo may hold this many words of taken-sets before it gives
/// up on a key (a quarter of a GiB).
const MEMO_WORDS: usize = 32 << 20;

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        if self.undecided {
            let unanswered = self.witness.iter().filter(|o| o.ret.is_none()).count();
            return writeln!(
                f,
                "key {:?}: the linearizability search gave up ({} operations, {unanswered} never answered)",
                self.key,
                self.witness.len()
            );
        }
        writeln!(f, "key {:?} is not linearizable; a smallest history that shows it ({} operations):", self.key, self.witness.len())?;
        let mut ops = self.witness.clone();
        ops.sort_by_key(|o| o.call);
        for op in ops {
            let ret = op.ret.map_or("never answered".to_string(), |r| format!("{:.3} ms", r as f64 / 1000.0));
            writeln!(f, "  client {:>3}  {:>12.3} ms .. {ret:>16}  {:?}", op.client, op.call as f64 / 1000.0, op.kind)?;
        }
        Ok(())
    }
}

/// Checks every key; the first violation found, shrunk, or `Ok`.
pub fn check(history: &[Op]) -> Result<(), Violation> {
    let mut by_key: BTreeMap<&str, Vec<Op>> = BTreeMap::new();
    for op in history {
        by_key.entry(&op.key).or_default().push(op.clone());
    }
    for (key, ops) in by_key {
        match linearizable(&ops) {
            Some(true) => {}
            Some(false) => return Err(Violation { key: key.to_string(), undecided: false, witness: shrink(ops) }),
            None => return Err(Violation { key: key.to_string(), undecided: true, witness: ops }),
        }
    }
    Ok(())
}

/// Drops reads one at a time while the rest still cannot be ordered. Only
/// reads: they change nothing, so a subset without some of them that no
/// order explains proves the whole history wrong; dropping a write would
/// not.
fn shrink(mut ops: Vec<Op>) -> Vec<Op> {
    let mut i = 0;
    while i < ops.len() {
        if ops[i].kind.is_read() {
            let mut without = ops.clone();
            without.remove(i);
            if linearizable(&without) == Some(false) {
                ops = without;
                continue;
            }
        }
        i += 1;
    }
    ops
}

/// The Wing–Gong search over one key's operations: take, in turn, an
/// operation that is minimal (called before any untaken operation returned)
/// and whose answer fits the state; back off when none fits. `None`: the
/// search outgrew its memo.
pub fn linearizable(ops: &[Op]) -> Option<bool> {
    let mut values: HashMap<String, u32> = HashMap::new();
    let mut id = |v: &str| {
        let next = values.len() as u32;
        *values.entry(v.to_string()).or_insert(next)
    };
    let steps: Vec<Step> = ops
        .iter()
        .map(|op| match &op.kind {
            Kind::Put { value } => Step::Put(id(value)),
            Kind::Get { found } => Step::Get(found.as_deref().map(&mut id)),
            Kind::Cas { expect, value, succeeded } => {
                Step::Cas { expect: expect.as_deref().map(&mut id), value: id(value), succeeded: *succeeded }
            }
            Kind::Compare { expect, holds } => Step::Compare { expect: expect.as_deref().map(&mut id), holds: *holds },
            Kind::Delete { deleted, .. } => Step::Delete(*deleted),
        })
        .collect();

    // Calls and returns in time order, a call before a return at the same
    // instant (treating touching operations as concurrent never rejects a
    // right history). An answer that never came returns after everything.
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, op) in ops.iter().enumerate() {
        events.push((op.call, false, i));
        events.push((op.ret.unwrap_or(u64::MAX), true, i));
    }
    events.sort_by_key(|&(t, is_return, i)| (t, is_return, i));

    // A doubly linked list over the events (index 0 is the head), from which
    // taken operations are lifted and put back on backtracking.
    let n = events.len();
    let mut next: Vec<usize> = (1..=n + 1).collect();
    let mut prev: Vec<usize> = (0..=n).map(|i| i.wrapping_sub(1)).collect();
    next[n] = usize::MAX; // node n is the last event
    let node_of = |e: usize| e + 1;
    let mut return_node = vec![0; ops.len()];
    for (e, &(_, is_return, i)) in events.iter().enumerate() {
        if is_return {
            return_node[i] = node_of(e);
        }
    }
    let lift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, node: usize| {
        let (p, nx) = (prev[node], next[node]);
        next[p] = nx;
        if nx != usize::MAX {
            prev[nx] = p;
        }
    };
    let unlift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, node: usize| {
        let (p, nx) = (prev[node], next[node]);
        next[p] = node;
        if nx != usize::MAX {
            prev[nx] = node;
        }
    };

    let words = ops.len().div_ceil(64);
    let mut taken = vec![0u64; words];
    let mut seen: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut state: State = None;
    let mut node = next[0];
    while next[0] != usize::MAX {
        if node == usize::MAX {
            // Only untaken returns can end a pass; the list is never empty here.
            unreachable!("the event list ended before a return");
        }
        let (_, is_return, i) = events[node - 1];
        if !is_return {
            if let Some(after) = steps[i].apply(state) {
                taken[i / 64] |= 1 << (i % 64);
                if seen.len() * words > MEMO_WORDS {
                    return None;
                }
                if seen.insert((taken.clone(), after)) {
                    stack.push((node, state));
                    state = after;
                    lift(&mut next, &mut prev, node);
                    lift(&mut next, &mut prev, return_node[i]);
                    node = next[0];
                    continue;
                }
                taken[i / 64] &= !(1 << (i % 64));
            }
            node = next[node];
        } else {
            // An operation returned before any order could take it: undo the
            // last choice and try the next candidate after it.
            let Some((call, before)) = stack.pop() else { return Some(false) };
            let (_, _, i) = events[call - 1];
            state = before;
            taken[i / 64] &= !(1 << (i % 64));
            unlift(&mut next, &mut prev, return_node[i]);
            unlift(&mut next, &mut prev, call);
            node = next[call];
        }
    }
    Some(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: usize, call: u64, ret: Option<u64>, kind: Kind) -> Op {
        Op { client, key: "k".into(), call, ret, revision: None, kind }
    }
    fn put(c: usize, call: u64, ret: u64, v: &str) -> Op {
        op(c, call, Some(ret), Kind::Put { value: v.into() })
    }
    fn get(c: usize, call: u64, ret: u64, v: Option<&str>) -> Op {
        op(c, call, Some(ret), Kind::Get { found: v.map(Into::into) })
    }

    #[test]
    fn concurrent_writes_may_be_read_in_either_order() {
        let h = [put(0, 0, 10, "a"), put(1, 1, 9, "b"), get(2, 11, 12, Some("a")), get(3, 13, 14, Some("a"))];
        assert!(check(&h).is_ok());
        let h = [put(0, 0, 10, "a"), put(1, 1, 9, "b"), get(2, 11, 12, Some("b"))];
        assert!(check(&h).is_ok());
    }

    #[test]
    fn rejects_a_stale_read() {
        let h = [put(0, 0, 1, "a"), put(0, 2, 3, "b"), get(1, 4, 5, Some("a"))];
        let v = check(&h).unwrap_err();
        assert_eq!(v.key, "k");
        assert!(v.to_string().contains("Get"), "{v}");
    }

    #[test]
    fn rejects_a_read_that_goes_back() {
        // Both reads overlap the write, but once "b" was seen "a" cannot be.
        let h = [put(0, 0, 1, "a"), put(1, 2, 20, "b"), get(2, 3, 4, Some("b")), get(3, 5, 6, Some("a"))];
        assert!(check(&h).is_err());
    }

    #[test]
    fn rejects_a_lost_write() {
        let h = [put(0, 0, 1, "a"), get(1, 2, 3, None)];
        assert!(check(&h).is_err());
    }

    #[test]
    fn an_unanswered_write_may_or_may_not_take_effect() {
        let lost = op(0, 0, None, Kind::Put { value: "a".into() });
        assert!(check(&[lost.clone(), get(1, 5, 6, None), get(1, 7, 8, Some("a"))]).is_ok());
        assert!(check(&[lost.clone(), get(1, 5, 6, None)]).is_ok());
        // But it cannot be undone once seen.
        assert!(check(&[lost, get(1, 5, 6, Some("a")), get(1, 7, 8, None)]).is_err());
    }

    #[test]
    fn cas_and_compare_follow_the_register() {
        let cas = |c, call, ret, e: Option<&str>, v: &str, s| {
            op(c, call, Some(ret), Kind::Cas { expect: e.map(Into::into), value: v.into(), succeeded: Some(s) })
        };
        let cmp = |c, call, ret, e: Option<&str>, holds| op(c, call, Some(ret), Kind::Compare { expect: e.map(Into::into), holds });
        let good = [cas(0, 0, 1, None, "a", true), cas(1, 2, 3, None, "b", false), cmp(2, 4, 5, Some("a"), true), cas(0, 6, 7, Some("a"), "c", true)];
        assert!(check(&good).is_ok());
        // Two clients both winning the same compare-and-swap.
        let double = [cas(0, 0, 1, None, "a", true), cas(1, 2, 3, None, "b", true)];
        assert!(check(&double).is_err());
        let wrong_compare = [put(0, 0, 1, "a"), cmp(1, 2, 3, Some("a"), false)];
        assert!(check(&wrong_compare).is_err());
    }

    #[test]
    fn a_value_compare_on_an_absent_key_is_false() {
        let h = [op(0, 0, Some(1), Kind::Compare { expect: Some("a".into()), holds: false })];
        assert!(check(&h).is_ok());
    }

    #[test]
    fn delete_answers_whether_the_key_existed() {
        let del = |c, call, ret, d| op(c, call, Some(ret), Kind::Delete { deleted: Some(d), marker: String::new() });
        assert!(check(&[put(0, 0, 1, "a"), del(1, 2, 3, true), del(1, 4, 5, false), get(0, 6, 7, None)]).is_ok());
        assert!(check(&[put(0, 0, 1, "a"), del(1, 2, 3, false)]).is_err());
    }

    #[test]
    fn the_witness_keeps_only_the_reads_that_matter() {
        let mut h = vec![put(0, 0, 1, "a"), put(0, 2, 3, "b")];
        h.extend((0..20).map(|i| get(1, 4 + 2 * i, 5 + 2 * i, Some("b"))));
        h.push(get(2, 100, 101, Some("a")));
        let v = check(&h).unwrap_err();
        assert_eq!(v.witness.len(), 3, "{v}");
    }

    #[test]
    fn many_concurrent_clients_are_searched_quickly() {
        // 8 clients, 4000 operations, every read right: must pass in well
        // under a second.
        let mut h = Vec::new();
        let mut t = 0;
        for round in 0..500 {
            t += 10;
            let v = format!("v{round}");
            h.push(put(0, t, t + 5, &v));
            for c in 1..8 {
                h.push(get(c, t + 6, t + 9, Some(&v)));
            }
        }
        let started = std::time::Instant::now();
        assert!(check(&h).is_ok());
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }
}
