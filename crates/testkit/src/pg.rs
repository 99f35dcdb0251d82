//! PostgreSQL clusters for tests: `initdb` into a temporary directory, `pg_ctl` to start
//! and stop, on a free loopback port. As root, the server runs as the `postgres` user
//! (PostgreSQL refuses to run as root).

use std::io;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// Environment variable holding the suite cluster's base URL (no database name).
pub const SUITE_ENV: &str = "CODITECT_TEST_PG";

/// The suite cluster's base URL. Panics with instructions when the suite was not started
/// through `scripts/test` (a PostgreSQL test must never silently pass without one).
pub fn suite_pg_url() -> String {
    match std::env::var(SUITE_ENV) {
        Ok(url) if !url.is_empty() => url.trim_end_matches('/').to_string(),
        _ => panic!(
            "{SUITE_ENV} is not set: run the suite with ./scripts/test (it provisions PostgreSQL), \
             or export {SUITE_ENV}=postgres://USER@HOST:PORT pointing at a server where USER may create databases"
        ),
    }
}

/// Creates an empty database on the suite cluster and returns its URL.
pub async fn fresh_database() -> String {
    let base = suite_pg_url();
    create_database(&base).await
}

/// Creates an empty database on the server at `base` (a URL without database name).
pub async fn create_database(base: &str) -> String {
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let admin = format!("{base}/postgres");
    let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test cluster at {base}: {e}"));
    let conn = tokio::spawn(conn);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap_or_else(|e| panic!("cannot create database {name}: {e}"));
    drop(client);
    let _ = conn.await;
    format!("{base}/{name}")
}

/// A private PostgreSQL cluster in a temporary directory. Stopped and deleted on drop
/// unless [`PgCluster::keep`] was called.
pub struct PgCluster {
    dir: PathBuf,
    port: u16,
    bin: PathBuf,
    keep: bool,
    durable: bool,
}

impl PgCluster {
    /// `initdb` + start in a new temporary directory on a free port, tuned for tests:
    /// no fsync (commits survive a server crash, not an OS crash).
    pub fn start() -> io::Result<PgCluster> {
        Self::create(&temp_cluster_dir(), false)
    }

    /// Like [`PgCluster::start`] but with PostgreSQL's default durability (fsync on), for
    /// benchmarks that compare durable writes.
    pub fn start_durable() -> io::Result<PgCluster> {
        Self::create(&temp_cluster_dir(), true)
    }

    /// `initdb` + start in `dir` (which must not exist yet).
    pub fn create(dir: &Path, durable: bool) -> io::Result<PgCluster> {
        let bin = bin_dir()?;
        std::fs::create_dir_all(dir)?;
        if running_as_root() {
            run(Command::new("chown").args(["postgres:postgres"]).arg(dir))?;
        }
        run(as_server_user(&bin.join("initdb"))
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(dir.join("data")))?;
        let mut cluster = PgCluster {
            dir: dir.to_path_buf(),
            port: 0,
            bin,
            keep: false,
            durable,
        };
        // A free port can be taken between probing and binding: try a few.
        let mut last = None;
        for _ in 0..5 {
            cluster.port = free_port()?;
            match cluster.start_server() {
                Ok(()) => return Ok(cluster),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("cannot start postgres")))
    }

    /// Attaches to a cluster created earlier in `dir` (to stop it from another process).
    pub fn attach(dir: &Path) -> io::Result<PgCluster> {
        let port = std::fs::read_to_string(dir.join("port"))?
            .trim()
            .parse()
            .map_err(|_| io::Error::other("malformed port file"))?;
        Ok(PgCluster {
            dir: dir.to_path_buf(),
            port,
            bin: bin_dir()?,
            keep: false,
            durable: false,
        })
    }

    /// Do not stop and delete the cluster on drop.
    pub fn keep(mut self) -> Self {
        self.keep = true;
        self
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Base URL (no database name).
    pub fn base_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    /// URL of the `postgres` database.
    pub fn url(&self) -> String {
        format!("{}/postgres", self.base_url())
    }

    /// Starts the server again after [`PgCluster::stop`], on the same port.
    pub fn start_server(&self) -> io::Result<()> {
        let data = self.dir.join("data");
        let speed = if self.durable {
            ""
        } else {
            " -c fsync=off -c full_page_writes=off"
        };
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=400{speed}",
            self.port,
            data.display()
        );
        run(as_server_user(&self.bin.join("pg_ctl"))
            .args(["-w", "-t", "60", "-D"])
            .arg(&data)
            .arg("-l")
            .arg(data.join("server.log"))
            .args(["-o", &opts, "start"]))?;
        std::fs::write(self.dir.join("port"), self.port.to_string())
    }

    /// Stops the server at once (`immediate`: like a crash, connections are cut). Commits
    /// survive it: the cluster runs without fsync (it only dodges OS crashes) but with
    /// synchronous commits.
    pub fn stop(&self) -> io::Result<()> {
        run(as_server_user(&self.bin.join("pg_ctl"))
            .args(["-w", "-t", "60", "-m", "immediate", "-D"])
            .arg(self.dir.join("data"))
            .arg("stop"))
        .map(|_| ())
    }

    /// Stops and starts again on the same port.
    pub fn restart(&self) -> io::Result<()> {
        self.stop()?;
        self.start_server()
    }

    /// Stops the server (if running) and deletes the directory.
    pub fn destroy(mut self) -> io::Result<()> {
        self.keep = true;
        let _ = self.stop();
        std::fs::remove_dir_all(&self.dir)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if !self.keep {
            let _ = self.stop();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn temp_cluster_dir() -> PathBuf {
    std::env::temp_dir().join(format!("coditect-pg-{}", uuid::Uuid::new_v4().simple()))
}

/// Where `initdb` and `pg_ctl` live: `$CODITECT_TEST_PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin` (Debian's layout), else `$PATH`.
pub fn bin_dir() -> io::Result<PathBuf> {
    if let Ok(dir) = std::env::var("CODITECT_TEST_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    debian.sort();
    if let Some((_, bin)) = debian.pop() {
        return Ok(bin);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .find(|p| p.join("initdb").exists())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "PostgreSQL server binaries (initdb, pg_ctl) not found: install Debian's postgresql package or set CODITECT_TEST_PG_BIN",
            )
        })
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

fn as_server_user(program: &Path) -> Command {
    if running_as_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

fn run(cmd: &mut Command) -> io::Result<Output> {
    let out = cmd.output()?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(io::Error::other(format!(
            "{:?} failed ({}): {}{}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until a TCP connection to `127.0.0.1:port` succeeds.
pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}
