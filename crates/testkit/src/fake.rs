//! Stand-ins for what a test must not trust: a fake HTTP server that answers every request
//! with what the test scripts (a redirect, an endless body) and records what it was sent,
//! and a second Unix user for tests that run as root (created with `useradd`, removed
//! when dropped).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One request as the fake server read it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub head: String,
    pub body: Vec<u8>,
}

/// What the fake server answers.
pub enum Answer {
    /// These bytes (status line, headers, body), then the connection closes.
    Raw(String),
    /// This head, then body bytes for as long as the client reads them: raw (`chunked`
    /// false, after a huge `content-length`) or as 64 KiB chunks. See [`Answer::endless`].
    Endless { head: String, chunked: bool },
}

impl Answer {
    /// `HTTP/1.1 {status}` whose body never ends: declared as 10 GiB, or chunked.
    pub fn endless(status: &str, chunked: bool) -> Answer {
        let framing = match chunked {
            true => "transfer-encoding: chunked",
            false => "content-length: 10737418240",
        };
        Answer::Endless {
            head: format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n{framing}\r\n\r\n"
            ),
            chunked,
        }
    }
}

pub struct FakeHttp {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl FakeHttp {
    /// Serves on a random loopback port until the runtime ends.
    pub async fn start(answer: impl Fn(&Recorded) -> Answer + Send + Sync + 'static) -> FakeHttp {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (seen, answer) = (requests.clone(), Arc::new(answer));
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let (seen, answer) = (seen.clone(), answer.clone());
                tokio::spawn(async move {
                    let Some(req) = read_request(&mut s).await else {
                        return;
                    };
                    if let Ok(mut all) = seen.lock() {
                        all.push(req.clone());
                    }
                    match answer(&req) {
                        Answer::Raw(text) => {
                            let _ = s.write_all(text.as_bytes()).await;
                        }
                        Answer::Endless { head, chunked } => {
                            if s.write_all(head.as_bytes()).await.is_err() {
                                return;
                            }
                            let mut chunk = Vec::with_capacity(64 * 1024 + 16);
                            if chunked {
                                chunk.extend_from_slice(b"10000\r\n");
                            }
                            chunk.extend(std::iter::repeat_n(b'x', 64 * 1024));
                            if chunked {
                                chunk.extend_from_slice(b"\r\n");
                            }
                            while s.write_all(&chunk).await.is_ok() {}
                        }
                    }
                    let _ = s.shutdown().await;
                });
            }
        });
        FakeHttp { addr, requests }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What it was sent so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

async fn read_request(s: &mut tokio::net::TcpStream) -> Option<Recorded> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).await.ok().filter(|n| *n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 1 << 20 {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut first = head.split_whitespace();
    let (method, path) = (first.next()?.to_string(), first.next()?.to_string());
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0)
        .min(16 << 20);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = s.read(&mut chunk).await.ok().filter(|n| *n > 0)?;
        body.extend_from_slice(&chunk[..n]);
    }
    Some(Recorded {
        method,
        path,
        head,
        body,
    })
}

/// A throw-away Unix user (tests running as root): `None` when not root or when `useradd`
/// is missing, so the caller can say the test needs root and skip.
pub struct OtherUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl OtherUser {
    pub fn create() -> Option<OtherUser> {
        let me = std::process::Command::new("id").arg("-u").output().ok()?;
        if String::from_utf8_lossy(&me.stdout).trim() != "0" {
            return None;
        }
        let name = format!("codit{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        // Tests in other processes may hold /etc/passwd's lock a moment: try again.
        for _ in 0..50 {
            let made = std::process::Command::new("useradd")
                .args(["--no-create-home", "--shell", "/usr/sbin/nologin", &name])
                .output()
                .ok()?;
            if made.status.success() {
                let id = |flag: &str| -> Option<u32> {
                    let out = std::process::Command::new("id")
                        .args([flag, &name])
                        .output()
                        .ok()?;
                    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
                };
                return Some(OtherUser {
                    uid: id("-u")?,
                    gid: id("-g")?,
                    name,
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        None
    }

    /// `path` (not following a symlink) now belongs to this user.
    pub fn give(&self, path: &std::path::Path) {
        let _ = std::os::unix::fs::lchown(path, Some(self.uid), Some(self.gid));
    }

    /// A command that runs as this user.
    pub fn command(&self, program: &str) -> std::process::Command {
        use std::os::unix::process::CommandExt;
        let mut c = std::process::Command::new(program);
        c.uid(self.uid).gid(self.gid).env("HOME", "/nonexistent");
        c
    }
}

impl Drop for OtherUser {
    fn drop(&mut self) {
        for _ in 0..50 {
            match std::process::Command::new("userdel")
                .arg(&self.name)
                .status()
            {
                Ok(s) if s.success() => return,
                _ => std::thread::sleep(std::time::Duration::from_millis(100)),
            }
        }
    }
}
