//! Structured logs to stderr: JSON lines like etcd's zap logger, or plain
//! text with `--logger capnslog`.

use tracing_subscriber::EnvFilter;

pub fn init(level: &str, logger: &str) {
    let level = match level {
        "panic" | "fatal" => "error",
        other => other,
    };
    // Dependencies log at warn unless asked for debug, to keep the stream readable.
    let filter = EnvFilter::new(format!("warn,cairn={level}"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if logger == "capnslog" {
        builder.init();
    } else {
        builder.json().flatten_event(true).with_current_span(false).init();
    }
}
