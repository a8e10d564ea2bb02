use std::process::ExitCode;

use cairn::config::{flags, Config, Invocation};

/// The name of the program a path runs: `etcdctl` for `/usr/local/bin/etcdctl`.
fn program_name(path: &str) -> &str {
    std::path::Path::new(path).file_name().and_then(|n| n.to_str()).unwrap_or_default()
}

fn main() -> ExitCode {
    let mut argv = std::env::args();
    let mut program = argv.next().unwrap_or_default();
    let mut args: Vec<String> = argv.collect();
    // etcd's image has no entrypoint, so etcd's guides name the program
    // first (`docker run IMAGE /usr/local/bin/etcd --name …`, `etcdctl …`);
    // behind cairn's entrypoint that program arrives as the first argument.
    if args.first().is_some_and(|a| matches!(program_name(a), "etcd" | "etcdctl" | "cairn")) {
        program = args.remove(0);
    }
    // `docker exec … etcdctl …` through a link to this binary, `cairn ctl …`,
    // and `cairn healthcheck` are clients, not a server.
    if program_name(&program) == "etcdctl" {
        return ExitCode::from(cairn::ctl::main(args));
    }
    match args.first().map(String::as_str) {
        Some("ctl") => return ExitCode::from(cairn::ctl::main(args[1..].to_vec())),
        // etcdutl's `snapshot restore|status`, as `cairn snapshot …`.
        Some("snapshot") => return ExitCode::from(cairn::ctl::main(args)),
        Some("healthcheck") => return ExitCode::from(cairn::ctl::healthcheck(args[1..].to_vec())),
        _ => {}
    }
    let config = match flags::parse(&args).and_then(|inv| match inv {
        Invocation::Version => Ok(None),
        Invocation::Serve(values) => Config::load(values).map(Some),
    }) {
        Ok(Some(config)) => config,
        Ok(None) => {
            println!("cairn Version: {}\netcd API Version: {}", env!("CARGO_PKG_VERSION"), cairn::api::grpc::ETCD_VERSION);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("cairn: {e}");
            return ExitCode::FAILURE;
        }
    };
    cairn::logging::init(&config.log_level, &config.logger);
    for notice in &config.notices {
        tracing::info!("{notice}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(cairn::server::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cairn: {e:#}");
            ExitCode::FAILURE
        }
    }
}
