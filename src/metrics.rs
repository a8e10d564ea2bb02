//! Prometheus metrics with etcd's names, types and labels, so Grafana's etcd
//! dashboard and etcd's alert rules read cairn as they read etcd. Recorded
//! where the work happens (the log's fsync thread, the state database's
//! commits, the gRPC routes); gauges of state are read when scraped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};

use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub has_leader: IntGauge,
    pub is_leader: IntGauge,
    pub leader_changes_seen: IntCounter,
    pub proposals_committed: IntGauge,
    pub proposals_applied: IntGauge,
    pub proposals_pending: IntGauge,
    pub proposals_failed: IntCounter,
    pub wal_fsync_seconds: Histogram,
    pub backend_commit_seconds: Histogram,
    pub db_total_size_bytes: IntGauge,
    pub puts: IntCounter,
    pub deletes: IntCounter,
    pub ranges: IntCounter,
    pub txns: IntCounter,
    pub grpc_started: IntCounterVec,
    pub grpc_handled: IntCounterVec,
    /// Registered, and recorded, only with `--metrics extensive`, as in etcd.
    pub grpc_handling_seconds: HistogramVec,
    extensive: AtomicBool,
    pub slow_applies: IntCounter,
    pub heartbeat_send_failures: IntCounter,
    pub db_in_use_bytes: IntGauge,
    pub keys: IntGauge,
    pub watchers: IntGauge,
    peer_sent_bytes: IntCounterVec,
    peer_received_bytes: IntCounterVec,
    peer_round_trip_seconds: HistogramVec,
    /// Each peer's series, looked up once: formatting its hex id and
    /// hashing the label on every peer message would cost more than the
    /// count itself.
    peers: Mutex<HashMap<u64, Arc<PeerMeters>>>,
    pub client_grpc_sent_bytes: IntCounter,
    pub client_grpc_received_bytes: IntCounter,
    /// Where a member's bounded memory goes, by part (cairn's own).
    pub memory_bytes: IntGaugeVec,
    /// The process heap: in use, and free but kept by malloc (cairn's own).
    pub heap_bytes: IntGaugeVec,
}

fn registered<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: prometheus::Result<M>) -> M {
    let metric = metric.expect("metric names and labels are fixed");
    registry.register(Box::new(metric.clone())).expect("each metric is registered once");
    metric
}

fn opts(namespace: &str, subsystem: &str, name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace(namespace).subsystem(subsystem)
}

/// etcd's disk histograms: 1 ms to 8 s, doubling.
fn disk_seconds(subsystem: &str, name: &str, help: &str) -> HistogramOpts {
    let buckets = exponential_buckets(0.001, 2.0, 14).expect("fixed buckets");
    HistogramOpts::new(name, help).namespace("etcd").subsystem(subsystem).buckets(buckets)
}

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new();
        let server = |name: &str, help: &str| opts("etcd", "server", name, help);
        let mvcc = |name: &str, help: &str| opts("etcd", "mvcc", name, help);
        let grpc = |name: &str, help: &str| opts("grpc", "server", name, help);
        let network = |name: &str, help: &str| opts("etcd", "network", name, help);
        let grpc_labels = ["grpc_type", "grpc_service", "grpc_method"];
        let counter = |o: Opts| registered(&r, IntCounter::with_opts(o));
        let gauge = |o: Opts| registered(&r, IntGauge::with_opts(o));
        let version = registered(
            &r,
            IntGaugeVec::new(server("version", "Which version is running. 1 for 'server_version' label with current version."), &["server_version"]),
        );
        version.with_label_values(&[crate::api::grpc::ETCD_VERSION]).set(1);
        r.register(Box::new(prometheus::process_collector::ProcessCollector::for_self())).expect("process metrics");
        Metrics {
            has_leader: gauge(server("has_leader", "Whether or not a leader exists. 1 is existence, 0 is not.")),
            is_leader: gauge(server("is_leader", "Whether or not this member is a leader. 1 if is, 0 otherwise.")),
            leader_changes_seen: counter(server("leader_changes_seen_total", "The number of leader changes seen.")),
            proposals_committed: gauge(server("proposals_committed_total", "The total number of consensus proposals committed.")),
            proposals_applied: gauge(server("proposals_applied_total", "The total number of consensus proposals applied.")),
            proposals_pending: gauge(server("proposals_pending", "The current number of pending proposals to commit.")),
            proposals_failed: counter(server("proposals_failed_total", "The total number of failed proposals seen.")),
            wal_fsync_seconds: registered(
                &r,
                Histogram::with_opts(disk_seconds("disk", "wal_fsync_duration_seconds", "The latency distributions of fsync called by WAL.")),
            ),
            backend_commit_seconds: registered(
                &r,
                Histogram::with_opts(disk_seconds(
                    "disk",
                    "backend_commit_duration_seconds",
                    "The latency distributions of commit called by backend.",
                )),
            ),
            db_total_size_bytes: gauge(mvcc("db_total_size_in_bytes", "Total size of the underlying database physically allocated in bytes.")),
            puts: counter(mvcc("put_total", "Total number of puts seen by this member.")),
            deletes: counter(mvcc("delete_total", "Total number of deletes seen by this member.")),
            ranges: counter(mvcc("range_total", "Total number of ranges seen by this member.")),
            txns: counter(mvcc("txn_total", "Total number of txns seen by this member.")),
            grpc_started: registered(
                &r,
                IntCounterVec::new(grpc("started_total", "Total number of RPCs started on the server."), &grpc_labels),
            ),
            grpc_handled: registered(
                &r,
                IntCounterVec::new(
                    grpc("handled_total", "Total number of RPCs completed on the server, regardless of success or failure."),
                    &["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
                ),
            ),
            grpc_handling_seconds: HistogramVec::new(
                HistogramOpts::new("handling_seconds", "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.")
                    .namespace("grpc")
                    .subsystem("server"),
                &grpc_labels,
            )
            .expect("metric names and labels are fixed"),
            extensive: AtomicBool::new(false),
            slow_applies: counter(server("slow_apply_total", "The total number of slow apply requests (likely overloaded from slow disk).")),
            heartbeat_send_failures: counter(server("heartbeat_send_failures_total", "The total number of leader heartbeat send failures (likely overloaded from slow disk).")),
            db_in_use_bytes: gauge(mvcc("db_total_size_in_use_in_bytes", "Total size of the underlying database logically in use in bytes.")),
            keys: gauge(opts("etcd_debugging", "mvcc", "keys_total", "Total number of keys.")),
            watchers: gauge(mvcc("watcher_total", "Total number of watchers.")),
            peer_sent_bytes: registered(&r, IntCounterVec::new(network("peer_sent_bytes_total", "The total number of bytes sent to peers."), &["To"])),
            peer_received_bytes: registered(
                &r,
                IntCounterVec::new(network("peer_received_bytes_total", "The total number of bytes received from peers."), &["From"]),
            ),
            peer_round_trip_seconds: registered(
                &r,
                HistogramVec::new(
                    HistogramOpts::new("peer_round_trip_time_seconds", "Round-Trip-Time histogram between peers")
                        .namespace("etcd")
                        .subsystem("network")
                        .buckets(exponential_buckets(0.0001, 2.0, 16).expect("fixed buckets")),
                    &["To"],
                ),
            ),
            peers: Mutex::default(),
            client_grpc_sent_bytes: counter(network("client_grpc_sent_bytes_total", "The total number of bytes sent to grpc clients.")),
            client_grpc_received_bytes: counter(network("client_grpc_received_bytes_total", "The total number of bytes received from grpc clients.")),
            memory_bytes: registered(
                &r,
                IntGaugeVec::new(
                    opts("cairn", "", "memory_bytes", "Bytes held now by each part of the member's memory budget (--memory-budget-bytes)."),
                    &["part"],
                ),
            ),
            heap_bytes: registered(
                &r,
                IntGaugeVec::new(opts("cairn", "", "heap_bytes", "Bytes of the process heap, jemalloc's and glibc malloc's together: in use, and kept but free."), &["state"]),
            ),
            registry: r,
        }
    }

    /// `--metrics extensive`: adds the gRPC handling-time histograms.
    pub fn enable_extensive(&self) {
        if !self.extensive.swap(true, Ordering::AcqRel) {
            self.registry.register(Box::new(self.grpc_handling_seconds.clone())).expect("registered once");
        }
    }

    pub fn extensive(&self) -> bool {
        self.extensive.load(Ordering::Relaxed)
    }

    /// Member `id`'s peer-traffic series.
    pub fn peer(&'static self, id: u64) -> Arc<PeerMeters> {
        let mut peers = self.peers.lock().expect("peer metrics map poisoned");
        peers
            .entry(id)
            .or_insert_with(|| {
                Arc::new(PeerMeters {
                    metrics: self,
                    label: format!("{id:x}"),
                    sent_bytes: OnceLock::new(),
                    received_bytes: OnceLock::new(),
                    round_trip_seconds: OnceLock::new(),
                })
            })
            .clone()
    }

    /// The Prometheus text format of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding into memory");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

/// One peer's series of etcd's `etcd_network_peer_*` metrics, each made
/// when first used: as in etcd, a series shows once something was counted.
pub struct PeerMeters {
    metrics: &'static Metrics,
    label: String,
    sent_bytes: OnceLock<IntCounter>,
    received_bytes: OnceLock<IntCounter>,
    round_trip_seconds: OnceLock<Histogram>,
}

impl PeerMeters {
    pub fn sent_bytes(&self) -> &IntCounter {
        self.sent_bytes.get_or_init(|| self.metrics.peer_sent_bytes.with_label_values(&[&self.label]))
    }

    pub fn received_bytes(&self) -> &IntCounter {
        self.received_bytes.get_or_init(|| self.metrics.peer_received_bytes.with_label_values(&[&self.label]))
    }

    pub fn round_trip_seconds(&self) -> &Histogram {
        self.round_trip_seconds.get_or_init(|| self.metrics.peer_round_trip_seconds.with_label_values(&[&self.label]))
    }
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
