//! Reading `/proc`: the process runtime's labels are environment variables of a sandbox's
//! outer process, and its stop signals every process of the sandbox's PID namespace.

use std::collections::HashMap;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub ppid: i32,
    /// Clock ticks after boot: with the pid, identifies a process across pid reuse.
    pub start_time: u64,
    /// `Z` for a zombie.
    pub state: char,
}

/// Every process id in `/proc`.
pub fn pids() -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

pub fn stat(pid: i32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces or parentheses itself.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    Some(Stat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// A live (not zombie) process.
pub fn alive(pid: i32) -> bool {
    stat(pid).is_some_and(|s| s.state != 'Z' && s.state != 'X')
}

pub fn environ(pid: i32) -> Option<HashMap<String, String>> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter_map(|kv| {
                let kv = std::str::from_utf8(kv).ok()?;
                let (k, v) = kv.split_once('=')?;
                Some((k.to_string(), v.to_string()))
            })
            .collect(),
    )
}

/// The PID namespace a process is in (`pid:[4026531836]`).
pub fn pid_namespace(pid: i32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok()
}

/// The live processes whose parent is `pid`.
pub fn children(pid: i32) -> Vec<i32> {
    pids()
        .into_iter()
        .filter(|p| stat(*p).is_some_and(|s| s.ppid == pid && s.state != 'Z'))
        .collect()
}

/// Every live process in the namespace `ns`.
pub fn in_namespace(ns: &PathBuf) -> Vec<i32> {
    pids()
        .into_iter()
        .filter(|p| pid_namespace(*p).as_ref() == Some(ns) && alive(*p))
        .collect()
}
