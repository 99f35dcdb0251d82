//! `codi2`: thin entry point; everything lives in the library.

fn main() -> std::process::ExitCode {
    coditect_cli::main()
}
