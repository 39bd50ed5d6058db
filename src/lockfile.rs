//! `<path>.lock`: the file beside another that an exclusive `flock` is taken on (the audit trail's
//! writer, `nimgate keys`' rewrite of a clients file). Beside it rather than the file itself: the
//! file is renamed or replaced, its lock file never is. Created 0600; the caller locks it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Open (creating it if needed) the lock file of `path`; its own path for messages.
pub fn open(path: &Path) -> io::Result<(File, PathBuf)> {
    let mut s = path.as_os_str().to_owned();
    s.push(".lock");
    let lock_path = PathBuf::from(s);
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)?;
    Ok((f, lock_path))
}
