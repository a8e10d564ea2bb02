//! Put-to-event latency through the etcd v3 Watch API, so cairn and etcd are
//! measured with the same client: `watch_bench ENDPOINT WATCHERS PUTS VALUE_BYTES`.
//! Opens WATCHERS watch streams on one key, then puts it PUTS times, one at
//! a time, and measures for every watcher the time from the start of each put
//! to the arrival of its event. Prints one JSON line: latency percentiles.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use etcd_client::WatchOptions;

const KEY: &str = "bench/watched";

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [endpoint, watchers, puts, value_bytes] = args.as_slice() else {
        eprintln!("usage: watch_bench ENDPOINT WATCHERS PUTS VALUE_BYTES");
        std::process::exit(2);
    };
    let watchers: usize = watchers.parse().expect("WATCHERS");
    let puts: usize = puts.parse().expect("PUTS");
    let value = vec![b'x'; value_bytes.parse().expect("VALUE_BYTES")];
    let mut client = etcd_client::Client::connect([endpoint.clone()], None).await.expect("connect");

    let (arrivals_tx, mut arrivals) = tokio::sync::mpsc::unbounded_channel::<(i64, Instant)>();
    for _ in 0..watchers {
        let mut stream = client.watch(KEY, Some(WatchOptions::new())).await.expect("watch");
        let created = stream.message().await.expect("created").expect("created");
        assert!(created.created());
        let arrivals_tx = arrivals_tx.clone();
        tokio::spawn(async move {
            while let Ok(Some(r)) = stream.message().await {
                let now = Instant::now();
                for e in r.events() {
                    let _ = arrivals_tx.send((e.kv().expect("kv").mod_revision(), now));
                }
            }
        });
    }
    drop(arrivals_tx);

    let mut started: HashMap<i64, Instant> = HashMap::with_capacity(puts);
    let mut latencies: Vec<Duration> = Vec::with_capacity(puts * watchers);
    let mut pending: Vec<(i64, Instant)> = Vec::new();
    for _ in 0..puts {
        let t = Instant::now();
        let rev = client.put(KEY, value.clone(), None).await.expect("put").header().expect("header").revision();
        started.insert(rev, t);
        // Every watcher's event for this put before the next one.
        let mut seen = 0;
        while seen < watchers {
            let (rev, at) = arrivals.recv().await.expect("watchers alive");
            pending.push((rev, at));
            seen += 1;
        }
        for (rev, at) in pending.drain(..) {
            latencies.push(at - started[&rev]);
        }
    }
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)].as_secs_f64() * 1e3;
    println!(
        "{{\"watchers\":{watchers},\"puts\":{puts},\"events\":{},\"p50_ms\":{:.3},\"p99_ms\":{:.3}}}",
        latencies.len(),
        pct(0.50),
        pct(0.99)
    );
}
