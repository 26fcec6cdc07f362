//! Reader- and crash-safe file replacement.
//!
//! Invariant: the target path always names either the complete old file or
//! the complete new one (unique temp file in the same directory, fsync,
//! chmod, rename, fsync of the directory); a failed write leaves no temp file.

use std::ffi::OsString;
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::LeaseError;

/// Mode of every file written here: the CNI plugin and tools read it.
pub(crate) const FILE_MODE: u32 = 0o644;
/// Mode of directories created above the target's own directory.
pub(crate) const PARENT_DIR_MODE: u32 = 0o755;

/// Distinguishes temp files of concurrent writers in one process; the pid
/// distinguishes processes.
static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Replace `path` with `contents`. The directory holding it is created with
/// `dir_mode` if missing (its missing parents with 0755), exactly those
/// modes whatever the umask.
pub(crate) fn write_atomic(path: &Path, contents: &[u8], dir_mode: u32) -> Result<(), LeaseError> {
    let write_err = |error| LeaseError::Write {
        path: path.to_path_buf(),
        error,
    };
    let name = path.file_name().ok_or_else(|| {
        write_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "path has no file name",
        ))
    })?;
    let dir = parent_dir(path);
    ensure_dir(dir, dir_mode)?;
    let (tmp, file) = create_temp(dir, name).map_err(write_err)?;
    let written = fill(file, contents).and_then(|()| fs::rename(&tmp, path));
    if let Err(error) = written {
        // Best effort: the error that matters is the write's.
        let _ = fs::remove_file(&tmp);
        return Err(write_err(error));
    }
    // Without this the rename itself may not survive a crash.
    sync_dir(dir).map_err(|error| LeaseError::Write {
        path: dir.to_path_buf(),
        error,
    })
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn create_temp(dir: &Path, name: &std::ffi::OsStr) -> io::Result<(PathBuf, File)> {
    let mut last = None;
    // A stale temp file from a crashed run can hold a name; try a few more.
    for _ in 0..16 {
        let seq = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
        let mut tmp_name = OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".{}.{seq}.tmp", std::process::id()));
        let tmp = dir.join(tmp_name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&tmp)
        {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free temp file name")))
}

fn fill(mut file: File, contents: &[u8]) -> io::Result<()> {
    file.write_all(contents)?;
    // open(2) applied the umask; the mode must not depend on it.
    file.set_permissions(Permissions::from_mode(FILE_MODE))?;
    file.sync_all()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Create `dir` (mode `leaf_mode`) and its missing parents (0755). Existing
/// directories are left as they are: their modes are someone else's choice.
fn ensure_dir(dir: &Path, leaf_mode: u32) -> Result<(), LeaseError> {
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(p) = cur {
        if p.as_os_str().is_empty() {
            break;
        }
        match fs::metadata(p) {
            // Not a directory: the temp file creation reports it with the path.
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                missing.push(p);
                cur = p.parent();
            }
            Err(error) => {
                return Err(LeaseError::CreateDir {
                    path: p.to_path_buf(),
                    error,
                });
            }
        }
    }
    for p in missing.into_iter().rev() {
        let mode = if p == dir { leaf_mode } else { PARENT_DIR_MODE };
        create_dir(p, mode).map_err(|error| LeaseError::CreateDir {
            path: p.to_path_buf(),
            error,
        })?;
    }
    Ok(())
}

fn create_dir(p: &Path, mode: u32) -> io::Result<()> {
    match DirBuilder::new().mode(mode).create(p) {
        Ok(()) => {}
        // Someone else created it meanwhile: theirs, keep its mode.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    }
    fs::set_permissions(p, Permissions::from_mode(mode))?;
    sync_dir(parent_dir(p))
}
