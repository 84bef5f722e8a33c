//! Finding `runtime.firstmoduledata` without symbols, for the text start
//! and `gofunc` base of stripped binaries.
//!
//! Facts (from Go's `runtime/symtab.go`, 1.16 through 1.27):
//!
//! * The moduledata starts with `pcHeader *pcHeader` (the table's address),
//!   then `funcnametab []byte` (pointer = table + funcnameOffset), then more
//!   slices; words 0..=21 are `pcHeader`, six slices (3 words each),
//!   `findfunctab`, `minpc`, `maxpc`, and word 22 is `text`. That prefix has
//!   not changed since 1.16.
//! * Later fields moved between releases: `gofunc` (the base of 1.18+
//!   funcdata offsets) is word 38 in 1.18–1.19, 40 after `covctrs` was added
//!   in 1.20, and 43 in 1.27. We therefore do not trust a position: each
//!   candidate word is checked against real inline trees (see
//!   `GoTable::resolve_gofunc`).
//! * The moduledata is in writable data; its pointers are link-time
//!   addresses. Go's own linker and GNU ld also store them in the file; a
//!   linker that leaves RELA targets zeroed only records them as
//!   `R_*_RELATIVE` addends, which we fall back to.

use super::bytes::word_at;
use super::elf::Image;

/// How many leading words of the moduledata we keep (covers every known
/// position of `gofunc`, with room for a few more fields).
pub(crate) const WORDS: usize = 64;
/// Index of `text`.
pub(crate) const TEXT: usize = 22;
/// Index of `minpc` (the first function's entry).
pub(crate) const MINPC: usize = 20;
/// Positions where `gofunc` has been seen, newest first.
pub(crate) const GOFUNC_KNOWN: [usize; 3] = [43, 40, 38];

/// The leading words of the moduledata.
#[derive(Clone, Debug)]
pub(crate) struct Moduledata {
    pub words: Vec<u64>,
}

impl Moduledata {
    /// Word `i`, or 0 if unknown.
    pub fn word(&self, i: usize) -> u64 {
        self.words.get(i).copied().unwrap_or(0)
    }
}

/// Finds the moduledata of the table at `table_vaddr` whose funcname table
/// is at offset `funcnametab`.
pub(crate) fn find(
    data: &[u8],
    img: &Image,
    table_vaddr: u64,
    funcnametab: usize,
) -> Option<Moduledata> {
    let names = table_vaddr.checked_add(u64::try_from(funcnametab).ok()?)?;
    if let Some(at) = scan_file(data, img, table_vaddr, names) {
        return read(data, img, at, false);
    }
    // The pointers may only exist as relocation addends.
    let relocs = img.relative_relocs(data, &|_, addend| addend == table_vaddr);
    let ptr = u64::from(img.ptr_size);
    relocs.iter().find_map(|&(place, _)| {
        let md = read(data, img, place, true)?;
        (md.word(1) == names)
            .then_some(md)
            .filter(|_| place.is_multiple_of(ptr))
    })
}

/// Scans writable segments for the `(pcHeader, funcnametab.ptr)` pair.
fn scan_file(data: &[u8], img: &Image, table_vaddr: u64, names: u64) -> Option<u64> {
    let ptr = usize::from(img.ptr_size);
    for seg in img.segments.iter().filter(|s| s.is_write()) {
        let Some(bytes) = img.read_to_segment_end(data, seg.vaddr) else {
            continue;
        };
        let mut off = 0;
        while off + 2 * ptr <= bytes.len() {
            if word_at(bytes, off, img.endian, img.ptr_size) == Some(table_vaddr)
                && word_at(bytes, off + ptr, img.endian, img.ptr_size) == Some(names)
            {
                return seg.vaddr.checked_add(u64::try_from(off).ok()?);
            }
            off += ptr;
        }
    }
    None
}

/// Reads the leading words at `at`, filling zero words from relocations
/// when `with_relocs` is set or any word is missing from the file.
fn read(data: &[u8], img: &Image, at: u64, with_relocs: bool) -> Option<Moduledata> {
    let ptr = u64::from(img.ptr_size);
    let addr = |i: usize| at.checked_add(ptr.checked_mul(u64::try_from(i).ok()?)?);
    let mut words: Vec<u64> = (0..WORDS)
        .map(|i| addr(i).and_then(|a| img.read_word(data, a)).unwrap_or(0))
        .collect();
    if with_relocs || words.get(TEXT) == Some(&0) {
        let end = addr(WORDS)?;
        for (place, addend) in img.relative_relocs(data, &|p, _| p >= at && p < end) {
            let i = usize::try_from((place - at) / ptr).ok()?;
            if (place - at).is_multiple_of(ptr) {
                if let Some(w) = words.get_mut(i).filter(|w| **w == 0) {
                    *w = addend;
                }
            }
        }
    }
    Some(Moduledata { words })
}
