//! The store directory around sled: the store's own lock, leftovers of a
//! crash that sled cannot open past, and the fsyncs sled does not make.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{Error, Result, StorageError};

/// How long `open` retries a directory whose lock is held before it reports
/// `InUse`. sled's background threads can hold its lock for a moment after
/// the last handle of a store closed in this same process is dropped, so an
/// immediate reopen would otherwise fail now and then.
const LOCK_WAIT: Duration = Duration::from_secs(1);

/// The store's own lock file. It is taken before anything in the directory
/// is touched (stale snapshots are removed before sled, which takes its own
/// lock, opens), and held until the engine is dropped.
const LOCK_FILE: &str = "sessiondb.lock";

fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io {
        action,
        path,
        source,
    }
}

/// Retries `attempt` while it reports a held lock, for up to `LOCK_WAIT`.
pub(crate) fn with_lock_wait<T, E>(
    mut attempt: impl FnMut() -> std::result::Result<T, E>,
    held: impl Fn(&E) -> bool,
) -> std::result::Result<T, E> {
    let started = Instant::now();
    loop {
        match attempt() {
            Err(e) if held(&e) && started.elapsed() < LOCK_WAIT => {
                std::thread::sleep(Duration::from_millis(5))
            }
            other => return other,
        }
    }
}

/// Creates the store directory if it is missing (and makes its entry
/// durable), or checks that it is a directory.
pub(crate) fn ensure_dir(path: &Path) -> Result<()> {
    if !path.exists() {
        std::fs::create_dir_all(path).map_err(io("creating store directory", path))?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fsync_dir(parent)?;
        }
        Ok(())
    } else if path.is_dir() {
        Ok(())
    } else {
        Err(Error::Io {
            action: "opening store directory",
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
        })
    }
}

/// Takes the store's lock file, or reports `InUse`.
pub(crate) fn lock_store(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io("opening the lock file", &path))?;
    match with_lock_wait(
        || file.try_lock(),
        |e| matches!(e, std::fs::TryLockError::WouldBlock),
    ) {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::InUse {
            path: dir.to_path_buf(),
            source: StorageError::new("locking the store", format!("{} is locked", path.display())),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(io("opening the lock file", path)(e)),
    }
}

/// Removes `snap.*.generating` files that a crash during a previous open
/// left behind; sled refuses to open while one exists.
pub(crate) fn remove_stale_snapshots(dir: &Path) -> Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir).map_err(io("reading store directory", dir))? {
        let entry = entry.map_err(io("reading store directory", dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            std::fs::remove_file(entry.path())
                .map_err(io("removing stale snapshot", entry.path()))?;
            removed += 1;
        }
    }
    Ok(removed)
}

pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("syncing directory", dir))
}

/// The files a durable flush must fsync beyond sled's own flush: sled
/// syncs its log with `sync_file_range`, which does not reach the disk
/// cache, and writes a page larger than a quarter segment (~128 KiB: a leaf
/// of up to 17 large records) to a file under `blobs/` that it never syncs.
pub(crate) struct DurableFiles {
    db_path: PathBuf,
    db_file: File,
    blobs: PathBuf,
    /// Blob files already fsynced.
    synced_blobs: Mutex<HashSet<OsString>>,
}

impl DurableFiles {
    pub fn open(dir: &Path) -> Result<Self> {
        let db_path = dir.join("db");
        Ok(DurableFiles {
            db_file: File::open(&db_path).map_err(io("opening for fsync", &db_path))?,
            db_path,
            blobs: dir.join("blobs"),
            synced_blobs: Mutex::new(HashSet::new()),
        })
    }

    /// fsyncs the `db` file and the blob files written since the last call.
    pub fn sync(&self) -> Result<()> {
        self.db_file
            .sync_all()
            .map_err(io("fsyncing", &self.db_path))?;
        self.sync_blobs()
    }

    /// fsyncs blob files written since the last durable flush, and the
    /// blobs directory when it gained files. Usually the directory is empty
    /// and this is one `readdir`.
    fn sync_blobs(&self) -> Result<()> {
        let entries = match std::fs::read_dir(&self.blobs) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io("reading", &self.blobs)(e)),
        };
        let mut synced = self
            .synced_blobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut present = HashSet::with_capacity(synced.len());
        let mut gained = false;
        for entry in entries {
            let entry = entry.map_err(io("reading", &self.blobs))?;
            let name = entry.file_name();
            if !synced.contains(&name) {
                File::open(entry.path())
                    .and_then(|f| f.sync_all())
                    .map_err(io("fsyncing", entry.path()))?;
                gained = true;
            }
            present.insert(name);
        }
        // Blobs sled removed are forgotten, so the set stays small.
        *synced = present;
        if gained {
            fsync_dir(&self.blobs)?;
        }
        Ok(())
    }
}
