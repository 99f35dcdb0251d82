//! Files and directories only their owner may read: everything the hub and the monitor
//! create under their data directories (databases hold password and key hashes and every
//! log entry). Modes are set explicitly after creation, so the process umask never
//! widens (or oddly narrows) them.

use std::fs::{OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

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
