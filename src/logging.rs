//! Structured logs to stderr: JSON lines with the keys of etcd's zap logger
//! (`level`, `ts`, `caller`, `msg`, then the event's fields), or plain text
//! with `--logger capnslog`.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

pub fn init(level: &str, logger: &str) {
    let level = match level {
        "panic" | "fatal" => "error",
        other => other,
    };
    // Dependencies log at warn, to keep the stream readable. openraft logs
    // several lines for each failed retry of a member that is down, ten times
    // a second; cairn logs the member's going and coming back instead.
    let quiet = "openraft::replication=off,openraft::engine::handler::replication_handler=error";
    let filter = EnvFilter::new(format!("warn,{quiet},cairn={level}"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if logger == "capnslog" {
        builder.init();
    } else {
        builder.event_format(ZapJson).init();
    }
}

struct ZapJson;

/// Gathers an event's fields; `message` becomes zap's `msg`.
struct Fields(Map<String, Value>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(key(field), Value::String(format!("{value:?}")));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(key(field), Value::String(value.to_string()));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(key(field), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(key(field), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(key(field), value.into());
    }
}

fn key(field: &Field) -> String {
    match field.name() {
        "message" => "msg".to_string(),
        name => name.to_string(),
    }
}

impl<S, N> FormatEvent<S, N> for ZapJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        let mut ts = String::new();
        SystemTime.format_time(&mut Writer::new(&mut ts))?;
        let caller = match (meta.file(), meta.line()) {
            (Some(file), Some(line)) => format!("{}:{line}", file.trim_start_matches("src/")),
            _ => meta.target().to_string(),
        };
        let mut line = Map::new();
        line.insert("level".into(), meta.level().as_str().to_lowercase().into());
        line.insert("ts".into(), ts.into());
        line.insert("caller".into(), caller.into());
        let mut fields = Fields(Map::new());
        event.record(&mut fields);
        line.insert("msg".into(), fields.0.remove("msg").unwrap_or(Value::String(String::new())));
        line.extend(fields.0);
        writeln!(writer, "{}", Value::Object(line))
    }
}
