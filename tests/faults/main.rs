//! The fault harness: a real three-member cluster of real processes, each on
//! a network namespace of its own, under concurrent clients (puts,
//! linearizable gets, compare-and-swap and compare-only transactions,
//! deletes, locks on leases, watches), with one fault at a time; then the
//! history is checked: linearizability of every key, the watch invariants,
//! every acknowledged write in the store at its revision on every member,
//! and never two lock holders. The checkers are tested on histories known to
//! be wrong (in their own modules).
//!
//! Short mode (every fault once) runs in the suite; the long mode is
//! `scripts/torture.sh --minutes N`. `CAIRN_FAULT_SEED` replays a schedule.

#[path = "../common/mod.rs"]
mod common;
mod linearizable;
mod locks;
mod schedule;
mod watches;
mod workload;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use linearizable::Kind;
use schedule::{Cluster, Fault};
use workload::{Recorder, WatchSpec};

const KV_CLIENTS: usize = 6;
const LOCK_CLIENTS: usize = 2;

#[test]
fn every_fault_once_keeps_histories_linearizable_and_watches_whole() {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut faults = Fault::ALL.to_vec();
    faults.shuffle(&mut rng);
    run(seed, rng, |round, _| faults.get(round).copied());
}

/// `scripts/torture.sh --minutes N [--faults A,B]`: random faults for N
/// minutes (CAIRN_TORTURE_MINUTES), drawn from those named in CAIRN_FAULTS
/// (all when unset), to hammer on one fault a run once failed with.
#[test]
#[ignore]
fn torture() {
    let minutes: u64 = std::env::var("CAIRN_TORTURE_MINUTES").ok().and_then(|m| m.parse().ok()).unwrap_or(30);
    let faults = chosen_faults();
    let seed = seed();
    let rng = StdRng::seed_from_u64(seed);
    let end = Instant::now() + Duration::from_secs(minutes * 60);
    run(seed, rng, |_, rng| (Instant::now() < end).then(|| faults[rng.random_range(0..faults.len())]));
}

fn chosen_faults() -> Vec<Fault> {
    let Ok(names) = std::env::var("CAIRN_FAULTS") else { return Fault::ALL.to_vec() };
    names
        .split(',')
        .map(|name| {
            let found = Fault::ALL.iter().find(|f| format!("{f:?}") == name.trim());
            *found.unwrap_or_else(|| panic!("CAIRN_FAULTS: no fault {name:?}; there are {:?}", Fault::ALL))
        })
        .collect()
}

fn seed() -> u64 {
    let seed = std::env::var("CAIRN_FAULT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("fault schedule seed {seed} (replay with CAIRN_FAULT_SEED={seed})");
    seed
}

/// Runs the workload through the faults `next_fault` gives, round by round,
/// then checks everything; panics with the seed on any violation.
fn run(seed: u64, mut rng: StdRng, mut next_fault: impl FnMut(usize, &mut StdRng) -> Option<Fault>) {
    // Kept when the run fails: the members' logs and data are the evidence.
    let dir = tempfile::Builder::new().prefix("cairn-faults-").tempdir().unwrap().keep();
    eprintln!("members' logs and data in {}", dir.display());
    let Some(mut cluster) = Cluster::start(&dir) else { return };
    let rt = common::runtime();
    let endpoints = cluster.endpoints();
    let rec = Recorder::new();
    let first = rt.block_on(workload::revision(&endpoints[0])).expect("the cluster answers") + 1;
    let mut clients = Vec::new();
    for id in 0..KV_CLIENTS {
        clients.push(rt.spawn(workload::kv_client(rec.clone(), endpoints.clone(), id, rng.random())));
    }
    for id in 0..LOCK_CLIENTS {
        clients.push(rt.spawn(workload::lock_client(rec.clone(), endpoints.clone(), KV_CLIENTS + id, rng.random())));
    }
    let specs = [
        WatchSpec { name: "every k/ event with prev_kv".into(), prefix: "k/".into(), only_deletes: false, prev_kv: true },
        WatchSpec { name: "k/ deletes only".into(), prefix: "k/".into(), only_deletes: true, prev_kv: false },
    ];
    for (i, spec) in specs.iter().enumerate() {
        let mut order = endpoints.clone();
        order.rotate_left(i);
        clients.push(rt.spawn(workload::watcher(rec.clone(), order, spec.clone(), first)));
    }

    let mut done = Vec::new();
    let mut round = 0;
    while let Some(fault) = next_fault(round, &mut rng) {
        round += 1;
        *rec.prefix.lock().unwrap() = format!("k/{round}/");
        std::thread::sleep(Duration::from_secs(1));
        if let Some(what) = cluster.inject(fault, &rt) {
            eprintln!("round {round}: {what}");
            done.push(what);
        }
        std::thread::sleep(Duration::from_secs(1));
        cluster.assert_running();
    }
    rec.stop.store(true, Ordering::SeqCst);
    rt.block_on(async {
        for c in clients {
            let _ = tokio::time::timeout(Duration::from_secs(10), c).await;
        }
    });
    let report = rt.block_on(check(&cluster, &rec, first, &mut rng));
    match report {
        Ok(counts) => {
            eprintln!("{} faults; {counts}", done.len());
            drop(cluster);
            let _ = std::fs::remove_dir_all(&dir);
        }
        Err(violation) => panic!("{violation}\nfaults: {done:#?}\nreplay with CAIRN_FAULT_SEED={seed}"),
    }
}

/// Every check of a finished run; the operation counts, or the violation.
async fn check(cluster: &Cluster, rec: &Recorder, first: i64, rng: &mut StdRng) -> Result<String, String> {
    let endpoints = cluster.endpoints();
    let last = workload::revision(&endpoints[0]).await.ok_or("the cluster does not answer after the run")?;
    let everything = WatchSpec { name: "the truth".into(), prefix: String::new(), only_deletes: false, prev_kv: true };
    let truth = workload::collect(&endpoints[0], &everything, 1, last).await?;
    let truth: Vec<watches::Event> =
        truth.responses.into_iter().flat_map(|r| r.events).filter(|e| e.mod_revision <= last).collect();
    let store = watches::replay(&truth).map_err(|e| format!("the store's own history is wrong: {e}"))?;

    // Every acknowledged write is in the history at the revision it answered.
    let at: HashMap<(i64, &str), &watches::Event> = truth.iter().map(|e| ((e.mod_revision, e.key.as_str()), e)).collect();
    let acked = rec.acked.lock().unwrap().clone();
    for w in &acked {
        let found = at.get(&(w.revision, w.key.as_str()));
        let right = found.is_some_and(|e| match &w.value {
            Some(v) => e.put && &e.value == v,
            None => !e.put,
        });
        if !right {
            return Err(format!("lost acknowledged write: {w:?}; the history has {found:?} there"));
        }
    }

    // Every member ends with the same keys as the history.
    let k_store: BTreeMap<&String, &watches::Stored> = store.iter().filter(|(k, _)| k.starts_with("k/")).collect();
    for (m, endpoint) in endpoints.iter().enumerate() {
        let held = member_keys(endpoint, last).await?;
        let held: BTreeMap<&String, &watches::Stored> = held.iter().collect();
        if held != k_store {
            let differ: Vec<_> = k_store.keys().chain(held.keys()).filter(|k| held.get(*k) != k_store.get(*k)).take(5).collect();
            return Err(format!("member m{m} ends with other keys than the history, e.g. {differ:?}"));
        }
    }

    let ops = resolve_unanswered(&rec.ops.lock().unwrap(), &truth);
    let searched = Instant::now();
    linearizable::check(&ops).map_err(|v| v.to_string())?;
    let search_time = searched.elapsed();

    let mut streams = rec.streams.lock().unwrap().clone();
    for (m, endpoint) in endpoints.iter().enumerate() {
        for _ in 0..2 {
            let from = rng.random_range(first..=last);
            let spec = WatchSpec { name: format!("resumed on m{m}"), prefix: "k/".into(), only_deletes: false, prev_kv: true };
            streams.push(workload::collect(endpoint, &spec, from, last).await?);
        }
    }
    for s in &streams {
        watches::check_stream(s, &truth)?;
    }
    let holds = rec.holds.lock().unwrap().clone();
    locks::check(&holds)?;

    let all = rec.ops.lock().unwrap().len();
    let unanswered = rec.ops.lock().unwrap().iter().filter(|o| o.ret.is_none()).count();
    let events: usize = streams.iter().map(|s| s.responses.iter().map(|r| r.events.len()).sum::<usize>()).sum();
    Ok(format!(
        "{all} operations ({unanswered} unanswered, {} acknowledged writes, searched in {search_time:?}), \
         {} lock holds, {} watch streams with {events} events, {} revisions: \
         0 linearizability violations, 0 watch violations, 0 lost writes, 0 double lock holders",
        acked.len(),
        holds.len(),
        streams.len(),
        last - first + 1
    ))
}

/// Settles what the store's history tells about writes whose answer never
/// came, which keeps the search small: a put or compare-and-swap took effect
/// only if the history has its (unique) value, a delete only if it has the
/// marker the delete wrote beside it; then no later than the first answer
/// that carried that revision or a later one. Those that did not take effect
/// are left out (a write with no effect is a read, and no answer reached
/// anyone).
fn resolve_unanswered(ops: &[linearizable::Op], truth: &[watches::Event]) -> Vec<linearizable::Op> {
    let applied: HashMap<(&str, &str), i64> =
        truth.iter().filter(|e| e.put).map(|e| ((e.key.as_str(), e.value.as_str()), e.mod_revision)).collect();
    let deleted: HashSet<(&str, i64)> = truth.iter().filter(|e| !e.put).map(|e| (e.key.as_str(), e.mod_revision)).collect();
    // (revision, earliest return of an answer at that revision or later)
    let mut by_revision: Vec<(i64, u64)> = ops.iter().filter_map(|o| Some((o.revision?, o.ret?))).collect();
    by_revision.sort();
    for i in (0..by_revision.len().saturating_sub(1)).rev() {
        by_revision[i].1 = by_revision[i].1.min(by_revision[i + 1].1);
    }
    let first_answer_seeing = |revision: i64| by_revision.get(by_revision.partition_point(|(r, _)| *r < revision)).map(|(_, t)| *t);
    ops.iter()
        .filter_map(|op| {
            if op.ret.is_some() {
                return Some(op.clone());
            }
            match &op.kind {
                Kind::Put { value } | Kind::Cas { value, .. } => {
                    let revision = *applied.get(&(op.key.as_str(), value.as_str()))?;
                    let kind = match &op.kind {
                        Kind::Cas { expect, value, .. } => Kind::Cas { expect: expect.clone(), value: value.clone(), succeeded: Some(true) },
                        put => put.clone(),
                    };
                    Some(linearizable::Op { ret: first_answer_seeing(revision).filter(|t| *t > op.call), kind, ..op.clone() })
                }
                Kind::Delete { marker, .. } => {
                    let revision = *applied.get(&(marker.as_str(), ""))?;
                    let kind = Kind::Delete { deleted: Some(deleted.contains(&(op.key.as_str(), revision))), marker: marker.clone() };
                    Some(linearizable::Op { ret: first_answer_seeing(revision).filter(|t| *t > op.call), kind, ..op.clone() })
                }
                _ => Some(op.clone()),
            }
        })
        .collect()
}

/// The `k/` keys member `endpoint` holds, read serializably once it has
/// applied revision `last`.
async fn member_keys(endpoint: &str, last: i64) -> Result<BTreeMap<String, watches::Stored>, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(mut c) = workload::connect(&[endpoint.to_string()]).await {
            let options = etcd_client::GetOptions::new().with_prefix().with_serializable();
            if let Ok(r) = c.get("k/", Some(options)).await {
                if r.header().unwrap().revision() >= last {
                    return Ok(r
                        .kvs()
                        .iter()
                        .map(|kv| {
                            let stored = watches::Stored {
                                value: kv.value_str().unwrap().to_string(),
                                create_revision: kv.create_revision(),
                                mod_revision: kv.mod_revision(),
                                version: kv.version(),
                            };
                            (kv.key_str().unwrap().to_string(), stored)
                        })
                        .collect());
                }
            }
        }
        if Instant::now() > deadline {
            return Err(format!("{endpoint} did not reach revision {last}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
