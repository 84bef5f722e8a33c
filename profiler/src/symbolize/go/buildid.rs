//! Go build ID and Go version: identification that survives stripping.
//!
//! Facts:
//!
//! * The Go linker writes the build ID as an ELF note named `"Go"` with type
//!   4 (`ELF_NOTE_GOBUILDID_TAG`), in section `.note.go.buildid` and covered by
//!   a `PT_NOTE` segment, so it is found with or without section headers. On
//!   some platforms it is also (or only) at the start of the text as
//!   `\xff Go build ID: "<id>"\n \xff`.
//! * The version lives in the build info blob (`debug/buildinfo`): 16-byte
//!   aligned, in section `.go.buildinfo` (writable data). A 32-byte header:
//!   the 14-byte magic `\xff Go buildinf:`, pointer size, flags (bit 0: big
//!   endian, bit 1: strings inline). Since 1.18 the version follows the
//!   header inline as a varint-length-prefixed string; before, header words
//!   at 16 and 16+ptrsize point to Go string headers (pointer, length) of
//!   `runtime.buildVersion` and `runtime.modinfo`.
//! * `runtime.buildVersion` is also a symbol (a Go string header) when the
//!   symbol table is present.

use super::bytes::{find_aligned, slice_at, to_usize, u32_at, uvarint64, word_at, Endian};
use super::elf::Image;

/// Note name and type of the Go build ID note.
const NOTE_NAME: &[u8] = b"Go";
const NOTE_TYPE_BUILDID: u32 = 4;
/// Magic of the build info blob.
const BUILDINFO_MAGIC: &[u8] = b"\xff Go buildinf:";
/// Text-header form of the build ID.
const TEXT_BUILDID_PREFIX: &[u8] = b"\xff Go build ID: \"";
/// Upper bound for a version string; anything longer is corrupt.
const MAX_VERSION_LEN: u64 = 256;

/// One ELF note.
pub(crate) struct Note<'a> {
    pub name: &'a [u8],
    pub kind: u32,
    pub desc: &'a [u8],
}

/// Parses the notes in `b` (a note section or segment). Malformed trailing
/// data ends the iteration.
pub(crate) fn notes(b: &[u8], e: Endian, align: u64) -> impl Iterator<Item = Note<'_>> {
    let align = if align == 8 { 8usize } else { 4 };
    let pad = move |n: usize| n.checked_add(align - 1).map(|v| v / align * align);
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        let namesz = to_usize(u32_at(b, pos, e)?.into())?;
        let descsz = to_usize(u32_at(b, pos + 4, e)?.into())?;
        let kind = u32_at(b, pos + 8, e)?;
        let name_at = pos.checked_add(12)?;
        let name = slice_at(b, name_at, namesz)?;
        let desc_at = name_at.checked_add(pad(namesz)?)?;
        let desc = slice_at(b, desc_at, descsz)?;
        pos = desc_at.checked_add(pad(descsz)?)?;
        // Names are NUL-terminated and may be NUL-padded ("Go\0\0").
        let name = &name[..name.iter().position(|&c| c == 0).unwrap_or(name.len())];
        Some(Note { name, kind, desc })
    })
}

/// Whether `n` is the Go build ID note.
fn is_go_buildid(n: &Note<'_>) -> bool {
    n.name == NOTE_NAME && n.kind == NOTE_TYPE_BUILDID
}

/// Whether the image carries a Go build ID note (section or segment).
pub(crate) fn has_go_note(data: &[u8], img: &Image) -> bool {
    note_buildid(data, img).is_some()
}

/// The build ID from the note, searching sections first, then segments.
fn note_buildid<'a>(data: &'a [u8], img: &Image) -> Option<&'a [u8]> {
    let from_sections = img
        .sections
        .iter()
        .filter(|s| s.kind == object::elf::SHT_NOTE)
        .filter_map(|s| img.section_data(data, s).map(|b| (b, 4)));
    let from_segments = img.note_segments.iter().filter_map(|&(off, size, align)| {
        slice_at(data, to_usize(off)?, to_usize(size)?).map(|b| (b, align))
    });
    from_sections.chain(from_segments).find_map(|(b, align)| {
        notes(b, img.endian, align)
            .find(is_go_buildid)
            .map(|n| n.desc)
    })
}

/// The build ID from the text header form, in the first page of any
/// executable segment.
fn text_buildid<'a>(data: &'a [u8], img: &Image) -> Option<&'a [u8]> {
    img.segments.iter().filter(|s| s.is_exec()).find_map(|s| {
        let bytes = img.read_to_segment_end(data, s.vaddr)?;
        let head = bytes.get(..bytes.len().min(64 * 1024))?;
        let at = find_aligned(head, TEXT_BUILDID_PREFIX, 1)? + TEXT_BUILDID_PREFIX.len();
        let rest = head.get(at..)?;
        rest.get(..rest.iter().position(|&c| c == b'"')?)
    })
}

/// The Go build ID as text.
pub(crate) fn build_id(data: &[u8], img: &Image) -> Option<String> {
    let raw = note_buildid(data, img).or_else(|| text_buildid(data, img))?;
    let raw = raw.strip_suffix(b"\0").unwrap_or(raw);
    let s = std::str::from_utf8(raw).ok()?;
    (!s.is_empty()).then(|| s.to_owned())
}

/// The Go version (`runtime.buildVersion`), e.g. `go1.27.3`.
pub(crate) fn go_version(data: &[u8], img: &Image) -> Option<String> {
    let from_blob =
        buildinfo_blob(data, img).and_then(|(blob, _)| version_from_blob(data, img, blob));
    from_blob
        .or_else(|| version_from_symbol(data, img))
        .filter(|v| plausible_version(v))
}

/// Whether a string looks like a Go version (`go1.x`, `devel ...`).
fn plausible_version(v: &str) -> bool {
    v.starts_with("go") || v.starts_with("devel")
}

/// The build info blob: the `.go.buildinfo` section, or a 16-byte-aligned
/// magic in a writable segment. Returns the blob and its address.
pub(crate) fn buildinfo_blob<'a>(data: &'a [u8], img: &Image) -> Option<(&'a [u8], u64)> {
    if let Some(s) = img.section(".go.buildinfo") {
        if let Some(b) = img
            .section_data(data, s)
            .filter(|b| b.starts_with(BUILDINFO_MAGIC))
        {
            return Some((b, s.addr));
        }
    }
    img.segments.iter().filter(|s| s.is_write()).find_map(|s| {
        let bytes = img.read_to_segment_end(data, s.vaddr)?;
        // The segment starts page-aligned, so file and memory alignment agree.
        let skip = usize::try_from((16 - s.vaddr % 16) % 16).ok()?;
        let at = skip.checked_add(find_aligned(bytes.get(skip..)?, BUILDINFO_MAGIC, 16)?)?;
        Some((
            bytes.get(at..)?,
            s.vaddr.checked_add(u64::try_from(at).ok()?)?,
        ))
    })
}

/// Decodes the version from a build info blob (both header formats).
fn version_from_blob(data: &[u8], img: &Image, blob: &[u8]) -> Option<String> {
    let ptr_size = *blob.get(14)?;
    let flags = *blob.get(15)?;
    if flags & 2 != 0 {
        let mut pos = 32;
        let len = uvarint64(blob, &mut pos)?;
        if len > MAX_VERSION_LEN {
            return None;
        }
        let s = slice_at(blob, pos, to_usize(len)?)?;
        return String::from_utf8(s.to_vec()).ok();
    }
    let e = if flags & 1 != 0 {
        Endian::Big
    } else {
        Endian::Little
    };
    let str_header = word_at(blob, 16, e, ptr_size)?;
    go_string(data, img, str_header, e, ptr_size)
}

/// The version from the `runtime.buildVersion` symbol.
fn version_from_symbol(data: &[u8], img: &Image) -> Option<String> {
    let sym = img
        .symbols(data, &["runtime.buildVersion"])
        .into_iter()
        .next()??;
    go_string(data, img, sym.addr, img.endian, img.ptr_size)
}

/// Reads a Go string header (pointer, length) at `at` and its bytes.
fn go_string(data: &[u8], img: &Image, at: u64, e: Endian, ptr_size: u8) -> Option<String> {
    let hdr = img.read(data, at, 2 * usize::from(ptr_size))?;
    let ptr = word_at(hdr, 0, e, ptr_size)?;
    let len = word_at(hdr, usize::from(ptr_size), e, ptr_size)?;
    if len > MAX_VERSION_LEN {
        return None;
    }
    let s = img.read(data, ptr, to_usize(len)?)?;
    String::from_utf8(s.to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_notes_and_stops_on_garbage() {
        let mut b = Vec::new();
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&5u32.to_le_bytes());
        b.extend_from_slice(&4u32.to_le_bytes());
        b.extend_from_slice(b"Go\0\0abcde\0\0\0");
        b.extend_from_slice(&[0xff; 7]);
        let all: Vec<_> = notes(&b, Endian::Little, 4).collect();
        assert_eq!(all.len(), 1);
        assert!(is_go_buildid(&all[0]));
        assert_eq!(all[0].desc, b"abcde");
    }
}
