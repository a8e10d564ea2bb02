//! cairn: an etcd-compatible, strongly consistent key-value store.

pub mod api;
pub mod auth;
pub mod bootstrap;
pub mod config;
pub mod ctl;
pub mod heap;
pub mod raft;
pub mod server;
pub mod store;
pub mod tls;
pub mod watch;
pub mod lease;
pub mod logging;
pub mod metrics;
