//! The download cache, in elfutils' layout, so that what gdb or perf
//! fetched we reuse and what we fetch they reuse:
//!
//! - `CACHE/<build-id>/debuginfo` and `CACHE/<build-id>/executable`: a
//!   fetched file (read-only, in a directory only its owner can enter);
//! - the same path as an empty file: a remembered miss (every server said
//!   404), honoured while its modification time is less than `cache_miss_s`
//!   seconds old (the number in the control file `CACHE/cache_miss_s`, 600
//!   when absent); an older one is removed and the servers asked again;
//! - a download goes to `<kind>.XXXXXX` beside its final name and is
//!   renamed into place only once complete and verified, so no reader, ours
//!   or elfutils', ever opens a half-written file.
//!
//! Cleaning old entries is left to elfutils' clients, which do it by access
//! time (`max_unused_age_s`); entries we write are shaped so they can.

use std::fs::{DirBuilder, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// elfutils' default for `cache_miss_s`.
const DEFAULT_MISS_SECS: u64 = 600;

/// The two files a server may have for a build ID, in the order we ask.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// The separate debug file (or an unstripped binary).
    Debuginfo,
    /// The binary itself, as the server has it.
    Executable,
}

impl Kind {
    /// The name in the server's URL and in the cache.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Debuginfo => "debuginfo",
            Kind::Executable => "executable",
        }
    }
}

/// What the cache holds for one (build ID, kind).
#[derive(Debug, PartialEq, Eq)]
pub enum Entry {
    /// A fetched file.
    Hit(PathBuf),
    /// A recent miss: do not ask again yet.
    Miss,
    /// Nothing (or a miss old enough to be forgotten).
    Absent,
}

/// A cache operation that failed, with the path it was about.
#[derive(Debug, thiserror::Error)]
#[error("debuginfod cache {}: {source}", path.display())]
pub struct CacheError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

fn at(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError {
        path: path.to_owned(),
        source,
    }
}

/// One cache directory.
#[derive(Clone, Debug)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    pub fn new(root: PathBuf) -> Cache {
        Cache { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the file of `kind` for `build_id` (lowercase hex) lives.
    pub fn path(&self, build_id: &str, kind: Kind) -> PathBuf {
        self.root.join(build_id).join(kind.as_str())
    }

    /// What the cache has; a miss past its time is removed, as elfutils does.
    pub fn lookup(&self, build_id: &str, kind: Kind) -> Entry {
        let path = self.path(build_id, kind);
        let Ok(meta) = std::fs::metadata(&path) else {
            return Entry::Absent;
        };
        if !meta.is_file() {
            return Entry::Absent;
        }
        if meta.len() > 0 {
            return Entry::Hit(path);
        }
        let age = meta
            .modified()
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .unwrap_or_default();
        if age <= self.miss_ttl() {
            Entry::Miss
        } else {
            // Another client racing us may put a fresh entry here; then
            // removing it only costs one more query.
            let _ = std::fs::remove_file(&path);
            Entry::Absent
        }
    }

    /// How long a miss is remembered: `cache_miss_s`, else 600 s.
    pub fn miss_ttl(&self) -> Duration {
        let secs = std::fs::read_to_string(self.root.join("cache_miss_s"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(DEFAULT_MISS_SECS);
        Duration::from_secs(secs)
    }

    /// A new temporary file beside the final place of (`build_id`, `kind`),
    /// the directories made as elfutils makes them.
    pub fn temp_file(
        &self,
        build_id: &str,
        kind: Kind,
    ) -> Result<tempfile::NamedTempFile, CacheError> {
        let dir = self.entry_dir(build_id)?;
        tempfile::Builder::new()
            .prefix(&format!("{}.", kind.as_str()))
            .rand_bytes(6)
            .tempfile_in(&dir)
            .map_err(at(&dir))
    }

    /// Moves a complete, verified download into place, read-only.
    pub fn commit(
        &self,
        tmp: tempfile::NamedTempFile,
        build_id: &str,
        kind: Kind,
    ) -> Result<PathBuf, CacheError> {
        let path = self.path(build_id, kind);
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o400))
            .map_err(at(tmp.path()))?;
        tmp.persist(&path).map_err(|e| CacheError {
            path: path.clone(),
            source: e.error,
        })?;
        Ok(path)
    }

    /// Remembers that no server has (`build_id`, `kind`): an empty file,
    /// created only if nothing is there (a racing download wins).
    pub fn remember_miss(&self, build_id: &str, kind: Kind) -> Result<(), CacheError> {
        self.entry_dir(build_id)?;
        let path = self.path(build_id, kind);
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(at(&path)(e)),
        }
    }

    /// `CACHE/<build-id>/`, created 0700 (the cache itself with the usual
    /// permissions) if missing.
    fn entry_dir(&self, build_id: &str) -> Result<PathBuf, CacheError> {
        DirBuilder::new()
            .recursive(true)
            .create(&self.root)
            .map_err(at(&self.root))?;
        let dir = self.root.join(build_id);
        match DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => Ok(dir),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(dir),
            Err(e) => Err(at(&dir)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;

    const ID: &str = "53d38b78aa";

    fn set_mtime(path: &Path, t: SystemTime) {
        let f = File::options().write(true).open(path).unwrap();
        f.set_modified(t).unwrap();
    }

    #[test]
    fn a_download_appears_only_when_committed_in_elfutils_layout() {
        let root = tempfile::tempdir().unwrap();
        let cache = Cache::new(root.path().join("debuginfod_client"));
        assert_eq!(cache.lookup(ID, Kind::Debuginfo), Entry::Absent);
        let mut tmp = cache.temp_file(ID, Kind::Debuginfo).unwrap();
        let name = tmp.path().file_name().unwrap().to_str().unwrap().to_owned();
        assert!(
            name.starts_with("debuginfo.") && name.len() == "debuginfo.".len() + 6,
            "{name}"
        );
        tmp.write_all(b"\x7fELF partial").unwrap();
        // Half-written: not visible under its final name.
        assert_eq!(cache.lookup(ID, Kind::Debuginfo), Entry::Absent);
        let path = cache.commit(tmp, ID, Kind::Debuginfo).unwrap();
        assert_eq!(
            path,
            root.path()
                .join("debuginfod_client")
                .join(ID)
                .join("debuginfo")
        );
        assert_eq!(cache.lookup(ID, Kind::Debuginfo), Entry::Hit(path.clone()));
        assert_eq!(cache.lookup(ID, Kind::Executable), Entry::Absent);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&path), 0o400);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        // No temporary file is left behind.
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(left.len(), 1);
    }

    #[test]
    fn a_miss_is_remembered_for_cache_miss_s() {
        let root = tempfile::tempdir().unwrap();
        let cache = Cache::new(root.path().to_owned());
        cache.remember_miss(ID, Kind::Executable).unwrap();
        let path = cache.path(ID, Kind::Executable);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        assert_eq!(cache.lookup(ID, Kind::Executable), Entry::Miss);
        assert_eq!(cache.miss_ttl(), Duration::from_secs(600));

        // Ten minutes and a second ago: forgotten, and removed.
        let old = SystemTime::now() - Duration::from_secs(601);
        set_mtime(&path, old);
        assert_eq!(cache.lookup(ID, Kind::Executable), Entry::Absent);
        assert!(!path.exists());

        // The control file sets the time, as elfutils' does.
        cache.remember_miss(ID, Kind::Executable).unwrap();
        set_mtime(&path, old);
        std::fs::write(root.path().join("cache_miss_s"), "3600").unwrap();
        assert_eq!(cache.lookup(ID, Kind::Executable), Entry::Miss);

        // A download that got there first is not clobbered.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"\x7fELF").unwrap();
        cache.remember_miss(ID, Kind::Executable).unwrap();
        assert_eq!(cache.lookup(ID, Kind::Executable), Entry::Hit(path));
    }
}
