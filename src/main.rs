use std::process::ExitCode;

use cairn::config::{flags, Config, Invocation};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
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
