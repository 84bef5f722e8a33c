//! Symbolization: file offsets and kernel addresses to functions and lines.
//!
//! Each unique (binary, offset) is resolved once, in batches per binary. Go
//! binaries go to our own `.gopclntab` reader ([`go`]); everything else, and
//! the C parts of cgo binaries, to blazesym ([`elf`]); kernel addresses to
//! kallsyms ([`kernel`]), or offline to a vmlinux through blazesym once the
//! KASLR slide is taken off ([`vmlinux`]). Binaries with no debug info on
//! this machine can be named from a debuginfod server ([`debuginfod`]).

mod contain;
pub mod debuginfod;
pub mod elf;
mod failures;
pub mod go;
pub mod kernel;
pub mod locate;
pub mod vmlinux;

/// One function at one source position. A location's frames come innermost
/// first; all but the last are inlined into the last.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub function: String,
    /// Source file, empty when unknown.
    pub file: String,
    /// Source line, 0 when unknown.
    pub line: u32,
    /// First line of the function, 0 when unknown.
    pub start_line: u32,
    /// Inlined into the next frame.
    pub inlined: bool,
}

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::process::Binary;

impl From<go::GoFrame> for Frame {
    fn from(f: go::GoFrame) -> Frame {
        Frame {
            function: f.function,
            file: f.file,
            line: f.line,
            start_line: f.start_line,
            inlined: f.inlined,
        }
    }
}

/// Frames for one looked-up address; empty when nothing is known.
pub type Frames = Vec<Frame>;

/// An ELF file to read symbols from.
#[derive(Clone)]
pub struct SymbolFile {
    /// A path that opens the file. It is also the cache key, so it must
    /// name one file for the symbolizer's lifetime (`/proc/self/fd/N` of a
    /// file we hold open does).
    pub path: PathBuf,
    /// The file's bytes.
    pub data: Arc<memmap2::Mmap>,
    /// The path as a user knows it (the one the process saw), for messages.
    pub name: String,
}

impl SymbolFile {
    /// The open file behind a live process's binary, if it could be opened.
    pub fn from_binary(binary: &Binary) -> Option<SymbolFile> {
        Some(SymbolFile {
            path: binary.fd_path()?,
            data: binary.data.clone()?,
            name: binary.path.clone(),
        })
    }

    /// Opens and maps a file.
    pub fn open(path: &Path) -> std::io::Result<SymbolFile> {
        let f = std::fs::File::open(path)?;
        // SAFETY: read-only private mapping; see process::Binary::open.
        let data = unsafe { memmap2::Mmap::map(&f) }?;
        Ok(SymbolFile {
            path: path.to_owned(),
            data: Arc::new(data),
            name: path.display().to_string(),
        })
    }

    /// The ELF virtual address of a file offset inside a mapping that
    /// starts at `mapping_offset` (see [`elf::vaddr_of`]).
    pub fn vaddr(&self, offset: u64, mapping_offset: u64) -> Option<u64> {
        elf::vaddr_of(&self.data, offset, mapping_offset)
    }
}

/// Every symbolizer behind one front: callers hand it a file and addresses
/// and need not know which format answers.
pub struct Symbolizer {
    elf: elf::ElfSymbolizer,
    kernel: Option<kernel::Kallsyms>,
    /// Go tables by file; `None` for files that are not Go binaries.
    go: HashMap<PathBuf, Option<go::GoTable>>,
    cache: HashMap<(PathBuf, u64), Frames>,
    /// Files a symbolizer panicked on: never looked at again.
    unsymbolizable: HashSet<PathBuf>,
    /// Opt-in: debug files fetched by build ID for binaries without any here.
    debuginfod: Option<Fetcher>,
}

/// The debuginfod client and, per binary, the debug file it gave (`None`:
/// none wanted or none found), so each binary is looked up once.
struct Fetcher {
    client: debuginfod::Debuginfod,
    files: HashMap<PathBuf, Option<SymbolFile>>,
}

impl Symbolizer {
    /// A symbolizer; `kernel` loads kallsyms for kernel frames.
    pub fn new(kernel: bool) -> Self {
        Self::with_parts(
            elf::ElfSymbolizer::new(),
            if kernel {
                kernel::Kallsyms::load()
            } else {
                None
            },
        )
    }

    /// A symbolizer with a given ELF symbolizer (debug directories) and
    /// kernel symbol table, for offline use.
    pub fn with_parts(elf: elf::ElfSymbolizer, kernel: Option<kernel::Kallsyms>) -> Self {
        Symbolizer {
            elf,
            kernel,
            go: HashMap::new(),
            cache: HashMap::new(),
            debuginfod: None,
            unsymbolizable: HashSet::new(),
        }
    }

    /// Names binaries that have no DWARF here (and no debug file under
    /// the debug directories' `.build-id/`) from the debug file a
    /// debuginfod server has for their build ID; Go binaries are left to
    /// `.gopclntab`. Fetching happens on the first [`Self::symbolize_file`]
    /// of each such binary, and says per binary where names came from.
    pub fn with_debuginfod(mut self, client: Option<debuginfod::Debuginfod>) -> Self {
        self.debuginfod = client.map(|client| Fetcher {
            client,
            files: HashMap::new(),
        });
        self
    }

    /// Whether `file` is a Go binary, its table parsed on first use.
    fn is_go(&mut self, file: &SymbolFile) -> bool {
        self.go
            .entry(file.path.clone())
            .or_insert_with(|| go::GoTable::parse_mapped(file.data.clone()).ok().flatten())
            .is_some()
    }

    /// The GNU build ID to ask debuginfod about for `file`, if nothing
    /// here names its frames with lines (see [`debuginfod::wanted`]); never
    /// for Go binaries, which `.gopclntab` names in full.
    pub fn wants_debug_file(&mut self, file: &SymbolFile) -> Option<String> {
        if self.is_go(file) {
            return None;
        }
        debuginfod::wanted(file, self.elf.debug_dirs())
    }

    /// The debuginfod file to read instead of `file`, if one is wanted
    /// and was found.
    fn debug_file_for(&mut self, file: &SymbolFile) -> Option<SymbolFile> {
        if let Some(known) = self.debuginfod.as_ref()?.files.get(&file.path) {
            return known.clone();
        }
        let wanted = self.wants_debug_file(file);
        let fetcher = self.debuginfod.as_mut()?;
        let found = wanted.and_then(|id| {
            let lookup = fetcher.client.find(&id);
            let opened = lookup
                .found
                .as_ref()
                .map(|f| (f, SymbolFile::open(&f.path)));
            match opened {
                Some((f, Ok(opened))) => {
                    tracing::info!(
                        "{} [{id}]: names from {} ({})",
                        file.name,
                        opened.path.display(),
                        f.how()
                    );
                    Some(opened)
                }
                Some((f, Err(e))) => {
                    tracing::warn!(
                        "{} [{id}]: cannot read {}: {e}",
                        file.name,
                        f.path.display()
                    );
                    None
                }
                None => {
                    let why = lookup
                        .explain()
                        .unwrap_or_else(|| "debuginfod: not found".into());
                    tracing::info!("{} [{id}]: {why}", file.name);
                    None
                }
            }
        });
        fetcher.files.insert(file.path.clone(), found.clone());
        found
    }

    /// Resolves ELF virtual addresses of `file` (return addresses already
    /// moved back into their call), one result per address, each innermost
    /// frame first. Results are cached per (file, address), so repeated
    /// calls are cheap. A file a symbolizer panics on gets no names, now or
    /// later (see [`Symbolizer::is_unsymbolizable`]), and one warning.
    pub fn symbolize_file(&mut self, file: &SymbolFile, vaddrs: &[u64]) -> Vec<Frames> {
        if self.unsymbolizable.contains(&file.path) {
            return vec![Frames::new(); vaddrs.len()];
        }
        match contain::catch(|| self.symbolize_file_unguarded(file, vaddrs)) {
            Ok(found) => found,
            Err(panic) => {
                failures::warn_once(
                    &file.path,
                    &format_args!("the symbolizer panicked ({panic})"),
                );
                self.unsymbolizable.insert(file.path.clone());
                vec![Frames::new(); vaddrs.len()]
            }
        }
    }

    /// Whether a symbolizer panicked on the file at `path`, so that it is
    /// no longer looked at.
    pub fn is_unsymbolizable(&self, path: &Path) -> bool {
        self.unsymbolizable.contains(path)
    }

    /// [`Symbolizer::symbolize_file`] without the guard.
    fn symbolize_file_unguarded(&mut self, file: &SymbolFile, vaddrs: &[u64]) -> Vec<Frames> {
        // A debug file has the binary's addresses, so the same lookups
        // work on it.
        let debug = self.debug_file_for(file);
        let file = debug.as_ref().unwrap_or(file);
        let todo: Vec<u64> = vaddrs
            .iter()
            .copied()
            .filter(|a| !self.cache.contains_key(&(file.path.clone(), *a)))
            .collect();
        if !todo.is_empty() {
            // Go text goes to the .gopclntab reader, which names stripped
            // binaries too; everything else (and the C of cgo binaries) to
            // the ELF/DWARF symbolizer.
            let table = self
                .go
                .entry(file.path.clone())
                .or_insert_with(|| go::GoTable::parse_mapped(file.data.clone()).ok().flatten());
            let mut rest = Vec::with_capacity(todo.len());
            for a in todo {
                match table.as_ref().filter(|t| t.contains(a)) {
                    Some(t) => {
                        let frames = t.lookup(a).unwrap_or_default();
                        let frames = frames.into_iter().map(Frame::from).collect();
                        self.cache.insert((file.path.clone(), a), frames);
                    }
                    None => rest.push(a),
                }
            }
            if !rest.is_empty() {
                let found = self.elf.symbolize(&file.path, &rest);
                for (a, frames) in rest.into_iter().zip(found) {
                    self.cache.insert((file.path.clone(), a), frames);
                }
            }
        }
        vaddrs
            .iter()
            .map(|a| {
                self.cache
                    .get(&(file.path.clone(), *a))
                    .cloned()
                    .unwrap_or_default()
            })
            .collect()
    }

    /// The kernel function containing `addr`.
    pub fn kernel(&self, addr: u64) -> Option<Frame> {
        self.kernel.as_ref()?.lookup(addr)
    }

    /// The span of kernel text, for the `[kernel.kallsyms]` mapping.
    pub fn kernel_range(&self) -> Option<(u64, u64)> {
        self.kernel.as_ref()?.range()
    }
}
