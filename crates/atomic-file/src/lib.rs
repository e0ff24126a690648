//! Crash-safe file replacement: readers see either the old file or the complete new one.
//!
//! The new content goes to a temporary file in the destination's directory (same filesystem, so
//! `rename` is atomic), is fsynced, renamed over the destination, and the directory is fsynced so
//! the rename itself survives a power cut. A process killed mid-write leaves only a stray
//! `.tmp-*` file, never a truncated destination.

use anyhow::{Context, Result};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Prefix of temporary files, so leftovers of a killed writer are recognisable.
pub const TEMP_PREFIX: &str = ".tmp-";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A unique temporary path beside `path` (same directory).
pub fn temp_path_beside(path: &Path) -> Result<PathBuf> {
    let name = path.file_name().with_context(|| format!("{} has no file name", path.display()))?;
    let unique = format!(
        "{TEMP_PREFIX}{}-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    Ok(parent_dir(path).join(unique))
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Flushes a directory's entries (renames, creations) to disk.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("fsync directory {}", dir.display()))
}

/// Atomically replaces `path` with whatever `write` puts at the temporary path it is given.
///
/// Path-based so writers that insist on creating their own file (e.g. safetensors' streaming
/// serializer) can take part; the temporary file is removed if `write` fails.
pub fn write_atomic_with(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let temp = temp_path_beside(path)?;
    let result = write(&temp).and_then(|()| {
        File::open(&temp).and_then(|f| f.sync_all()).with_context(|| format!("fsync {}", temp.display()))?;
        std::fs::rename(&temp, path).with_context(|| format!("rename {} -> {}", temp.display(), path.display()))?;
        sync_dir(&parent_dir(path))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

/// Atomically replaces `path` with `bytes`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |temp| {
        let mut file = File::create(temp).with_context(|| format!("create {}", temp.display()))?;
        file.write_all(bytes).with_context(|| format!("write {}", temp.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_content_and_leaves_no_temp_files() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path();
        let path = dir.join("a.json");
        write_atomic(&path, b"old").unwrap();
        write_atomic(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let names: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.json")]);
    }

    #[test]
    fn failed_write_keeps_old_file_and_removes_temp() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path();
        let path = dir.join("a.bin");
        write_atomic(&path, b"good").unwrap();
        let err = write_atomic_with(&path, |temp| {
            std::fs::write(temp, b"half")?;
            anyhow::bail!("killed mid-write")
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("a.bin"), "{err:#}");
        assert_eq!(std::fs::read(&path).unwrap(), b"good");
        assert_eq!(std::fs::read_dir(dir).unwrap().count(), 1);
    }
}
