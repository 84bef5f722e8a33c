//! ELF and DWARF symbolization through blazesym: symbol tables, DWARF line
//! tables with inlined functions, debug links, and Rust/C++ demangling.

use std::path::{Path, PathBuf};

use blazesym::symbolize::source::{Elf, Source};
use blazesym::symbolize::{CodeInfo, Input, Symbolized, Symbolizer};

use super::Frame;

/// Wraps one blazesym symbolizer; it caches parsed files by path.
pub struct ElfSymbolizer {
    inner: Symbolizer,
    /// Where debug files are looked for, the defaults included.
    debug_dirs: Vec<PathBuf>,
}

impl Default for ElfSymbolizer {
    fn default() -> Self {
        Self::new()
    }
}

impl ElfSymbolizer {
    /// Looks for debug links and build-ID debug files in the system's
    /// default places (`/usr/lib/debug`, `/lib/debug`).
    pub fn new() -> Self {
        Self::with_debug_dirs(&[])
    }

    /// Also looks in `dirs` (their `.build-id/` trees and the directories
    /// themselves) for the files that `.gnu_debuglink` names.
    pub fn with_debug_dirs(dirs: &[PathBuf]) -> Self {
        let mut all: Vec<PathBuf> = dirs.to_vec();
        all.extend(["/usr/lib/debug", "/lib/debug"].map(PathBuf::from));
        let inner = Symbolizer::builder()
            .enable_code_info(true)
            .enable_inlined_fns(true)
            .enable_demangling(true)
            .set_debug_dirs(Some(&all))
            .build();
        ElfSymbolizer {
            inner,
            debug_dirs: all,
        }
    }

    /// The debug directories searched, in order.
    pub fn debug_dirs(&self) -> &[PathBuf] {
        &self.debug_dirs
    }

    /// Symbolizes virtual addresses (as the ELF's own headers and symbol
    /// table number them) of the ELF at `path`. One entry per address,
    /// innermost frame first; empty when nothing was found. A file that
    /// cannot be read gets a warning (once) saying why.
    pub fn symbolize(&self, path: &Path, vaddrs: &[u64]) -> Vec<Vec<Frame>> {
        let src = Source::Elf(Elf::new(path));
        match self.inner.symbolize(&src, Input::VirtOffset(vaddrs)) {
            Ok(results) => results.into_iter().map(frames).collect(),
            Err(e) => {
                super::failures::warn_once(path, &format_args!("{e:#}"));
                vec![Vec::new(); vaddrs.len()]
            }
        }
    }
}

/// The ELF virtual address of file offset `offset`, in a mapping that
/// starts at file offset `mapping_offset`.
///
/// The loadable segment holding the offset answers directly. Separate
/// debug files (`objcopy --only-keep-debug`) keep every segment's address
/// but zero its file offset and size, so for them the executable segment is
/// taken as the one mapped: the mapping starts at that segment's page, and
/// within a segment addresses and offsets move together.
pub fn vaddr_of(data: &[u8], offset: u64, mapping_offset: u64) -> Option<u64> {
    use object::elf::{FileHeader64, PF_X, PT_LOAD};
    use object::read::elf::{FileHeader, ProgramHeader};
    use object::LittleEndian;

    let header = FileHeader64::<LittleEndian>::parse(data).ok()?;
    let endian = header.endian().ok()?;
    let phdrs = header.program_headers(endian, data).ok()?;
    let loads = || phdrs.iter().filter(|p| p.p_type(endian) == PT_LOAD);
    for p in loads() {
        let (start, size) = (p.p_offset(endian), p.p_filesz(endian));
        if size > 0 && start <= offset && offset - start < size {
            return Some(offset - start + p.p_vaddr(endian));
        }
    }
    let text = loads().find(|p| p.p_flags(endian) & PF_X != 0)?;
    let page_vaddr = text.p_vaddr(endian) & !0xfff;
    Some(page_vaddr + offset.checked_sub(mapping_offset)?)
}

/// Whether the ELF carries DWARF of its own: a `.debug_info` (or
/// compressed `.zdebug_info`) section with contents. Unstripped binaries
/// and separate debug files do; stripped binaries, and those that only
/// link to a debug file elsewhere, do not.
pub fn has_dwarf(data: &[u8]) -> bool {
    use object::elf::SHT_NOBITS;
    use object::read::elf::{ElfFile64, SectionHeader};
    use object::{LittleEndian, Object, ObjectSection};

    let Ok(elf) = ElfFile64::<LittleEndian>::parse(data) else {
        return false;
    };
    elf.sections().any(|s| {
        matches!(s.name(), Ok(".debug_info" | ".zdebug_info"))
            && s.elf_section_header().sh_type(LittleEndian) != SHT_NOBITS
            && s.size() > 0
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// The log lines written while `f` runs on this thread.
    fn logged(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || out.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = buf.0.lock().unwrap().clone();
        String::from_utf8(text).unwrap()
    }

    #[test]
    fn unreadable_files_are_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        let bogus = dir.path().join("not-an-elf");
        std::fs::write(&bogus, b"#!/bin/sh\necho this is no ELF file\n").unwrap();
        let sym = ElfSymbolizer::new();
        let log = logged(|| {
            for _ in 0..3 {
                assert_eq!(sym.symbolize(&bogus, &[0x1000, 0x2000]), vec![vec![]; 2]);
            }
        });
        assert_eq!(log.matches("cannot symbolize").count(), 1, "{log}");
        assert!(log.contains("WARN") && log.contains("not-an-elf"), "{log}");
    }
}
