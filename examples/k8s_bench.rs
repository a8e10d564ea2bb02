//! A Kubernetes-shaped load through the etcd v3 API, so cairn and etcd are
//! measured with the same client. Objects live under `/registry/pods/`, with
//! values of 1–4 KiB; every command prints one JSON line.
//!
//! - `load ENDPOINT OBJECTS UPDATES`: creates OBJECTS objects, then updates
//!   UPDATES of them (so the last UPDATES revisions each replace a value).
//! - `list ENDPOINT ROUNDS`: ROUNDS paginated LISTs as the API server's
//!   reflector makes them: pages of 500, every page after the first read at
//!   the first page's revision.
//! - `compact ENDPOINT SECONDS`: 16 writers update objects for SECONDS; a
//!   third of the way in, all history is compacted (physically, so the call
//!   returns when the store is done). Put latency during it and outside.

use std::time::{Duration, Instant};

use etcd_client::{Client, CompactionOptions, GetOptions};

const PREFIX: &str = "/registry/pods/";
const WRITERS: usize = 16;
const PAGE: i64 = 500;

fn object_key(i: usize) -> String {
    format!("{PREFIX}ns-{:02}/pod-{i:07}", i % 50)
}

/// 1–4 KiB of letters, different for every (object, generation): about as
/// compressible as the JSON and protobuf a cluster stores.
fn object_value(i: usize, generation: u64) -> Vec<u8> {
    let mut state = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ generation.wrapping_mul(0xD1B5_4A32_D192_ED03) | 1;
    let len = 1024 + (state % 3072) as usize;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            b'a' + (state % 26) as u8
        })
        .collect()
}

async fn connect(endpoint: &str) -> Client {
    cairn::ctl::client_from_env(&[endpoint.to_string()], Duration::from_secs(10)).await.expect("connect")
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)].as_secs_f64() * 1e3
}

/// Runs `count` writes of `generation` over WRITERS connections: write `n`
/// goes to object `object(n)`.
async fn write_all(endpoint: &str, count: usize, object: impl Fn(usize) -> usize + Copy + Send + 'static, generation: u64) -> Duration {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let mut client = connect(endpoint).await;
        tasks.push(tokio::spawn(async move {
            for n in (w..count).step_by(WRITERS) {
                let i = object(n);
                client.put(object_key(i), object_value(i, generation), None).await.expect("put");
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    started.elapsed()
}

async fn load(endpoint: &str, objects: usize, updates: usize) {
    let created = write_all(endpoint, objects, |n| n, 0).await;
    // Updates spread over the objects.
    let updated = write_all(endpoint, updates, move |n| n.wrapping_mul(7919) % objects, 1).await;
    let mut client = connect(endpoint).await;
    let revision = client.get("x", None).await.expect("get").header().expect("header").revision();
    println!(
        "{{\"objects\":{objects},\"updates\":{updates},\"create_seconds\":{:.3},\"update_seconds\":{:.3},\"revision\":{revision}}}",
        created.as_secs_f64(),
        updated.as_secs_f64()
    );
}

fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().expect("a prefix") += 1;
    end
}

async fn list(endpoint: &str, rounds: usize) {
    let mut client = connect(endpoint).await;
    let mut times = Vec::new();
    let (mut pages, mut objects, mut bytes) = (0, 0, 0);
    for _ in 0..rounds {
        let started = Instant::now();
        let (mut key, mut revision) = (PREFIX.as_bytes().to_vec(), 0);
        (pages, objects, bytes) = (0, 0, 0);
        loop {
            let options = GetOptions::new().with_range(prefix_end(PREFIX)).with_limit(PAGE).with_revision(revision);
            let page = client.get(key.clone(), Some(options)).await.expect("list page");
            if revision == 0 {
                revision = page.header().expect("header").revision();
            }
            pages += 1;
            objects += page.kvs().len();
            bytes += page.kvs().iter().map(|kv| kv.value().len()).sum::<usize>();
            match page.kvs().last() {
                Some(last) if page.more() => key = [last.key(), b"\0"].concat(),
                _ => break,
            }
        }
        times.push(started.elapsed());
    }
    times.sort();
    println!(
        "{{\"rounds\":{rounds},\"pages\":{pages},\"objects\":{objects},\"value_bytes\":{bytes},\"p50_ms\":{:.1},\"best_ms\":{:.1}}}",
        percentile(&times, 0.5),
        percentile(&times, 0.0)
    );
}

async fn compact(endpoint: &str, seconds: u64) {
    let mut client = connect(endpoint).await;
    let objects = client
        .get(PREFIX, Some(GetOptions::new().with_prefix().with_count_only()))
        .await
        .expect("count")
        .count() as usize;
    assert!(objects > 0, "load objects first");
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let mut client = connect(endpoint).await;
        writers.push(tokio::spawn(async move {
            let mut timed = Vec::new();
            let mut n = w;
            while Instant::now() < deadline {
                let i = n.wrapping_mul(104_729) % objects;
                let started = Instant::now();
                client.put(object_key(i), object_value(i, 2 + n as u64), None).await.expect("put");
                timed.push((started, started.elapsed()));
                n += WRITERS;
            }
            timed
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds / 3)).await;
    let revision = client.get("x", None).await.expect("get").header().expect("header").revision();
    let compaction_started = Instant::now();
    client.compact(revision, Some(CompactionOptions::new().with_physical())).await.expect("compact");
    let compaction = (compaction_started, compaction_started.elapsed());
    let (mut during, mut outside) = (Vec::new(), Vec::new());
    for w in writers {
        for (at, took) in w.await.expect("writer") {
            let overlaps = at < compaction.0 + compaction.1 && at + took > compaction.0;
            if overlaps { &mut during } else { &mut outside }.push(took);
        }
    }
    let puts = during.len() + outside.len();
    during.sort();
    outside.sort();
    println!(
        "{{\"compacted_revision\":{revision},\"compaction_ms\":{:.1},\"puts\":{puts},\"puts_per_sec\":{:.0},\"p99_ms_during\":{:.2},\"p99_ms_outside\":{:.2}}}",
        compaction.1.as_secs_f64() * 1e3,
        puts as f64 / seconds as f64,
        percentile(&during, 0.99),
        percentile(&outside, 0.99)
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |s: &String| s.parse::<usize>().unwrap_or_else(|_| panic!("not a number: {s}"));
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["load", endpoint, _, _] => load(endpoint, number(&args[2]), number(&args[3])).await,
        ["list", endpoint, _] => list(endpoint, number(&args[2])).await,
        ["compact", endpoint, _] => compact(endpoint, number(&args[2]) as u64).await,
        _ => {
            eprintln!(
                "usage: k8s_bench load ENDPOINT OBJECTS UPDATES | list ENDPOINT ROUNDS | compact ENDPOINT SECONDS"
            );
            std::process::exit(2);
        }
    }
}
