//! Finding the pclntab in an ELF file, and the text address its 1.18+
//! function entries are relative to.
//!
//! The table is looked for three ways, cheapest and most certain first:
//!
//! 1. the `.gopclntab` section (`.data.rel.ro.gopclntab` in Go-linked PIEs);
//! 2. the `runtime.pclntab` symbol (`runtime.epclntab` bounds it), for files
//!    whose sections were renamed or merged;
//! 3. a scan of the loaded segments for a plausible header, for files without
//!    section headers.
//!
//! A file with section headers but no Go marker at all (no Go section, no Go
//! build ID note) is taken to be non-Go without searching further, so
//! opening ordinary C/C++/Rust binaries costs only the header parse.

use super::buildid;
use super::bytes::to_usize;
use super::elf::Image;
use super::funcs::TableView;
use super::header::{Header, Version, MAGICS};
use super::moduledata::{self, Moduledata};
use super::GoError;

/// Where the table is.
#[derive(Clone, Debug)]
pub(crate) struct Located {
    /// File offset of the header.
    pub offset: usize,
    /// Length of the table (may run to the end of its segment when the exact
    /// end is unknown).
    pub len: usize,
    /// Virtual address of the header.
    pub vaddr: u64,
}

/// Section names the linker gives the table.
const SECTIONS: [&str; 2] = [".gopclntab", ".data.rel.ro.gopclntab"];
/// Section names only Go binaries have.
const GO_SECTIONS: [&str; 5] = [
    ".gopclntab",
    ".data.rel.ro.gopclntab",
    ".gosymtab",
    ".go.buildinfo",
    ".note.go.buildid",
];

/// Finds and parses the table. `Ok(None)`: not a Go binary.
pub(crate) fn locate(data: &[u8], img: &Image) -> Result<Option<(Located, Header)>, GoError> {
    for name in SECTIONS {
        if let Some(s) = img.section(name) {
            let bytes = img
                .section_data(data, s)
                .ok_or(GoError::Truncated("pclntab section"))?;
            let found = Located {
                offset: to_usize(s.offset).unwrap_or(0),
                len: bytes.len(),
                vaddr: s.addr,
            };
            let header = Header::parse(bytes)?
                .ok_or(GoError::Corrupt("pclntab section has no known header"))?;
            return Ok(Some((found, header)));
        }
    }
    let has_sections = !img.sections.is_empty();
    if has_sections && !has_go_markers(data, img) {
        return Ok(None);
    }
    if let Some(found) = by_symbol(data, img)? {
        return Ok(Some(found));
    }
    Ok(scan(data, img))
}

/// Whether anything besides the table says "Go".
fn has_go_markers(data: &[u8], img: &Image) -> bool {
    GO_SECTIONS.iter().any(|n| img.section(n).is_some()) || buildid::has_go_note(data, img)
}

/// Step 2: the `runtime.pclntab` symbol.
pub(super) fn by_symbol(data: &[u8], img: &Image) -> Result<Option<(Located, Header)>, GoError> {
    let syms = img.symbols(data, &["runtime.pclntab", "runtime.epclntab"]);
    let (Some(Some(start)), end) = (syms.first().copied(), syms.get(1).copied().flatten()) else {
        return Ok(None);
    };
    let rest = img
        .read_to_segment_end(data, start.addr)
        .ok_or(GoError::Truncated("pclntab symbol"))?;
    let len = match end.map(|e| e.addr.saturating_sub(start.addr)) {
        Some(n) if n > 0 => to_usize(n).unwrap_or(usize::MAX).min(rest.len()),
        _ => rest.len(),
    };
    let bytes = rest.get(..len).unwrap_or(rest);
    let header =
        Header::parse(bytes)?.ok_or(GoError::Corrupt("runtime.pclntab has no known header"))?;
    let offset = img.offset_of(start.addr).unwrap_or(0);
    Ok(Some((
        Located {
            offset,
            len,
            vaddr: start.addr,
        },
        header,
    )))
}

/// Step 3: scan loaded segments for a header whose function table is sane.
pub(super) fn scan(data: &[u8], img: &Image) -> Option<(Located, Header)> {
    for seg in &img.segments {
        let Some(bytes) = img.read_to_segment_end(data, seg.vaddr) else {
            continue;
        };
        let mut off = 0usize;
        while let Some(at) = next_magic(bytes, off) {
            if let Some(found) = try_candidate(img, bytes, at, seg.vaddr) {
                return Some(found);
            }
            off = at + 4;
        }
    }
    None
}

/// Next 4-aligned offset at or after `from` holding a pclntab magic in
/// either byte order.
fn next_magic(bytes: &[u8], from: usize) -> Option<usize> {
    let start = from.checked_add(3)? / 4 * 4;
    let hit = bytes.get(start..)?.chunks_exact(4).position(|w| {
        // All magics have 0xff in their middle bytes in both byte orders.
        if w[1] != 0xff || w[2] != 0xff {
            return false;
        }
        let w = [w[0], w[1], w[2], w[3]];
        MAGICS.contains(&u32::from_le_bytes(w)) || MAGICS.contains(&u32::from_be_bytes(w))
    })?;
    start.checked_add(hit * 4)
}

/// Validates a scanned candidate header at `at` in a segment starting at
/// `seg_vaddr`.
fn try_candidate(
    img: &Image,
    seg_bytes: &[u8],
    at: usize,
    seg_vaddr: u64,
) -> Option<(Located, Header)> {
    let bytes = seg_bytes.get(at..)?;
    if !Header::plausible(bytes) {
        return None;
    }
    let header = Header::parse(bytes).ok()??;
    let vaddr = seg_vaddr.checked_add(u64::try_from(at).ok()?)?;
    // Text start is not known yet; entry ordering does not depend on it.
    let view = TableView {
        bytes,
        h: &header,
        text_start: 0,
        vaddr,
    };
    if !view.looks_sane() {
        return None;
    }
    let offset = img.offset_of(vaddr)?;
    Some((
        Located {
            offset,
            len: bytes.len(),
            vaddr,
        },
        header,
    ))
}

/// The address 1.18+ entry offsets are relative to (`runtime.text`).
///
/// Candidates, in order: the header's `textStart` word (1.18–1.25; 0 in newer
/// toolchains or when left for a dynamic relocation), `moduledata.text`, the
/// `runtime.text` symbol, the `.text` section. The section is last because
/// with external linking `runtime.text` need not be its first byte. A
/// candidate must place the first and last entries in executable memory.
pub(crate) fn text_start(
    data: &[u8],
    img: &Image,
    view: &TableView<'_>,
    md: impl FnOnce() -> Option<Moduledata>,
) -> Result<u64, GoError> {
    if view.h.version < Version::V118 {
        return Ok(0);
    }
    let first = view
        .raw_entry(0)
        .ok_or(GoError::Truncated("function table"))?;
    let last = view
        .raw_entry(view.h.nfunc)
        .ok_or(GoError::Truncated("function table"))?;
    let fits = |t: u64| {
        t != 0
            && t.checked_add(first).is_some_and(|a| img.in_exec(a))
            && t.checked_add(last).is_some_and(|a| img.in_exec(a))
    };
    if fits(view.h.text_start_field) {
        return Ok(view.h.text_start_field);
    }
    if let Some(md) = md() {
        let t = md.word(moduledata::TEXT);
        let minpc_ok = md.word(moduledata::MINPC) == 0
            || t.checked_add(first) == Some(md.word(moduledata::MINPC));
        if fits(t) && minpc_ok {
            return Ok(t);
        }
    }
    let sym = img
        .symbols(data, &["runtime.text"])
        .into_iter()
        .next()
        .flatten();
    if let Some(t) = sym.map(|s| s.addr).filter(|&t| fits(t)) {
        return Ok(t);
    }
    img.section(".text")
        .map(|s| s.addr)
        .filter(|&t| fits(t))
        .ok_or(GoError::NoTextStart)
}
