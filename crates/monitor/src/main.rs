//! `codi-monitor`: thin entry point; everything lives in the library ([`coditect_monitor::cli`]).

fn main() -> std::process::ExitCode {
    coditect_monitor::cli::main()
}
