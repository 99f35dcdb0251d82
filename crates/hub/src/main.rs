use coditect_hub::{Config, Hub, Invocation, shutdown_signal, telemetry};
use std::process::ExitCode;

fn main() -> ExitCode {
    let env = |key: &str| std::env::var_os(key).map(|v| v.to_string_lossy().into_owned());
    let invocation = match Config::from_args(std::env::args_os(), &env) {
        Ok(invocation) => invocation,
        Err(e) => e.exit(),
    };
    match invocation {
        Invocation::Serve(config) => serve(*config),
    }
}

fn serve(config: Config) -> ExitCode {
    telemetry::logging::init(config.log_format, &config.log_level);
    telemetry::logging::install_panic_hook();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("coditect-hub: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let hub = Hub::start(config).await?;
        hub.serve(shutdown_signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("coditect-hub: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
