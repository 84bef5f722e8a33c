//! `--output-dir`: one pprof file per process per window, with the
//! directory's total kept under `--max-disk` by deleting the oldest first.
//!
//! File names start with the window's start time (`<unix>_<pid>_<comm>.pb.gz`,
//! zero-padded) so that name order is age order, and only names of that
//! shape are ever counted or deleted: the agent never touches other files
//! in the directory. Writes go through [`crate::pprof::write_file_atomic`],
//! so a reader never sees a half-written profile.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::metrics::Counters;

/// The output directory and what we know is in it.
pub struct FileSink {
    dir: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
    counters: Arc<Counters>,
}

#[derive(Default)]
struct State {
    /// Our files, oldest first, with their sizes.
    files: VecDeque<(String, u64)>,
    total: u64,
}

impl FileSink {
    /// Opens `dir` (creating it), and takes stock of the profiles a
    /// previous run left there so they count against the cap.
    pub fn open(dir: &Path, max_bytes: u64, counters: Arc<Counters>) -> std::io::Result<FileSink> {
        std::fs::create_dir_all(dir)?;
        let mut files: Vec<(String, u64)> = std::fs::read_dir(dir)?
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                is_ours(&name).then_some(())?;
                Some((name, e.metadata().ok()?.len()))
            })
            .collect();
        files.sort();
        let total = files.iter().map(|f| f.1).sum();
        let sink = FileSink {
            dir: dir.to_owned(),
            max_bytes,
            state: Mutex::new(State {
                files: files.into(),
                total,
            }),
            counters,
        };
        sink.rotate();
        Ok(sink)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes of our profiles in the directory.
    pub fn total(&self) -> u64 {
        self.state().total
    }

    /// Writes one profile of the window starting at `start_unix` (seconds).
    pub fn write(&self, start_unix: i64, pid: u32, comm: &str, bytes: &[u8]) {
        let comm: String = comm
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let len = bytes.len() as u64;
        if len > self.max_bytes {
            Counters::inc(&self.counters.file_errors);
            tracing::warn!(
                "a profile of pid {pid} ({len} bytes) is larger than --max-disk ({} bytes); not written",
                self.max_bytes
            );
            return;
        }
        // Room first, so the directory never holds more than the cap.
        self.evict_until(self.max_bytes - len);
        let mut name = format!("{start_unix:010}_{pid}_{comm}.pb.gz");
        let mut n = 1;
        while self.dir.join(&name).exists() {
            n += 1;
            name = format!("{start_unix:010}_{pid}_{comm}_{n}.pb.gz");
        }
        match crate::pprof::write_file_atomic(&self.dir.join(&name), bytes) {
            Ok(()) => {
                Counters::inc(&self.counters.files_written);
                let mut st = self.state();
                st.total += bytes.len() as u64;
                st.files.push_back((name, bytes.len() as u64));
            }
            Err(e) => {
                Counters::inc(&self.counters.file_errors);
                tracing::warn!("cannot write {}: {e}", self.dir.join(&name).display());
            }
        }
    }

    /// Deletes the oldest profiles until the total fits `--max-disk`.
    pub fn rotate(&self) {
        self.evict_until(self.max_bytes);
    }

    /// Deletes the oldest profiles until the total is at most `limit`.
    fn evict_until(&self, limit: u64) {
        let mut st = self.state();
        while st.total > limit {
            let Some((name, size)) = st.files.pop_front() else {
                break;
            };
            st.total -= size;
            match std::fs::remove_file(self.dir.join(&name)) {
                Ok(()) => Counters::inc(&self.counters.files_deleted),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    Counters::inc(&self.counters.file_errors);
                    tracing::warn!("cannot delete {name}: {e}");
                }
            }
        }
    }
}

/// `<10 digits>_..._.pb.gz`: a name this sink wrote.
fn is_ours(name: &str) -> bool {
    let b = name.as_bytes();
    name.ends_with(".pb.gz")
        && b.len() > 11
        && b[..10].iter().all(u8::is_ascii_digit)
        && b[10] == b'_'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_newest_under_cap_and_ignores_other_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.txt"), vec![0u8; 5000]).unwrap();
        let c = Arc::new(Counters::default());
        let sink = FileSink::open(dir.path(), 2500, c.clone()).unwrap();
        for t in 0..5 {
            sink.write(1_700_000_000 + t, 7, "my prog", &[1u8; 1000]);
            sink.rotate();
        }
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "1700000003_7_my_prog.pb.gz",
                "1700000004_7_my_prog.pb.gz",
                "notes.txt"
            ]
        );
        assert_eq!(sink.total(), 2000);
        // A restart counts what is there.
        let again = FileSink::open(dir.path(), 1500, c).unwrap();
        assert_eq!(again.total(), 1000);
        // Writing makes room first (the directory never holds more than the
        // cap); a profile larger than the cap is refused.
        again.write(1_700_000_005, 7, "my prog", &[1u8; 1000]);
        assert_eq!(again.total(), 1000);
        assert!(dir.path().join("1700000005_7_my_prog.pb.gz").exists());
        again.write(1_700_000_006, 7, "my prog", &[1u8; 2000]);
        assert_eq!(again.total(), 1000);
        assert!(!dir.path().join("1700000006_7_my_prog.pb.gz").exists());
    }
}
