//! Bounds-checked, endian-aware reads from untrusted bytes.
//!
//! Everything in a Go binary's tables is attacker- or corruption-controlled
//! input, so every read here returns `None` instead of panicking when it would
//! run past the end. Offsets are `usize` into the slice being read; callers
//! convert table values with [`to_usize`] so 32-bit hosts and huge values fail
//! the same checked way.

/// Byte order of the table (taken from the pclntab magic, which is chosen so
/// that reading it in the wrong order never yields a valid magic).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Endian {
    Little,
    Big,
}

/// Converts a table value to an offset, failing instead of truncating.
pub(crate) fn to_usize(v: u64) -> Option<usize> {
    usize::try_from(v).ok()
}

/// `len` bytes at `off`, if they are all inside `b`.
pub(crate) fn slice_at(b: &[u8], off: usize, len: usize) -> Option<&[u8]> {
    b.get(off..off.checked_add(len)?)
}

/// A fixed-size array at `off`.
fn array_at<const N: usize>(b: &[u8], off: usize) -> Option<[u8; N]> {
    slice_at(b, off, N)?.try_into().ok()
}

/// One byte at `off`.
pub(crate) fn u8_at(b: &[u8], off: usize) -> Option<u8> {
    b.get(off).copied()
}

/// A 16-bit value at `off`.
pub(crate) fn u16_at(b: &[u8], off: usize, e: Endian) -> Option<u16> {
    let a = array_at::<2>(b, off)?;
    Some(match e {
        Endian::Little => u16::from_le_bytes(a),
        Endian::Big => u16::from_be_bytes(a),
    })
}

/// A 32-bit value at `off`.
pub(crate) fn u32_at(b: &[u8], off: usize, e: Endian) -> Option<u32> {
    let a = array_at::<4>(b, off)?;
    Some(match e {
        Endian::Little => u32::from_le_bytes(a),
        Endian::Big => u32::from_be_bytes(a),
    })
}

/// A 64-bit value at `off`.
pub(crate) fn u64_at(b: &[u8], off: usize, e: Endian) -> Option<u64> {
    let a = array_at::<8>(b, off)?;
    Some(match e {
        Endian::Little => u64::from_le_bytes(a),
        Endian::Big => u64::from_be_bytes(a),
    })
}

/// A pointer-sized (`size` is 4 or 8) value at `off`, widened to u64.
pub(crate) fn word_at(b: &[u8], off: usize, e: Endian, size: u8) -> Option<u64> {
    match size {
        4 => u32_at(b, off, e).map(u64::from),
        8 => u64_at(b, off, e),
        _ => None,
    }
}

/// The NUL-terminated string starting at `off` (without the NUL). A string
/// that runs to the end of `b` without a terminator is treated as corrupt.
pub(crate) fn cstr_at(b: &[u8], off: usize) -> Option<&[u8]> {
    let rest = b.get(off..)?;
    let len = rest.iter().position(|&c| c == 0)?;
    rest.get(..len)
}

/// Reads an unsigned LEB128 varint of at most 32 bits (5 bytes), advancing
/// `pos`. Longer or truncated encodings are corrupt. This is the encoding of
/// Go's pc-value tables.
pub(crate) fn uvarint32(b: &[u8], pos: &mut usize) -> Option<u32> {
    let mut v: u32 = 0;
    for i in 0..5u32 {
        let byte = u8_at(b, *pos)?;
        *pos += 1;
        v |= u32::from(byte & 0x7f).checked_shl(7 * i)?;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Reads an unsigned LEB128 varint of at most 64 bits (10 bytes), advancing
/// `pos`. Used for the length prefixes in `.go.buildinfo`.
pub(crate) fn uvarint64(b: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v: u64 = 0;
    for i in 0..10u32 {
        let byte = u8_at(b, *pos)?;
        *pos += 1;
        v |= u64::from(byte & 0x7f).checked_shl(7 * i)?;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Position of `needle` in `hay` at an offset that is a multiple of `align`
/// (1 = anywhere). A plain scan: this only runs on the rare fallback paths
/// where section headers are missing.
pub(crate) fn find_aligned(hay: &[u8], needle: &[u8], align: usize) -> Option<usize> {
    let first = *needle.first()?;
    let align = align.max(1);
    let last_start = hay.len().checked_sub(needle.len())?;
    let mut i = 0;
    while i <= last_start {
        if hay[i] == first && hay[i..].starts_with(needle) {
            return Some(i);
        }
        i += align;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_checked() {
        let b = [1u8, 2, 3, 4, 5];
        assert_eq!(u32_at(&b, 0, Endian::Little), Some(0x0403_0201));
        assert_eq!(u32_at(&b, 1, Endian::Big), Some(0x0203_0405));
        assert_eq!(u32_at(&b, 2, Endian::Big), None);
        assert_eq!(u32_at(&b, usize::MAX, Endian::Big), None);
        assert_eq!(word_at(&b, 0, Endian::Little, 3), None);
        assert_eq!(cstr_at(b"ab\0c", 0), Some(&b"ab"[..]));
        assert_eq!(cstr_at(b"abc", 0), None);
        assert_eq!(cstr_at(b"abc", 9), None);
    }

    #[test]
    fn varints() {
        let mut p = 0;
        assert_eq!(uvarint32(&[0xe5, 0x8e, 0x26], &mut p), Some(624_485));
        assert_eq!(p, 3);
        let mut p = 0;
        assert_eq!(uvarint32(&[0x80, 0x80], &mut p), None);
        let mut p = 0;
        assert_eq!(uvarint32(&[0xff; 6], &mut p), None);
        let mut p = 0;
        assert_eq!(uvarint64(&[0x96, 0x01], &mut p), Some(150));
    }

    #[test]
    fn aligned_search() {
        let hay = b"xxxxabcdabcd";
        assert_eq!(find_aligned(hay, b"abcd", 8), Some(8));
        assert_eq!(find_aligned(hay, b"abcd", 1), Some(4));
        assert_eq!(find_aligned(hay, b"zz", 1), None);
        assert_eq!(find_aligned(b"a", b"abc", 1), None);
    }
}
