//! Watch invariants as etcd's robustness suite states them, checked against
//! the truth: every event of the run, read at the end from revision 1 by one
//! watch, itself checked against the rules of etcd's multi-version store.

use std::collections::{BTreeMap, HashMap, HashSet};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub put: bool,
    pub key: String,
    pub value: String,
    pub mod_revision: i64,
    pub create_revision: i64,
    pub version: i64,
    /// The key's value before the event, when the watch asked for it.
    pub prev_value: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Response {
    pub revision: i64,
    pub events: Vec<Event>,
    /// No events: a progress notification, which promises every event up to
    /// `revision` was sent.
    pub progress: bool,
}

/// One watch, from creation until it ended, as its client saw it.
#[derive(Clone, Debug)]
pub struct Stream {
    pub name: String,
    pub prefix: String,
    pub only_deletes: bool,
    pub prev_kv: bool,
    pub start_revision: i64,
    pub responses: Vec<Response>,
}

/// A key as the store holds it: value, create revision, mod revision, version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub value: String,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
}

/// Checks that the truth is a history etcd's store can produce (revisions
/// rise by one per transaction, a put's create revision and version follow
/// from the key's past, a delete removes a present key, prev_kv is the
/// previous value); returns the store it leaves.
pub fn replay(truth: &[Event]) -> Result<BTreeMap<String, Stored>, String> {
    let mut store: BTreeMap<String, Stored> = BTreeMap::new();
    let mut last_revision = 1;
    let mut keys_in_revision: HashSet<&str> = HashSet::new();
    for e in truth {
        let at = format!("event at revision {} on {:?}", e.mod_revision, e.key);
        if e.mod_revision != last_revision {
            if e.mod_revision != last_revision + 1 {
                return Err(format!("{at}: revisions jump from {last_revision} (a missing transaction)"));
            }
            last_revision = e.mod_revision;
            keys_in_revision.clear();
        }
        if !keys_in_revision.insert(&e.key) {
            return Err(format!("{at}: the key appears twice in one revision"));
        }
        let before = store.get(&e.key);
        if e.prev_value.as_ref() != before.map(|s| &s.value) {
            return Err(format!("{at}: prev_kv {:?}, but the key held {:?}", e.prev_value, before.map(|s| &s.value)));
        }
        if e.put {
            let (create, version) = before.map_or((e.mod_revision, 1), |s| (s.create_revision, s.version + 1));
            if (e.create_revision, e.version) != (create, version) {
                return Err(format!(
                    "{at}: create revision {} version {}, expected {create} and {version}",
                    e.create_revision, e.version
                ));
            }
            let stored = Stored { value: e.value.clone(), create_revision: create, mod_revision: e.mod_revision, version };
            store.insert(e.key.clone(), stored);
        } else if store.remove(&e.key).is_none() {
            return Err(format!("{at}: a delete of an absent key"));
        }
    }
    Ok(store)
}

/// The invariants of one stream: ordered, unique, atomic, bookmarkable, and
/// equal to the truth (reliable: no gap; prev_kv, create revision and
/// filters right) from its start to the last revision it vouched for.
pub fn check_stream(stream: &Stream, truth: &[Event]) -> Result<(), String> {
    let fail = |what: String| Err(format!("watch {}: {what}", stream.name));
    let mut seen: HashSet<(i64, &str)> = HashSet::new();
    let mut response_of_revision: HashMap<i64, usize> = HashMap::new();
    let mut last_event = 0;
    let mut vouched = stream.start_revision - 1;
    // Progress at a revision promises no event at or below it follows.
    let mut promised = stream.start_revision - 1;
    let mut last_progress = 0;
    for (i, r) in stream.responses.iter().enumerate() {
        if r.progress {
            // Back from what this stream itself showed: a member that lags
            // behind a resumed watch's start may report its own revision,
            // which promises nothing false (as etcd's robustness suite reads it).
            let shown = last_event.max(last_progress);
            if r.revision < shown {
                return fail(format!("progress went back from revision {shown} to {}", r.revision));
            }
            last_progress = r.revision;
            vouched = vouched.max(r.revision);
            promised = promised.max(r.revision);
            continue;
        }
        for e in &r.events {
            if e.mod_revision < last_event {
                return fail(format!("event at revision {} after one at {last_event}", e.mod_revision));
            }
            if e.mod_revision <= promised {
                return fail(format!("event at revision {} after progress to {promised}", e.mod_revision));
            }
            if !seen.insert((e.mod_revision, &e.key)) {
                return fail(format!("duplicate event at revision {} on {:?}", e.mod_revision, e.key));
            }
            if *response_of_revision.entry(e.mod_revision).or_insert(i) != i {
                return fail(format!("the events of revision {} came split over two responses", e.mod_revision));
            }
            last_event = e.mod_revision;
        }
        vouched = vouched.max(last_event);
    }
    let expected: Vec<Event> = truth
        .iter()
        .filter(|e| e.mod_revision >= stream.start_revision && e.mod_revision <= vouched)
        .filter(|e| e.key.starts_with(&stream.prefix) && !(stream.only_deletes && e.put))
        .map(|e| Event { prev_value: if stream.prev_kv { e.prev_value.clone() } else { None }, ..e.clone() })
        .collect();
    let got: Vec<&Event> = stream.responses.iter().flat_map(|r| &r.events).collect();
    for (n, want) in expected.iter().enumerate() {
        match got.get(n) {
            None => return fail(format!("missing the event at revision {} on {:?} (a gap)", want.mod_revision, want.key)),
            Some(&have) if have != want => {
                let around = around(truth, have.mod_revision.min(want.mod_revision) - 1, have.mod_revision.max(want.mod_revision));
                return fail(format!("got {have:?} where the store has {want:?}; the store's history there:\n{around}"));
            }
            Some(_) => {}
        }
    }
    if let Some(extra) = got.get(expected.len()) {
        let around = around(truth, extra.mod_revision - 1, extra.mod_revision + 1);
        return fail(format!("an event the store does not have or the watch did not ask for: {extra:?}; the store's history there:\n{around}"));
    }
    Ok(())
}

/// Every event of the truth in revisions `from..=to`, one per line: what a
/// violation is read against.
fn around(truth: &[Event], from: i64, to: i64) -> String {
    truth.iter().filter(|e| (from..=to).contains(&e.mod_revision)).map(|e| format!("  {e:?}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(rev: i64, key: &str, value: &str, create: i64, version: i64, prev: Option<&str>) -> Event {
        Event {
            put: true,
            key: key.into(),
            value: value.into(),
            mod_revision: rev,
            create_revision: create,
            version,
            prev_value: prev.map(Into::into),
        }
    }
    fn del(rev: i64, key: &str, prev: &str) -> Event {
        Event { put: false, key: key.into(), value: String::new(), mod_revision: rev, create_revision: 0, version: 0, prev_value: Some(prev.into()) }
    }
    fn truth() -> Vec<Event> {
        vec![
            put(2, "k/a", "1", 2, 1, None),
            put(3, "k/a", "2", 2, 2, Some("1")),
            put(3, "k/b", "x", 3, 1, None),
            del(4, "k/a", "2"),
            put(5, "k/a", "3", 5, 1, None),
        ]
    }
    fn stream(responses: Vec<Response>) -> Stream {
        Stream { name: "w".into(), prefix: "k/".into(), only_deletes: false, prev_kv: true, start_revision: 2, responses }
    }
    fn events(evs: &[Event], revision: i64) -> Response {
        Response { revision, events: evs.to_vec(), progress: false }
    }
    fn progress(revision: i64) -> Response {
        Response { revision, events: Vec::new(), progress: true }
    }

    #[test]
    fn a_faithful_stream_passes() {
        let t = truth();
        assert_eq!(replay(&t).unwrap()["k/a"].create_revision, 5);
        let s = stream(vec![events(&t[0..1], 2), progress(2), events(&t[1..3], 3), events(&t[3..5], 5), progress(5)]);
        check_stream(&s, &t).unwrap();
        // A lagging member's progress below the start of a resumed watch.
        let s = stream(vec![progress(1), events(&t[0..1], 2)]);
        check_stream(&s, &t).unwrap();
    }

    #[test]
    fn rejects_a_gap() {
        let t = truth();
        let s = stream(vec![events(&t[0..1], 2), events(&t[3..5], 5)]);
        assert!(check_stream(&s, &t).unwrap_err().contains("where the store has"));
        // A gap at the end, once progress vouched for it.
        let s = stream(vec![events(&t[0..3], 3), progress(5)]);
        assert!(check_stream(&s, &t).unwrap_err().contains("gap"));
    }

    #[test]
    fn rejects_a_duplicate_event() {
        let t = truth();
        let s = stream(vec![events(&t[0..1], 2), events(&t[0..1], 2)]);
        assert!(check_stream(&s, &t).unwrap_err().contains("duplicate"));
    }

    #[test]
    fn rejects_a_transaction_split_over_responses() {
        let t = truth();
        let s = stream(vec![events(&t[0..2], 3), events(&t[2..3], 3)]);
        assert!(check_stream(&s, &t).unwrap_err().contains("split"));
    }

    #[test]
    fn rejects_events_out_of_order_and_progress_that_goes_back() {
        let t = truth();
        let s = stream(vec![events(&t[1..3], 3), events(&t[0..1], 2)]);
        assert!(check_stream(&s, &t).unwrap_err().contains("after one at"));
        let s = stream(vec![events(&t[0..1], 2), progress(4), progress(3)]);
        assert!(check_stream(&s, &t).unwrap_err().contains("progress went back"));
        let s = stream(vec![progress(3), events(&t[1..3], 3)]);
        assert!(check_stream(&s, &t).unwrap_err().contains("after progress"));
    }

    #[test]
    fn rejects_a_wrong_prev_kv_or_create_flag() {
        let t = truth();
        let mut wrong = t[1..3].to_vec();
        wrong[0].prev_value = None;
        let s = stream(vec![events(&t[0..1], 2), events(&wrong, 3)]);
        assert!(check_stream(&s, &t).is_err());
        let mut not_created = t[4..5].to_vec();
        not_created[0].create_revision = 2;
        let s = stream(vec![events(&t[0..1], 2), events(&t[1..3], 3), events(&t[3..4], 4), events(&not_created, 5)]);
        assert!(check_stream(&s, &t).is_err());
    }

    #[test]
    fn rejects_an_event_the_filter_excludes() {
        let t = truth();
        let mut s = stream(vec![events(&t[3..4], 4), progress(5)]);
        s.only_deletes = true;
        check_stream(&s, &t).unwrap();
        s.responses.insert(0, events(&t[0..1], 2));
        assert!(check_stream(&s, &t).is_err());
    }

    #[test]
    fn the_truth_itself_must_replay() {
        let mut t = truth();
        t[1].version = 1;
        assert!(replay(&t).unwrap_err().contains("version"));
        let mut t = truth();
        t.remove(3);
        assert!(replay(&t).unwrap_err().contains("missing transaction"));
        let mut t = truth();
        t[4].prev_value = Some("2".into());
        assert!(replay(&t).unwrap_err().contains("prev_kv"));
    }
}
