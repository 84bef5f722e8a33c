//! Saying, once per binary, why its frames stay unnamed.
//!
//! A binary that cannot be symbolized (an unreadable or malformed ELF,
//! compressed debug data we cannot read, a symbolizer that panicked on it)
//! keeps its frames' addresses, and the user is told why, once: the agent
//! asks again for every window, and the same file is often open under
//! several paths, so "once" is per file (device and inode) for the whole
//! process.

use std::collections::HashSet;
use std::fmt::Display;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Files already reported. Bounded: past this many, reports repeat rather
/// than the set growing.
const MAX_REMEMBERED: usize = 4096;

static REPORTED: Mutex<Option<HashSet<(u64, u64)>>> = Mutex::new(None);

/// Logs a warning that the file at `path` cannot be symbolized, and `why`,
/// unless that file was reported before.
pub(crate) fn warn_once(path: &Path, why: &dyn Display) {
    if let Ok(meta) = std::fs::metadata(path) {
        let key = (meta.dev(), meta.ino());
        let mut reported = REPORTED.lock().unwrap_or_else(|e| e.into_inner());
        let set = reported.get_or_insert_with(HashSet::new);
        if set.contains(&key) {
            return;
        }
        if set.len() < MAX_REMEMBERED {
            set.insert(key);
        }
    }
    tracing::warn!(
        "cannot symbolize {}: {why}; its frames keep their addresses",
        shown(path).display()
    );
}

/// The path a user knows: `/proc/self/fd/N`, the path the agent and the
/// recorder open binaries under, is shown as the file it refers to.
fn shown(path: &Path) -> PathBuf {
    if path.starts_with("/proc/self/fd") {
        if let Ok(target) = std::fs::read_link(path) {
            return target;
        }
    }
    path.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_paths_are_shown_as_their_file() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(f.as_file());
        let via_fd = PathBuf::from(format!("/proc/self/fd/{fd}"));
        assert_eq!(shown(&via_fd), f.path());
        assert_eq!(
            shown(Path::new("/usr/bin/true")),
            Path::new("/usr/bin/true")
        );
    }
}
