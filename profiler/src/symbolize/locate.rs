//! Finding the file that matches a mapping's build ID, for offline
//! symbolization on a machine other than the one that captured.
//!
//! Places searched, in order:
//! 1. `DIR/.build-id/xx/rest.debug` and `DIR/.build-id/xx/rest` in every
//!    debug directory (the layout of `/usr/lib/debug`);
//! 2. `DIR/<build_id>/<basename>` in every debug and binary directory (the
//!    `PPROF_BINARY_PATH` layout);
//! 3. any file under the binary directories whose identity matches.
//!
//! A candidate is only used if its own identity (GNU build ID, Go build ID,
//! or content hash) equals the one recorded: a file with the right name and
//! the wrong contents would name frames wrongly, which is worse than not at
//! all.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::process::buildid;

/// Where a file was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub path: PathBuf,
    /// A human description of the layout or source that matched.
    pub how: String,
}

/// Searches debug and binary directories by build ID.
pub struct Locator {
    debug_dirs: Vec<PathBuf>,
    binary_dirs: Vec<PathBuf>,
    /// Identity → file, for every ELF file under the binary directories;
    /// built on the first lookup that needs it.
    scanned: Option<HashMap<String, PathBuf>>,
}

/// Files without a build ID larger than this are not hashed: a directory
/// of binaries should not make us read gigabytes for one missing build ID.
const MAX_HASH_BYTES: u64 = 2 << 30;

impl Locator {
    pub fn new(debug_dirs: Vec<PathBuf>, binary_dirs: Vec<PathBuf>) -> Self {
        Locator {
            debug_dirs,
            binary_dirs,
            scanned: None,
        }
    }

    /// The file whose identity is `id`; `filename` is the path the process
    /// saw, whose basename the `PPROF_BINARY_PATH` layout uses.
    pub fn find(&mut self, id: &str, filename: &str) -> Option<Found> {
        if id.is_empty() {
            return None;
        }
        let basename = Path::new(filename).file_name();
        let is_hex = id.len() > 2 && id.bytes().all(|b| b.is_ascii_hexdigit());
        for dir in &self.debug_dirs {
            if is_hex {
                let (head, rest) = id.split_at(2);
                let base = dir.join(".build-id").join(head);
                for (name, how) in [
                    (format!("{rest}.debug"), ".build-id/xx/rest.debug"),
                    (rest.to_owned(), ".build-id/xx/rest"),
                ] {
                    if let Some(f) = verified(&base.join(name), id, how) {
                        return Some(f);
                    }
                }
            }
        }
        if let Some(basename) = basename {
            for dir in self.debug_dirs.iter().chain(&self.binary_dirs) {
                let p = dir.join(id).join(basename);
                if let Some(f) = verified(&p, id, "<build_id>/<basename>") {
                    return Some(f);
                }
            }
        }
        let scanned = self.scanned.get_or_insert_with(|| scan(&self.binary_dirs));
        scanned.get(id).map(|p| Found {
            path: p.clone(),
            how: "--binary directory scan".to_owned(),
        })
    }
}

/// `path` if it exists and its identity is `id`.
fn verified(path: &Path, id: &str, how: &'static str) -> Option<Found> {
    (elf_identity(path)? == id).then(|| Found {
        path: path.to_owned(),
        how: how.to_owned(),
    })
}

/// The identity of the ELF file at `path`; `None` for anything else (or
/// what cannot be read). Only what it takes is read: the magic, then the
/// build-ID notes through a mapping, which touches a few pages; the whole
/// file only for the content hash of an ELF without a build ID.
fn elf_identity(path: &Path) -> Option<String> {
    let file = File::open(path).ok()?;
    let mut magic = [0u8; 4];
    file.read_exact_at(&mut magic, 0).ok()?;
    if &magic != b"\x7fELF" {
        return None;
    }
    // SAFETY: read-only private mapping; see process::Binary::open.
    let data = unsafe { memmap2::Mmap::map(&file) }.ok()?;
    if let Some(id) = buildid::read(&data).preferred() {
        return Some(id.to_owned());
    }
    drop(data);
    let small = file.metadata().is_ok_and(|m| m.len() <= MAX_HASH_BYTES);
    small
        .then(|| buildid::content_hash_of_file(&file).ok())
        .flatten()
}

/// Identity of every ELF file under `dirs`, recursively. Symlinks are not
/// followed, so a loop cannot trap us.
fn scan(dirs: &[PathBuf]) -> HashMap<String, PathBuf> {
    let mut out = HashMap::new();
    let mut todo: Vec<PathBuf> = dirs.to_vec();
    while let Some(dir) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            let p = e.path();
            if ft.is_dir() {
                todo.push(p);
            } else if ft.is_file() {
                if let Some(id) = elf_identity(&p) {
                    out.entry(id).or_insert(p);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_by_each_layout_and_refuses_mismatches() {
        let exe = std::fs::read("/proc/self/exe").unwrap();
        let id = buildid::identity(&exe);
        let root = tempfile::tempdir().unwrap();

        // Not found anywhere.
        let mut l = Locator::new(vec![root.path().into()], vec![]);
        assert!(l.find(&id, "/usr/bin/app").is_none());

        // .build-id layout.
        let bid = root.path().join("dbg/.build-id").join(&id[..2]);
        std::fs::create_dir_all(&bid).unwrap();
        std::fs::write(bid.join(format!("{}.debug", &id[2..])), &exe).unwrap();
        let mut l = Locator::new(vec![root.path().join("dbg")], vec![]);
        assert_eq!(
            l.find(&id, "/usr/bin/app").unwrap().how,
            ".build-id/xx/rest.debug"
        );

        // <build_id>/<basename>.
        let pp = root.path().join("pp").join(&id);
        std::fs::create_dir_all(&pp).unwrap();
        std::fs::write(pp.join("app"), &exe).unwrap();
        let mut l = Locator::new(vec![], vec![root.path().join("pp")]);
        assert_eq!(
            l.find(&id, "/usr/bin/app").unwrap().how,
            "<build_id>/<basename>"
        );

        // Scan, with a decoy of the same name but other contents.
        let bin = root.path().join("bin/sub");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("app"), b"\x7fELF not the same file").unwrap();
        std::fs::write(bin.join("renamed"), &exe).unwrap();
        let mut l = Locator::new(vec![], vec![root.path().join("bin")]);
        let f = l.find(&id, "/usr/bin/app").unwrap();
        assert_eq!(f.path, bin.join("renamed"));

        // A file at the right place with the wrong build ID is refused.
        let wrong = root.path().join("wrong").join(&id);
        std::fs::create_dir_all(&wrong).unwrap();
        std::fs::write(wrong.join("app"), b"\x7fELF other").unwrap();
        let mut l = Locator::new(vec![], vec![root.path().join("wrong")]);
        assert!(l.find(&id, "/usr/bin/app").is_none());
    }

    /// Bytes this thread has read with read(2) and its kin; pages of a
    /// mapping that are touched do not count.
    fn bytes_read_by_this_thread() -> u64 {
        let io = std::fs::read_to_string("/proc/thread-self/io").unwrap();
        io.lines()
            .find_map(|l| l.strip_prefix("rchar: "))
            .unwrap()
            .parse()
            .unwrap()
    }

    /// A 64 MiB file that is not ELF, and big ELF files, are judged by
    /// their magic and notes: a few KiB read, not their whole contents.
    #[test]
    fn checks_magic_and_build_id_without_reading_whole_files() {
        let exe = std::fs::read("/proc/self/exe").unwrap();
        assert!(exe.len() > 4 << 20, "the test binary is too small to tell");
        let id = buildid::identity(&exe);
        let root = tempfile::tempdir().unwrap();
        let bin = root.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let big = File::create(bin.join("core.dump")).unwrap();
        big.set_len(64 << 20).unwrap();
        big.write_all_at(b"not an ELF file", 0).unwrap();
        std::fs::write(bin.join("other.so"), b"\x7fELF truncated").unwrap();
        std::fs::write(bin.join("app"), &exe).unwrap();
        let pp = root.path().join("pp").join(&id);
        std::fs::create_dir_all(&pp).unwrap();
        std::fs::write(pp.join("app"), &exe).unwrap();

        // <build_id>/<basename>: one candidate, verified.
        let before = bytes_read_by_this_thread();
        let mut l = Locator::new(vec![], vec![root.path().join("pp")]);
        let f = l.find(&id, "/usr/bin/app").unwrap();
        assert_eq!(f.how, "<build_id>/<basename>");
        let read = bytes_read_by_this_thread() - before;
        assert!(read < 64 << 10, "{read} bytes read to verify one file");

        // The scan of a directory: every file's magic, the ELF's notes.
        let before = bytes_read_by_this_thread();
        let mut l = Locator::new(vec![], vec![bin.clone()]);
        let f = l.find(&id, "/usr/bin/renamed").unwrap();
        assert_eq!(f.path, bin.join("app"));
        let read = bytes_read_by_this_thread() - before;
        assert!(
            read < 64 << 10,
            "{read} bytes read to scan {}",
            bin.display()
        );
    }
}
