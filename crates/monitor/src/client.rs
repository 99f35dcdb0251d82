//! A client of the daemon's IPC protocol (what `codi2`, the benchmarks and the tests use):
//! one connection, requests answered in order, pipelining allowed.

use coditect_proto::ipc::{EncodeError, Frame, Message, Payload, encode_frame, next_frame};
use std::net::SocketAddr;
use std::path::Path;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach codi-monitor at {at}: {source}")]
    Unreachable {
        at: String,
        #[source]
        source: std::io::Error,
    },
    #[error("connection to codi-monitor failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("codi-monitor closed the connection")]
    Closed,
    #[error("codi-monitor sent an undecodable reply: {0}")]
    BadReply(String),
    #[error("the request cannot be sent: {0}")]
    Encode(#[from] EncodeError),
    #[error("the token was refused: {0}")]
    Refused(String),
    #[error(
        "refusing codi-monitor at {at}: it is served by another user (uid {uid}), not by you or root; nothing was sent"
    )]
    Impostor { at: String, uid: u32 },
}

/// One connection to the daemon.
pub struct IpcClient<S> {
    stream: S,
    buf: Vec<u8>,
    out: Vec<u8>,
}

impl IpcClient<UnixStream> {
    /// Connects to the daemon at `path`, which must be served by this user or by root: a
    /// socket someone else listens on (they swapped it in) is left before anything is sent
    /// — the kernel's record of who listens (`SO_PEERCRED`) decides, not the file's owner.
    pub async fn connect_unix(path: &Path) -> Result<Self, ClientError> {
        let at = || path.display().to_string();
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| ClientError::Unreachable { at: at(), source })?;
        let me = nix::unistd::geteuid().as_raw();
        let peer = stream
            .peer_cred()
            .map_err(|source| ClientError::Unreachable { at: at(), source })?;
        if peer.uid() != me && peer.uid() != 0 {
            return Err(ClientError::Impostor {
                at: at(),
                uid: peer.uid(),
            });
        }
        Ok(IpcClient::new(stream))
    }
}

impl IpcClient<TcpStream> {
    /// Connects over TCP and presents `token` (the daemon closes the connection otherwise).
    pub async fn connect_tcp(addr: SocketAddr, token: &str) -> Result<Self, ClientError> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| ClientError::Unreachable {
                at: addr.to_string(),
                source,
            })?;
        let _ = stream.set_nodelay(true);
        // On loopback any local user can listen on the port while the daemon is down: the
        // token goes only to a listener of ours or root's (when the kernel says whose).
        if addr.ip().is_loopback()
            && let Some(uid) = loopback_listener_uid(addr.port())
            && uid != nix::unistd::geteuid().as_raw()
            && uid != 0
        {
            return Err(ClientError::Impostor {
                at: addr.to_string(),
                uid,
            });
        }
        let mut c = IpcClient::new(stream);
        match c
            .call(Payload::Hello {
                token: token.to_string(),
            })
            .await?
        {
            Payload::Error { message, .. } => Err(ClientError::Refused(message)),
            _ => Ok(c),
        }
    }
}

/// Whose listener on a loopback or wildcard address has `port`, per `/proc/net/tcp{,6}`;
/// `None` when the kernel does not show one (another network namespace, no `/proc`).
fn loopback_listener_uid(port: u16) -> Option<u32> {
    let port = format!(":{port:04X}");
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(uid)) = (f.get(1), f.get(3), f.get(7)) else {
                continue;
            };
            let Some(ip) = local.strip_suffix(port.as_str()) else {
                continue;
            };
            // Listening, on 127.0.0.0/8, ::1, a v4-mapped loopback, or a wildcard.
            let reachable = match ip.len() {
                8 => ip.ends_with("7F") || ip == "00000000",
                32 => {
                    ip == "00000000000000000000000001000000"
                        || ip == "00000000000000000000000000000000"
                        || (ip.starts_with("0000000000000000FFFF0000") && ip.ends_with("7F"))
                }
                _ => false,
            };
            if *state == "0A" && reachable {
                return uid.parse().ok();
            }
        }
    }
    None
}

impl<S: AsyncRead + AsyncWrite + Unpin> IpcClient<S> {
    pub fn new(stream: S) -> Self {
        IpcClient {
            stream,
            buf: Vec::with_capacity(8 * 1024),
            out: Vec::with_capacity(8 * 1024),
        }
    }

    /// Sends one request and waits for its reply.
    pub async fn call(&mut self, payload: Payload) -> Result<Payload, ClientError> {
        let m = Message::request(payload);
        let id = m.id;
        self.send(&m).await?;
        loop {
            let reply = self.reply().await?;
            if reply.id == id {
                return Ok(reply.payload);
            }
        }
    }

    /// Sends without waiting (pipelining): replies come back in order through [`reply`].
    ///
    /// [`reply`]: IpcClient::reply
    pub async fn send(&mut self, m: &Message) -> Result<(), ClientError> {
        self.out.clear();
        encode_frame(m, &mut self.out)?;
        self.stream.write_all(&self.out).await?;
        Ok(())
    }

    /// The next reply.
    pub async fn reply(&mut self) -> Result<Message, ClientError> {
        loop {
            match next_frame(&self.buf) {
                Ok(Some((frame, used))) => {
                    self.buf.drain(..used);
                    return match frame {
                        Frame::Message(m) => Ok(m),
                        Frame::Undecodable { reason, .. } => Err(ClientError::BadReply(reason)),
                    };
                }
                Ok(None) => {}
                Err(e) => return Err(ClientError::BadReply(e.to_string())),
            }
            self.buf.reserve(8 * 1024);
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(ClientError::Closed);
            }
        }
    }
}
