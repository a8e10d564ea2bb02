//! A load generator speaking the etcd v3 API, so cairn and etcd are measured
//! with the same client: `kv_bench ENDPOINT CLIENTS TOTAL VALUE_BYTES [put|get]`.
//! `put` writes distinct keys; `get` reads one key, linearizably.
//! Prints one JSON line: throughput and latency percentiles. An https
//! endpoint takes etcdctl's `ETCDCTL_CACERT`, `ETCDCTL_CERT`, `ETCDCTL_KEY`;
//! `ETCDCTL_USER=name:password` signs every client in. Clients connect (and
//! sign in) before the clock starts: the figures are the requests' own.

use std::time::{Duration, Instant};

async fn connect(endpoint: &str) -> etcd_client::Client {
    cairn::ctl::client_from_env(&[endpoint.to_string()], Duration::from_secs(10)).await.expect("connect")
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (endpoint, clients, total, value_bytes, op) = match args.as_slice() {
        [e, c, t, v] => (e, c, t, v, "put"),
        [e, c, t, v, op] if op == "put" || op == "get" => (e, c, t, v, op.as_str()),
        _ => {
            eprintln!("usage: kv_bench ENDPOINT CLIENTS TOTAL VALUE_BYTES [put|get]");
            std::process::exit(2);
        }
    };
    let reads = op == "get";
    let clients: usize = clients.parse().expect("CLIENTS");
    let total: usize = total.parse().expect("TOTAL");
    let value = vec![b'x'; value_bytes.parse().expect("VALUE_BYTES")];
    let per_client = total / clients;
    if reads {
        let mut client = connect(endpoint).await;
        client.put("bench/read", value.clone(), None).await.expect("put");
    }
    let mut connected = Vec::with_capacity(clients);
    for _ in 0..clients {
        connected.push(connect(endpoint).await);
    }
    let mut tasks = Vec::new();
    let start = Instant::now();
    for (c, mut client) in connected.into_iter().enumerate() {
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_client);
            for i in 0..per_client {
                let t = Instant::now();
                if reads {
                    client.get("bench/read", None).await.expect("get");
                } else {
                    client.put(format!("bench/{c:03}/{i:08}"), value.clone(), None).await.expect("put");
                }
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut latencies: Vec<Duration> = Vec::with_capacity(total);
    for t in tasks {
        latencies.extend(t.await.expect("client task"));
    }
    let elapsed = start.elapsed();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)].as_secs_f64() * 1e3;
    println!(
        "{{\"op\":\"{op}\",\"clients\":{clients},\"requests\":{},\"seconds\":{:.3},\"per_sec\":{:.0},\"p50_ms\":{:.3},\"p99_ms\":{:.3}}}",
        latencies.len(),
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99)
    );
}
