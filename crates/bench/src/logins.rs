//! `coditect-bench logins`: a hub process's memory under a flood of logins.
//!
//! `--concurrency` clients (64) log in for `--seconds` (60): three failures (a wrong
//! password, an unknown account, a wrong password) for every success, throttling set out
//! of the way so that every attempt costs an Argon2 hash at the production parameters
//! (m = 19 MiB, t = 2). Reported: the hub's RSS idle before, its peak under the flood and
//! 10 s after; logins per second and latency; beside the same hashes done bare (Argon2id
//! verify on as many threads as the hub hashes at once) so the overhead reads as a ratio.

use crate::hubproc::{HubProc, RssSampler};
use crate::report::{Table, machine, millis, stats};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    /// Clients logging in at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// How long the flood lasts.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
}

const EMAIL: &str = "bench@example.com";
const PASSWORD: &str = "benchmark passphrase";

pub async fn run(args: Args) -> anyhow::Result<()> {
    println!("## logins: {}\n", machine());
    // Throttling out of the way: at most 1000 failures per second per account.
    let hub = HubProc::spawn(&[
        "--auth-login-max-failures",
        "1000",
        "--auth-login-window",
        "1s",
    ])?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    hub.setup(&client).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = hub.rss_kib() as f64 / 1024.0;
    let sampler = RssSampler::start(hub.pid());
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..args.concurrency)
        .map(|w| {
            let (client, base, done) = (client.clone(), hub.base.clone(), done.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut i = w;
                while Instant::now() < deadline {
                    let (email, password, want) = match i % 4 {
                        0 => (EMAIL.to_string(), PASSWORD, 200),
                        1 => (format!("nobody-{i}@example.com"), PASSWORD, 401),
                        _ => (EMAIL.to_string(), "not the password", 401),
                    };
                    i += 1;
                    let t = Instant::now();
                    let res = client
                        .post(format!("{base}/api/v1/auth/login"))
                        .json(&serde_json::json!({"email": email, "password": password}))
                        .send()
                        .await;
                    let status = res.map(|r| r.status().as_u16()).unwrap_or(0);
                    // 503 = every hashing slot busy for 5 s: the bound working.
                    if status == want || status == 503 {
                        latencies.push(t.elapsed());
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for w in workers {
        latencies.extend(w.await?);
    }
    let elapsed = started.elapsed();
    let peak = sampler.peak_mib();
    drop(sampler);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = hub.rss_kib() as f64 / 1024.0;
    let logins = done.load(Ordering::Relaxed);

    // The same hashes, bare: Argon2id verify at the production parameters on as many
    // threads as the hub runs hashes at once (one per core, at least two).
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .max(2);
    let hash = {
        use argon2::PasswordHasher;
        argon2::Argon2::default()
            .hash_password(PASSWORD.as_bytes())
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .to_string()
    };
    let bare_for = Duration::from_secs(args.seconds.min(10));
    let bare_started = Instant::now();
    let bare: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let hash = hash.clone();
                s.spawn(move || {
                    use argon2::PasswordVerifier;
                    let parsed = argon2::PasswordHash::new(&hash).ok();
                    let mut n = 0;
                    while bare_started.elapsed() < bare_for {
                        if let Some(h) = &parsed {
                            let _ =
                                argon2::Argon2::default().verify_password(b"not the password", h);
                        }
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    });
    let bare_rate = bare as f64 / bare_started.elapsed().as_secs_f64();
    let rate = logins as f64 / elapsed.as_secs_f64();
    let (p50, p99, _) = stats(latencies);

    let mut t = Table::new(&[
        "what",
        "logins/s",
        "p50 ms",
        "p99 ms",
        "RSS idle MiB",
        "RSS peak MiB",
        "RSS 10 s after MiB",
    ]);
    t.row(vec![
        format!(
            "hub, {} clients, 3 failed : 1 good, {} s",
            args.concurrency, args.seconds
        ),
        format!("{rate:.0}"),
        millis(p50),
        millis(p99),
        format!("{idle:.0}"),
        format!("{peak:.0}"),
        format!("{after:.0}"),
    ]);
    t.row(vec![
        format!("bare argon2id verify, {threads} threads"),
        format!("{bare_rate:.0}"),
        "".into(),
        "".into(),
        "".into(),
        "".into(),
        "".into(),
    ]);
    t.print();
    println!(
        "\nhub / bare throughput: {:.2}x; RSS bound: peak {peak:.0} MiB\n",
        rate / bare_rate
    );
    Ok(())
}
