use coditect_hub::admin::{self, AdminError};
use coditect_hub::{Config, Hub, Invocation, shutdown_signal, telemetry};
use std::process::ExitCode;

fn main() -> ExitCode {
    let env = |key: &str| std::env::var_os(key).map(|v| v.to_string_lossy().into_owned());
    let invocation = match Config::from_args(std::env::args_os(), &env) {
        Ok(invocation) => invocation,
        Err(e) => e.exit(),
    };
    if let Invocation::OpenApi = invocation {
        use std::io::Write;
        let doc = coditect_hub::http::openapi::document_json();
        return match std::io::stdout().write_all(doc) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("coditect-hub openapi: {e}");
                ExitCode::FAILURE
            }
        };
    }
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
    match invocation {
        Invocation::Serve(config) => {
            // Built outside the runtime: the exporter's blocking HTTP client must be.
            let traces = match config.otel.as_ref().map(telemetry::traces::Traces::start) {
                None => None,
                Some(Ok(traces)) => Some(traces),
                Some(Err(e)) => {
                    eprintln!("coditect-hub: {e}");
                    return ExitCode::from(2);
                }
            };
            telemetry::logging::init(config.log_format, &config.log_level, traces.as_ref());
            telemetry::logging::install_panic_hook();
            let result = runtime.block_on(async {
                let hub = Hub::start(*config).await?;
                hub.serve(shutdown_signal()).await
            });
            if let Some(traces) = &traces {
                traces.shutdown();
            }
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("coditect-hub: {e}");
                    ExitCode::from(e.exit_code())
                }
            }
        }
        Invocation::OpenApi => ExitCode::SUCCESS,
        Invocation::Admin(config, command) => {
            // Only warnings and errors: the command prints its own result.
            telemetry::logging::init(config.log_format, "warn", None);
            let result =
                runtime.block_on(admin::run(*config, command, || admin::read_password(&env)));
            match result {
                Ok(message) => {
                    println!("{message}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("coditect-hub admin: {e}");
                    ExitCode::from(AdminError::exit_code(&e))
                }
            }
        }
    }
}
