//! The clients file on disk for `nimgate keys`: an exclusive `flock` on `<file>.lock` held for
//! the whole read-change-write (concurrent invocations run one after the other, none loses the
//! other's change), then an atomic replace: a temporary file in the same directory, written and
//! fsynced, checked by the caller (the gateway's own parser and validation), renamed over the
//! file, and the directory fsynced so the rename survives a crash. A gateway polling the file
//! sees the old content or the new, never a part. A new file is created 0600; an existing one
//! keeps its mode. A symlinked file (a ConfigMap-style mount) is replaced at its target.

use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A clients file read under its lock; `replace` writes the new content.
pub(crate) struct Locked {
    _lock: Flock<File>,
    /// The file written (the symlink's target when `--file` is one).
    pub path: PathBuf,
    /// The content read (empty when the file does not exist yet).
    pub text: String,
    /// The existing file's permission bits; `None`: a new file (0600).
    mode: Option<u32>,
}

/// Why a replace did not happen: the check refused the content, or the disk did.
pub(crate) enum ReplaceError {
    Invalid(Vec<String>),
    Io(String),
}

/// Lock `path` (waiting for another `nimgate keys` to finish) and read it.
pub(crate) fn open(path: &Path) -> io::Result<Locked> {
    let path = match std::fs::canonicalize(path) {
        Ok(real) => real,
        Err(e) if e.kind() == io::ErrorKind::NotFound => path.to_path_buf(),
        Err(e) => return Err(e),
    };
    let (f, lock_path) = crate::lockfile::open(&path)?;
    let lock = Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, errno)| {
        io::Error::other(format!("cannot lock {}: {errno}", lock_path.display()))
    })?;
    let (text, mode) = match std::fs::read_to_string(&path) {
        Ok(t) => {
            let mode = std::fs::metadata(&path)?.permissions().mode() & 0o7777;
            (t, Some(mode))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => (String::new(), None),
        Err(e) => return Err(e),
    };
    Ok(Locked {
        _lock: lock,
        path,
        text,
        mode,
    })
}

impl Locked {
    /// The directory the file lives in (`.` for a bare file name).
    fn dir(&self) -> &Path {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        }
    }

    /// Write `text` to a temporary file beside the file, let `check` judge that file (its
    /// problems, if any, refuse the change), then rename it into place and sync the directory.
    pub(crate) fn replace(
        &self,
        text: &str,
        check: impl FnOnce(&Path) -> Vec<String>,
    ) -> Result<(), ReplaceError> {
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = self
            .dir()
            .join(format!(".{name}.nimgate-keys.{}.tmp", std::process::id()));
        let io = |what: &str, e: io::Error| ReplaceError::Io(format!("{what}: {e}"));
        let written = self.write_tmp(&tmp, text);
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(&tmp.display().to_string(), e));
        }
        let problems = check(&tmp);
        if !problems.is_empty() {
            let _ = std::fs::remove_file(&tmp);
            return Err(ReplaceError::Invalid(problems));
        }
        if let Err(e) = std::fs::rename(&tmp, &self.path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(&self.path.display().to_string(), e));
        }
        File::open(self.dir())
            .and_then(|d| d.sync_all())
            .map_err(|e| io(&self.dir().display().to_string(), e))
    }

    fn write_tmp(&self, tmp: &Path, text: &str) -> io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(tmp)?;
        if let Some(mode) = self.mode {
            f.set_permissions(Permissions::from_mode(mode))?;
        }
        f.write_all(text.as_bytes())?;
        f.sync_all()
    }
}
