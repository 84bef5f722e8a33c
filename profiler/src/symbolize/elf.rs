//! ELF and DWARF symbolization through blazesym: symbol tables, DWARF line
//! tables with inlined functions, debug links, and Rust/C++ demangling.

use std::path::Path;

use blazesym::symbolize::source::{Elf, Source};
use blazesym::symbolize::{CodeInfo, Input, Symbolized, Symbolizer};

use super::Frame;

/// Wraps one blazesym symbolizer; it caches parsed files by path.
pub struct ElfSymbolizer {
    inner: Symbolizer,
}

impl Default for ElfSymbolizer {
    fn default() -> Self {
        Self::new()
    }
}

impl ElfSymbolizer {
    pub fn new() -> Self {
        let inner = Symbolizer::builder()
            .enable_code_info(true)
            .enable_inlined_fns(true)
            .enable_demangling(true)
            .build();
        ElfSymbolizer { inner }
    }

    /// Symbolizes file offsets of the ELF at `path`. The result has one entry
    /// per offset, innermost frame first; empty when nothing was found.
    pub fn symbolize(&self, path: &Path, offsets: &[u64]) -> Vec<Vec<Frame>> {
        let src = Source::Elf(Elf::new(path));
        match self.inner.symbolize(&src, Input::FileOffset(offsets)) {
            Ok(results) => results.into_iter().map(frames).collect(),
            Err(_) => vec![Vec::new(); offsets.len()],
        }
    }
}

/// blazesym reports the physical function with the location of the first
/// inlined call, then the inlined functions outermost first, each with the
/// location inside it. pprof wants innermost first.
fn frames(s: Symbolized<'_>) -> Vec<Frame> {
    let Symbolized::Sym(sym) = s else {
        return Vec::new();
    };
    let (file, line) = location(sym.code_info.as_deref());
    let mut out: Vec<Frame> = sym
        .inlined
        .iter()
        .rev()
        .map(|f| {
            let (file, line) = location(f.code_info.as_ref());
            Frame {
                function: f.name.to_string(),
                file,
                line,
                start_line: 0,
                inlined: true,
            }
        })
        .collect();
    out.push(Frame {
        function: sym.name.to_string(),
        file,
        line,
        start_line: 0,
        inlined: false,
    });
    out
}

fn location(ci: Option<&CodeInfo<'_>>) -> (String, u32) {
    match ci {
        Some(ci) => (
            ci.to_path().to_string_lossy().into_owned(),
            ci.line.unwrap_or(0),
        ),
        None => (String::new(), 0),
    }
}
