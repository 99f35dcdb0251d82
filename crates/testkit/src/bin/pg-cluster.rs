//! `pg-cluster start DIR` creates and starts a throw-away PostgreSQL cluster in DIR and
//! prints its base URL; `pg-cluster stop DIR` stops it and deletes DIR. Used by
//! `scripts/test` so that the suite and its tests share one way of running PostgreSQL.

use coditect_testkit::PgCluster;
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [cmd, dir] if cmd == "start" => PgCluster::create(&PathBuf::from(dir), false).map(|c| {
            println!("{}", c.base_url());
            c.keep();
        }),
        [cmd, dir] if cmd == "stop" => {
            PgCluster::attach(&PathBuf::from(dir)).and_then(PgCluster::destroy)
        }
        _ => {
            eprintln!("usage: pg-cluster start|stop DIR");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pg-cluster: {e}");
            ExitCode::FAILURE
        }
    }
}
