//! Files and directories only their owner may read: everything the hub and the monitor
//! create under their data directories (databases hold password and key hashes and every
//! log entry). Modes are set explicitly after creation, so the process umask never
//! widens (or oddly narrows) them.

use std::fs::{OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub const FILE_MODE: u32 = 0o600;
pub const DIR_MODE: u32 = 0o700;

/// Creates `dir` and any missing parents as 0700. Directories that already exist are left
/// as they are (an operator's choice).
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(d) = at.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        missing.push(d.to_path_buf());
        at = d.parent();
    }
    for d in missing.iter().rev() {
        match std::fs::DirBuilder::new().mode(DIR_MODE).create(d) {
            Ok(()) => std::fs::set_permissions(d, Permissions::from_mode(DIR_MODE))?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Opens `path` for writing as a new file, 0600 (fails if it exists).
pub fn create_private_file(path: &Path) -> io::Result<std::fs::File> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)?;
    file.set_permissions(Permissions::from_mode(FILE_MODE))?;
    Ok(file)
}

/// Opens (creating if missing) `path` for reading and writing, without truncating, and
/// makes it 0600 whatever it was. A symlink is refused (`ELOOP`), never followed.
pub fn open_private_file(path: &Path) -> io::Result<std::fs::File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    tighten(&file)?;
    Ok(file)
}

/// Makes an existing file 0600 if group or others may access it; whether it did. A
/// symlink is refused, never followed.
pub fn make_private(path: &Path) -> io::Result<bool> {
    match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(file) => tighten(&file),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

fn tighten(file: &std::fs::File) -> io::Result<bool> {
    let mode = file.metadata()?.permissions().mode();
    if mode & 0o077 == 0 {
        return Ok(false);
    }
    file.set_permissions(Permissions::from_mode(mode & 0o700 | 0o600))?;
    Ok(true)
}

/// An SQLite database and the files SQLite keeps beside it, made private: the database is
/// created 0600 when missing (SQLite then gives its `-wal`, `-shm` and `-journal` files the
/// database's mode), and any of them left wider by an older version are tightened.
pub fn private_database(path: &Path) -> io::Result<()> {
    if !path.exists() {
        match create_private_file(path) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        if make_private(Path::new(&name))? {
            tracing::warn!(path = %Path::new(&name).display(), "database file was readable by others; made 0600");
        }
    }
    Ok(())
}

/// Makes `dir` (creating what is missing, 0700) a directory nobody but us and root can
/// swap anything in, or says why it cannot be; its canonical path. The rule, after
/// OpenSSH's StrictModes: the directory and every one above it belong to us or to root,
/// and any that others may write is sticky (like `/tmp`, where nobody can rename or remove
/// a name of someone else's) — `dir` itself may be such a shared directory only when
/// `shared_ok` (a socket or a pid file is one name we create exclusively; a database or an
/// archive is several names that must not be planted beside it). A symlink on the way must
/// be ours or root's and sit in such a directory too (else its owner could point it
/// elsewhere later); it is then followed, and the rule applies to where it leads. Nothing
/// is created until the part that exists has passed.
pub fn prepare_trusted_dir(dir: &Path, shared_ok: bool) -> io::Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let absolute = match dir.is_absolute() {
        true => dir.to_path_buf(),
        false => std::env::current_dir()?.join(dir),
    };
    let me = nix::unistd::geteuid().as_raw();
    let mut existing = PathBuf::from("/");
    let mut missing = PathBuf::new();
    for c in absolute.components().skip(1) {
        if !missing.as_os_str().is_empty() {
            missing.push(c);
            continue;
        }
        let next = existing.join(c);
        match std::fs::symlink_metadata(&next) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => missing.push(c),
            Err(e) => return Err(e),
            Ok(m) if m.file_type().is_symlink() => {
                if m.uid() != me && m.uid() != 0 {
                    return Err(refused(format!(
                        "{} is a symlink of another user's (uid {}), who could point it anywhere",
                        next.display(),
                        m.uid()
                    )));
                }
                check_trusted_chain(&existing, true)?;
                existing = std::fs::canonicalize(&next)?;
            }
            Ok(_) => existing = next,
        }
    }
    if missing.as_os_str().is_empty() {
        return check_trusted_chain(&existing, shared_ok);
    }
    // Our new directories go into one nobody else can swap them out of.
    let parent = check_trusted_chain(&existing, true)?;
    let full = parent.join(&missing);
    create_private_dir(&full)?;
    check_trusted_chain(&full, shared_ok)
}

/// The canonical form of `dir`, once it and every directory above it pass the rule of
/// [`prepare_trusted_dir`].
fn check_trusted_chain(dir: &Path, shared_ok: bool) -> io::Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let canonical = std::fs::canonicalize(dir)?;
    let me = nix::unistd::geteuid().as_raw();
    let mut at = Some(canonical.as_path());
    let mut first = true;
    while let Some(d) = at {
        let meta = std::fs::metadata(d)?;
        let owner = meta.uid();
        if owner != me && owner != 0 {
            return Err(refused(format!(
                "{} belongs to another user (uid {owner}), who could swap what is in it",
                d.display()
            )));
        }
        let writable_by_others = meta.mode() & 0o022 != 0;
        let sticky = meta.mode() & 0o1000 != 0;
        if writable_by_others && (!sticky || (first && !shared_ok)) {
            return Err(refused(format!(
                "{} is writable by other users (mode {:o}), who could swap what is in it",
                d.display(),
                meta.mode() & 0o7777
            )));
        }
        first = false;
        at = d.parent();
    }
    Ok(canonical)
}

fn refused(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, message)
}

/// What `fstat` says of one file: enough to tell one version of it from another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub dev: u64,
    pub ino: u64,
    pub len: u64,
    pub mtime_ns: i128,
    /// `st_mode` (type and permissions).
    pub mode: u32,
}

impl Stat {
    pub fn of(meta: &std::fs::Metadata) -> Stat {
        use std::os::unix::fs::MetadataExt;
        Stat {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            mode: meta.mode(),
        }
    }

    pub fn is_regular(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFREG
    }
}

/// The directory holding `path` and `path`'s last name, reached from `/` one component at a
/// time without following any symlink: what is opened in it is the file at that path,
/// whatever anyone swaps meanwhile. `path` must be absolute and hold no `..`.
pub fn parent_nofollow(path: &Path) -> io::Result<(std::fs::File, std::ffi::OsString)> {
    use std::path::Component;
    let invalid = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "the path must be absolute, without `..`",
        )
    };
    if !path.is_absolute() {
        return Err(invalid());
    }
    let mut names = Vec::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => names.push(n),
            Component::Prefix(_) | Component::ParentDir => return Err(invalid()),
        }
    }
    let last = names.pop().ok_or_else(invalid)?.to_owned();
    let mut dir = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open("/")?;
    for n in names {
        dir = open_at(
            &dir,
            n,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW,
        )?;
    }
    Ok((dir, last))
}

use nix::fcntl::OFlag;

fn open_at(dir: &std::fs::File, name: &std::ffi::OsStr, flags: OFlag) -> io::Result<std::fs::File> {
    let fd = nix::fcntl::openat(
        dir,
        name,
        flags | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    Ok(std::fs::File::from(fd))
}

/// What `name` in `dir` is, without following it if it is a symlink.
pub fn stat_at(dir: &std::fs::File, name: &std::ffi::OsStr) -> io::Result<Stat> {
    // O_PATH | O_NOFOLLOW opens a symlink, a FIFO or a device as itself: nothing blocks,
    // no driver is woken, and fstat says what it is.
    let f = open_at(dir, name, OFlag::O_PATH | OFlag::O_NOFOLLOW)?;
    Ok(Stat::of(&f.metadata()?))
}

/// Opens a regular file for reading, never through a symlink (in any component) and never
/// blocking (a FIFO or a device is refused before it is opened for reading, and opened
/// non-blocking anyway should one be swapped in meanwhile). Its [`Stat`] comes along.
pub fn open_regular_nofollow(path: &Path) -> io::Result<(std::fs::File, Stat)> {
    let (dir, name) = parent_nofollow(path)?;
    let before = stat_at(&dir, &name)?;
    if !before.is_regular() {
        return Err(not_regular(before.mode));
    }
    let f = open_at(
        &dir,
        &name,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY,
    )?;
    let stat = Stat::of(&f.metadata()?);
    if !stat.is_regular() || (stat.dev, stat.ino) != (before.dev, before.ino) {
        return Err(not_regular(stat.mode));
    }
    Ok((f, stat))
}

fn not_regular(mode: u32) -> io::Error {
    let kind = match mode & libc::S_IFMT {
        libc::S_IFLNK => "a symlink",
        libc::S_IFDIR => "a directory",
        libc::S_IFIFO => "a FIFO",
        libc::S_IFCHR => "a character device",
        libc::S_IFBLK => "a block device",
        libc::S_IFSOCK => "a socket",
        _ => "not a file",
    };
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("not a regular file ({kind})"),
    )
}

/// Removes the file at `path` (never through a symlink) if it is still the version `was`
/// describes; whether it did.
pub fn remove_if_unchanged(path: &Path, was: &Stat) -> io::Result<bool> {
    let (dir, name) = parent_nofollow(path)?;
    if stat_at(&dir, &name)? != *was {
        return Ok(false);
    }
    // Unlinking needs a real descriptor of the directory, not an O_PATH one.
    let real = open_at(
        &dir,
        std::ffi::OsStr::new("."),
        OFlag::O_RDONLY | OFlag::O_DIRECTORY,
    )?;
    nix::unistd::unlinkat(
        &real,
        name.as_os_str(),
        nix::unistd::UnlinkatFlags::NoRemoveDir,
    )?;
    Ok(true)
}

/// Bytes free to an unprivileged writer on the file system holding `path`.
pub fn available_bytes(path: &Path) -> io::Result<u64> {
    let v = nix::sys::statvfs::statvfs(path)?;
    #[allow(clippy::useless_conversion)] // the types differ between platforms
    let (free, size) = (
        u64::from(v.blocks_available()),
        u64::from(v.fragment_size()),
    );
    Ok(free.saturating_mul(size))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn what_is_created_is_private_and_what_was_wide_is_tightened() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b/c");
        create_private_dir(&dir).unwrap();
        for d in ["a", "a/b", "a/b/c"] {
            assert_eq!(mode(&root.path().join(d)), 0o700, "{d}");
        }
        let db = dir.join("x.db");
        private_database(&db).unwrap();
        assert_eq!(mode(&db), 0o600);
        let wide = dir.join("y.db");
        std::fs::write(&wide, b"").unwrap();
        let wal = dir.join("y.db-wal");
        std::fs::write(&wal, b"").unwrap();
        for p in [&wide, &wal] {
            std::fs::set_permissions(p, Permissions::from_mode(0o644)).unwrap();
        }
        private_database(&wide).unwrap();
        assert_eq!((mode(&wide), mode(&wal)), (0o600, 0o600));
        let f = dir.join("f");
        create_private_file(&f).unwrap();
        assert_eq!(mode(&f), 0o600);
        assert!(create_private_file(&f).is_err(), "never reuses a file");
        let link = dir.join("link");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        assert!(
            open_private_file(&link).is_err(),
            "symlinks are not followed"
        );
    }
}
