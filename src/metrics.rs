//! Prometheus metrics with etcd's names, types and labels, so Grafana's etcd
//! dashboard and etcd's alert rules read cairn as they read etcd. Recorded
//! where the work happens (the log's fsync thread, the state database's
//! commits, the gRPC routes); gauges of state are read when scraped.

use std::sync::LazyLock;

use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
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
        let grpc_labels = ["grpc_type", "grpc_service", "grpc_method"];
        let version = registered(
            &r,
            IntGaugeVec::new(server("version", "Which version is running. 1 for 'server_version' label with current version."), &["server_version"]),
        );
        version.with_label_values(&[crate::api::grpc::ETCD_VERSION]).set(1);
        r.register(Box::new(prometheus::process_collector::ProcessCollector::for_self())).expect("process metrics");
        Metrics {
            has_leader: registered(&r, IntGauge::with_opts(server("has_leader", "Whether or not a leader exists. 1 is existence, 0 is not."))),
            is_leader: registered(&r, IntGauge::with_opts(server("is_leader", "Whether or not this member is a leader. 1 if is, 0 otherwise."))),
            leader_changes_seen: registered(&r, IntCounter::with_opts(server("leader_changes_seen_total", "The number of leader changes seen."))),
            proposals_committed: registered(
                &r,
                IntGauge::with_opts(server("proposals_committed_total", "The total number of consensus proposals committed.")),
            ),
            proposals_applied: registered(
                &r,
                IntGauge::with_opts(server("proposals_applied_total", "The total number of consensus proposals applied.")),
            ),
            proposals_pending: registered(
                &r,
                IntGauge::with_opts(server("proposals_pending", "The current number of pending proposals to commit.")),
            ),
            proposals_failed: registered(
                &r,
                IntCounter::with_opts(server("proposals_failed_total", "The total number of failed proposals seen.")),
            ),
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
            db_total_size_bytes: registered(
                &r,
                IntGauge::with_opts(mvcc("db_total_size_in_bytes", "Total size of the underlying database physically allocated in bytes.")),
            ),
            puts: registered(&r, IntCounter::with_opts(mvcc("put_total", "Total number of puts seen by this member."))),
            deletes: registered(&r, IntCounter::with_opts(mvcc("delete_total", "Total number of deletes seen by this member."))),
            ranges: registered(&r, IntCounter::with_opts(mvcc("range_total", "Total number of ranges seen by this member."))),
            txns: registered(&r, IntCounter::with_opts(mvcc("txn_total", "Total number of txns seen by this member."))),
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
            registry: r,
        }
    }

    /// The Prometheus text format of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding into memory");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
