//! Symbolization: file offsets and kernel addresses to functions and lines.
//!
//! Each unique (binary, offset) is resolved once, in batches per binary. Go
//! binaries go to our own `.gopclntab` reader ([`go`]); everything else, and
//! the C parts of cgo binaries, to blazesym ([`elf`]); kernel addresses to
//! kallsyms ([`kernel`]).

pub mod elf;
pub mod go;
pub mod kernel;

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

use std::collections::HashMap;

use crate::process::{Binary, BinaryKey};

/// Frames for one looked-up address; empty when nothing is known.
pub type Frames = Vec<Frame>;

/// Every symbolizer behind one front: callers hand it a binary and offsets
/// and need not know which format answers.
pub struct Symbolizer {
    elf: elf::ElfSymbolizer,
    kernel: Option<kernel::Kallsyms>,
    cache: HashMap<(BinaryKey, u64), Frames>,
}

impl Symbolizer {
    /// A symbolizer; `kernel` loads kallsyms for kernel frames.
    pub fn new(kernel: bool) -> Self {
        Symbolizer {
            elf: elf::ElfSymbolizer::new(),
            kernel: if kernel {
                kernel::Kallsyms::load()
            } else {
                None
            },
            cache: HashMap::new(),
        }
    }

    /// Resolves file offsets of `binary` (already adjusted for return
    /// addresses), one result per offset, each innermost frame first. Results
    /// are cached per (binary, offset), so repeated calls are cheap.
    pub fn symbolize(&mut self, binary: &Binary, offsets: &[u64]) -> Vec<Frames> {
        let todo: Vec<u64> = offsets
            .iter()
            .copied()
            .filter(|o| !self.cache.contains_key(&(binary.key, *o)))
            .collect();
        if !todo.is_empty() {
            let found = match binary.fd_path() {
                Some(path) => self.elf.symbolize(&path, &todo),
                None => vec![Vec::new(); todo.len()],
            };
            for (o, frames) in todo.into_iter().zip(found) {
                self.cache.insert((binary.key, o), frames);
            }
        }
        offsets
            .iter()
            .map(|o| {
                self.cache
                    .get(&(binary.key, *o))
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
