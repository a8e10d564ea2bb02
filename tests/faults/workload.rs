//! The clients of a fault run, each recording what it asked and what it
//! learned: key-value clients (put, linearizable get, compare-and-swap and
//! compare-only transactions, delete), lock clients on leases kept alive,
//! and watchers that resume where they stopped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, LockOptions, Txn, TxnOp, TxnOpResponse, WatchFilterType,
    WatchOptions,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::linearizable::{Kind, Op};
use crate::locks::Hold;
use crate::watches::{Event, Response, Stream};

/// A write the cluster acknowledged, with the revision it answered: it must
/// be in the store's history at exactly that revision. `value` is `None`
/// for a delete.
#[derive(Clone, Debug)]
pub struct Acked {
    pub key: String,
    pub value: Option<String>,
    pub revision: i64,
}

/// Everything the clients saw, on one clock.
pub struct Recorder {
    start: Instant,
    pub ops: Mutex<Vec<Op>>,
    pub acked: Mutex<Vec<Acked>>,
    pub holds: Mutex<Vec<Hold>>,
    pub streams: Mutex<Vec<Stream>>,
    pub stop: AtomicBool,
    /// The key prefix of the current round: rounds use keys of their own, so
    /// each key's history stays short enough to search.
    pub prefix: Mutex<String>,
}

/// How long a client waits for an answer before it counts the outcome as
/// unknown.
const PATIENCE: Duration = Duration::from_secs(2);
pub const KEYS_PER_ROUND: usize = 8;
/// Where deletes write their markers.
pub const MARKERS: &str = "d/";
pub const LEASE_TTL: i64 = 3;

impl Recorder {
    pub fn new() -> Arc<Recorder> {
        Arc::new(Recorder {
            start: Instant::now(),
            ops: Mutex::default(),
            acked: Mutex::default(),
            holds: Mutex::default(),
            streams: Mutex::default(),
            stop: AtomicBool::new(false),
            prefix: Mutex::new("k/0/".into()),
        })
    }

    /// Microseconds since the history began.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

pub async fn connect(endpoints: &[String]) -> Option<Client> {
    let options = ConnectOptions::new().with_connect_timeout(Duration::from_secs(1)).with_timeout(PATIENCE);
    Client::connect(endpoints, Some(options)).await.ok()
}

async fn within<T, E>(f: impl std::future::Future<Output = Result<T, E>>) -> Option<T> {
    tokio::time::timeout(PATIENCE, f).await.ok()?.ok()
}

/// A client doing random operations on the round's keys until the run stops.
pub async fn kv_client(rec: Arc<Recorder>, endpoints: Vec<String>, id: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut seq = 0u64;
    let mut last_read: std::collections::HashMap<String, Option<String>> = Default::default();
    while !rec.stopped() {
        let Some(mut c) = connect(&endpoints).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        while !rec.stopped() {
            let key = format!("{}{}", rec.prefix.lock().unwrap(), rng.random_range(0..KEYS_PER_ROUND));
            seq += 1;
            let value = format!("c{id}.{seq}");
            let expect = last_read.get(&key).cloned().flatten();
            let compare = match &expect {
                Some(v) => Compare::value(key.clone(), CompareOp::Equal, v.clone()),
                None => Compare::version(key.clone(), CompareOp::Equal, 0),
            };
            let call = rec.now();
            let revision_of = |h: Option<&etcd_client::ResponseHeader>| h.map_or(0, |h| h.revision());
            let (kind, revision) = match rng.random_range(0..100) {
                0..30 => {
                    let r = within(c.put(key.clone(), value.clone(), None)).await;
                    (Kind::Put { value }, r.map(|r| revision_of(r.header())))
                }
                30..60 => match within(c.get(key.clone(), None)).await {
                    Some(r) => {
                        let found = r.kvs().first().map(|kv| kv.value_str().unwrap().to_string());
                        last_read.insert(key.clone(), found.clone());
                        (Kind::Get { found }, Some(revision_of(r.header())))
                    }
                    None => (Kind::Get { found: None }, None),
                },
                60..75 => {
                    let txn = Txn::new().when([compare]).and_then([TxnOp::put(key.clone(), value.clone(), None)]);
                    let r = within(c.txn(txn)).await;
                    let succeeded = r.as_ref().map(|r| r.succeeded());
                    (Kind::Cas { expect, value, succeeded }, r.map(|r| revision_of(r.header())))
                }
                75..90 => {
                    let r = within(c.txn(Txn::new().when([compare]))).await;
                    let holds = r.as_ref().is_some_and(|r| r.succeeded());
                    (Kind::Compare { expect, holds }, r.map(|r| revision_of(r.header())))
                }
                _ => {
                    // With a marker key written in the same revision, so that
                    // the store's history tells whether a delete whose answer
                    // never came took effect, and when.
                    let marker = format!("{MARKERS}{value}");
                    let txn = Txn::new().and_then([TxnOp::delete(key.clone(), None), TxnOp::put(marker.clone(), "", None)]);
                    let r = within(c.txn(txn)).await;
                    let deleted = r.as_ref().map(|r| matches!(r.op_responses().first(), Some(TxnOpResponse::Delete(d)) if d.deleted() > 0));
                    (Kind::Delete { deleted, marker }, r.map(|r| revision_of(r.header())))
                }
            };
            let answered = revision.is_some();
            if let (Some(revision), Some(value)) = (revision, kind.written()) {
                rec.acked.lock().unwrap().push(Acked { key: key.clone(), value, revision });
            }
            // A write with no answer may or may not have taken effect; a
            // read with no answer tells nothing and is left out.
            if answered || !kind.is_read() {
                let ret = answered.then(|| rec.now());
                rec.ops.lock().unwrap().push(Op { client: id, key, call, ret, revision, kind });
            }
            if !answered {
                break; // reconnect: the member behind the channel may be gone
            }
        }
    }
}

/// Takes one lock again and again, each time on a fresh lease kept alive
/// while held; records each hold as this client believed it.
pub async fn lock_client(rec: Arc<Recorder>, endpoints: Vec<String>, id: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    while !rec.stopped() {
        let Some(mut c) = connect(&endpoints).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let granted_at = rec.now();
        let Some(lease) = within(c.lease_grant(LEASE_TTL, None)).await.map(|r| r.id()) else { continue };
        let trusted_until = Arc::new(Mutex::new(granted_at + LEASE_TTL as u64 * 1_000_000));
        let keeper = tokio::spawn(keep_alive(rec.clone(), c.clone(), lease, trusted_until.clone()));
        let lock = within(c.lock("lk/shared", Some(LockOptions::new().with_lease(lease)))).await;
        if let Some(lock) = lock {
            let acquired = rec.now();
            tokio::time::sleep(Duration::from_millis(rng.random_range(50..300))).await;
            let unlock_sent = rec.now();
            let _ = within(c.unlock(lock.key().to_vec())).await;
            let released = unlock_sent.min(*trusted_until.lock().unwrap());
            rec.holds.lock().unwrap().push(Hold { client: id, lock: "lk/shared".into(), acquired, released });
        }
        keeper.abort();
        let _ = within(c.lease_revoke(lease)).await;
    }
}

/// Renews `lease` every half second; each answer that finds it alive moves
/// `trusted_until` to the TTL after that renewal was sent.
async fn keep_alive(rec: Arc<Recorder>, mut c: Client, lease: i64, trusted_until: Arc<Mutex<u64>>) {
    loop {
        let Some((mut keeper, mut answers)) = within(c.lease_keep_alive(lease)).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        loop {
            let sent = rec.now();
            let answer = tokio::time::timeout(PATIENCE, async {
                keeper.keep_alive().await?;
                answers.message().await
            })
            .await;
            match answer {
                Ok(Ok(Some(a))) if a.ttl() > 0 => {
                    let mut t = trusted_until.lock().unwrap();
                    *t = (*t).max(sent + a.ttl() as u64 * 1_000_000);
                }
                Ok(Ok(Some(_))) => return, // the lease is gone
                _ => break,
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

pub fn event(e: &etcd_client::Event) -> Event {
    let kv = e.kv().expect("a watch event has a key");
    Event {
        put: e.event_type() == EventType::Put,
        key: kv.key_str().unwrap().to_string(),
        value: kv.value_str().unwrap().to_string(),
        mod_revision: kv.mod_revision(),
        create_revision: kv.create_revision(),
        version: kv.version(),
        prev_value: e.prev_kv().map(|p| p.value_str().unwrap().to_string()),
    }
}

/// What a watcher asks for.
#[derive(Clone)]
pub struct WatchSpec {
    pub name: String,
    pub prefix: String,
    pub only_deletes: bool,
    pub prev_kv: bool,
}

impl WatchSpec {
    fn options(&self, from: i64) -> WatchOptions {
        let mut o = WatchOptions::new().with_prefix().with_start_revision(from).with_progress_notify();
        if self.prev_kv {
            o = o.with_prev_key();
        }
        if self.only_deletes {
            o = o.with_filters([WatchFilterType::NoPut]);
        }
        o
    }

    fn stream(&self, endpoint: &str, from: i64) -> Stream {
        Stream {
            name: format!("{} from {from} on {endpoint}", self.name),
            prefix: self.prefix.clone(),
            only_deletes: self.only_deletes,
            prev_kv: self.prev_kv,
            start_revision: from,
            responses: Vec::new(),
        }
    }
}

/// Reads one watch on `endpoint` from revision `from` (asking for progress
/// every `progress_every`) until `done` says so or the stream breaks.
async fn follow(
    endpoint: &str,
    spec: &WatchSpec,
    from: i64,
    progress_every: Duration,
    mut done: impl FnMut(&Stream) -> bool,
) -> Stream {
    let mut stream = spec.stream(endpoint, from);
    let Some(mut c) = connect(&[endpoint.to_string()]).await else { return stream };
    let Some(mut w) = within(c.watch(spec.prefix.clone(), Some(spec.options(from)))).await else { return stream };
    let mut ticks = tokio::time::interval(progress_every);
    while !done(&stream) {
        tokio::select! {
            message = w.message() => match message {
                Ok(Some(r)) if r.canceled() => break,
                Ok(Some(r)) if r.created() => {}
                Ok(Some(r)) => stream.responses.push(Response {
                    revision: r.header().map_or(0, |h| h.revision()),
                    progress: r.events().is_empty(),
                    events: r.events().iter().map(event).collect(),
                }),
                _ => break,
            },
            _ = ticks.tick() => {
                if w.request_progress().await.is_err() {
                    break;
                }
            }
        }
    }
    stream
}

/// The last revision a stream vouched for: its last event or progress.
pub fn reached(stream: &Stream) -> i64 {
    let last = stream.responses.iter().rev().find_map(|r| {
        if r.progress {
            Some(r.revision)
        } else {
            r.events.last().map(|e| e.mod_revision)
        }
    });
    last.unwrap_or(stream.start_revision - 1)
}

/// Watches from `from` on each member in turn, resuming after the last
/// revision seen whenever a stream breaks, until the run stops.
pub async fn watcher(rec: Arc<Recorder>, endpoints: Vec<String>, spec: WatchSpec, mut from: i64) {
    let mut turn = 0;
    while !rec.stopped() {
        let endpoint = &endpoints[turn % endpoints.len()];
        turn += 1;
        let stream = follow(endpoint, &spec, from, Duration::from_millis(700), |_| rec.stopped()).await;
        from = reached(&stream) + 1;
        rec.streams.lock().unwrap().push(stream);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One watch on `endpoint` from `from` until it vouched for `until` (a long
/// run's whole history takes minutes).
pub async fn collect(endpoint: &str, spec: &WatchSpec, from: i64, until: i64) -> Result<Stream, String> {
    let deadline = Instant::now() + Duration::from_secs(600);
    let stream = follow(endpoint, spec, from, Duration::from_millis(200), |s| reached(s) >= until || Instant::now() > deadline).await;
    if reached(&stream) < until {
        return Err(format!("watch {} on {endpoint} reached revision {} of {until}", stream.name, reached(&stream)));
    }
    Ok(stream)
}

/// The current revision, linearizably, from `endpoint`.
pub async fn revision(endpoint: &str) -> Option<i64> {
    let mut c = connect(&[endpoint.to_string()]).await?;
    within(c.get("k/", Some(GetOptions::new().with_count_only()))).await.map(|r| r.header().unwrap().revision())
}
