//! Which trees may be watched at all: not the kernel's pseudo file systems (`/proc`,
//! `/sys`, `/dev`, cgroups…), whose "files" change on every read, never end (`/proc`'s
//! recursion through every process) or wake drivers, and not a tree that has one mounted
//! inside it (a recursive watch of `/` would walk `/proc` and `/sys`). Judged from
//! `/proc/self/mountinfo`, the mounts as this process sees them.

use std::path::{Path, PathBuf};

/// File system types that hold no user files.
const PSEUDO: &[&str] = &[
    "proc",
    "sysfs",
    "devtmpfs",
    "devpts",
    "cgroup",
    "cgroup2",
    "debugfs",
    "tracefs",
    "securityfs",
    "pstore",
    "bpf",
    "configfs",
    "efivarfs",
    "fusectl",
    "mqueue",
    "binfmt_misc",
    "selinuxfs",
    "hugetlbfs",
    "autofs",
    "nsfs",
    "rpc_pipefs",
];

/// One line of mountinfo: where, and what type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub point: PathBuf,
    pub fstype: String,
}

/// The mounts of this process (none when mountinfo cannot be read: nothing is refused
/// then, and the budget on files still bounds the cost).
pub fn mounts() -> Vec<Mount> {
    match std::fs::read_to_string("/proc/self/mountinfo") {
        Ok(text) => parse(&text),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read /proc/self/mountinfo: pseudo file systems are not recognised");
            Vec::new()
        }
    }
}

/// Parses mountinfo: field 5 is the mount point (with `\040`-style escapes), and the type
/// follows the ` - ` separator.
pub fn parse(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let point = left.split(' ').nth(4)?;
            let fstype = right.split(' ').next()?;
            Some(Mount {
                point: PathBuf::from(unescape(point)),
                fstype: fstype.to_string(),
            })
        })
        .collect()
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let digit = |c: u8| u32::from(c - b'0');
            let v = digit(b[i + 1]) * 64 + digit(b[i + 2]) * 8 + digit(b[i + 3]);
            match u8::try_from(v) {
                Ok(v) => out.push(v),
                Err(_) => out.extend_from_slice(&b[i..i + 4]),
            }
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Why `root` (a canonical path) must not be watched, if it must not.
pub fn refusal(root: &Path, recursive: bool, mounts: &[Mount]) -> Option<String> {
    // The mount holding `root` is the last (most recently mounted) of the longest prefix.
    let holding = mounts
        .iter()
        .filter(|m| root.starts_with(&m.point))
        .max_by_key(|m| m.point.components().count());
    if let Some(m) = holding.filter(|m| PSEUDO.contains(&m.fstype.as_str())) {
        return Some(format!(
            "{} is on a pseudo file system ({} at {}): it holds no files to watch",
            root.display(),
            m.fstype,
            m.point.display()
        ));
    }
    if !recursive {
        return None;
    }
    mounts
        .iter()
        .find(|m| {
            m.point != root && m.point.starts_with(root) && PSEUDO.contains(&m.fstype.as_str())
        })
        .map(|m| {
            format!(
                "{} contains {} ({}), a pseudo file system: watch a directory that does not",
                root.display(),
                m.point.display(),
                m.fstype
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
23 22 0:21 / /proc rw,nosuid shared:2 - proc proc rw
24 22 0:22 / /sys rw,nosuid shared:3 - sysfs sysfs rw
25 22 0:5 / /dev rw,nosuid shared:4 - devtmpfs udev rw
26 25 0:23 / /dev/shm rw shared:5 - tmpfs tmpfs rw
27 22 0:24 / /home/a\\040b rw shared:6 - ext4 /dev/sdb1 rw
";

    #[test]
    fn pseudo_file_systems_and_trees_holding_them_are_refused() {
        let m = parse(SAMPLE);
        assert_eq!(m[5].point, PathBuf::from("/home/a b"));
        assert!(refusal(Path::new("/proc"), false, &m).is_some());
        assert!(refusal(Path::new("/sys/kernel"), true, &m).is_some());
        assert!(refusal(Path::new("/dev"), false, &m).is_some());
        // tmpfs mounted below /dev is an ordinary file system.
        assert!(refusal(Path::new("/dev/shm"), true, &m).is_none());
        let r = refusal(Path::new("/"), true, &m).unwrap();
        assert!(r.contains("/proc"), "{r}");
        assert!(refusal(Path::new("/"), false, &m).is_none());
        assert!(refusal(Path::new("/home/a b/src"), true, &m).is_none());
    }
}
