//! The pclntab header (`runtime.pcHeader`): version, byte order, and where
//! the sub-tables live.
//!
//! Facts (from Go's `debug/gosym` and `runtime/symtab.go`):
//!
//! * Every version starts with a 4-byte magic, two zero pad bytes, the PC
//!   quantum (minimum instruction size: 1, 2 or 4) and the pointer size
//!   (4 or 8). The magic also tells the byte order, because none of the magics
//!   reads as another one in the opposite order.
//! * Go 1.2–1.15 (`0xfffffffb`): one flat table. `nfunc` (a word) follows the
//!   header, then the function table of `(entry, funcoff)` word pairs plus an
//!   end PC, then a u32 offset of the file table. Every offset (names, pc-value
//!   tables, `_func` records) is relative to the start of the whole table.
//! * Go 1.16–1.17 (`0xfffffffa`): the header holds words `nfunc, nfiles`,
//!   then the offsets of the funcname, cu, file, pc-value and func tables.
//! * Go 1.18+ (`0xfffffff0`, and `0xfffffff1` from 1.20): as 1.16 with a
//!   `textStart` word inserted after `nfiles`; function entries become u32
//!   offsets from the start of the text. Go 1.26+ no longer fills `textStart`
//!   (it would need a relocation), so it may be 0: see `locate::text_start`.

use super::bytes::{to_usize, u32_at, u8_at, word_at, Endian};
use super::GoError;

/// Table format generation, named after the first Go release using it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Version {
    /// Go 1.2–1.15.
    V12,
    /// Go 1.16–1.17.
    V116,
    /// Go 1.18–1.19.
    V118,
    /// Go 1.20 and later.
    V120,
}

impl Version {
    /// The version a magic value stands for.
    fn from_magic(m: u32) -> Option<Version> {
        Some(match m {
            0xffff_fffb => Version::V12,
            0xffff_fffa => Version::V116,
            0xffff_fff0 => Version::V118,
            0xffff_fff1 => Version::V120,
            _ => return None,
        })
    }
}

/// The four magics, in both byte orders, for scanning raw bytes.
pub(crate) const MAGICS: [u32; 4] = [0xffff_fffb, 0xffff_fffa, 0xffff_fff0, 0xffff_fff1];

/// A parsed header. All offsets are relative to the start of the table.
#[derive(Clone, Debug)]
pub(crate) struct Header {
    pub version: Version,
    pub endian: Endian,
    pub quantum: u8,
    pub ptr_size: u8,
    pub nfunc: usize,
    /// The `textStart` word (1.18+ only; 0 when the linker did not fill it).
    pub text_start_field: u64,
    /// Function names (`_func.nameOff` is relative to this).
    pub funcnametab: usize,
    /// Per-compilation-unit file index table (1.16+; unused for 1.2).
    pub cutab: usize,
    /// File names: 1.16+ a blob of C strings; 1.2 a u32 array whose first
    /// element is the count and whose entries are table offsets of names.
    pub filetab: usize,
    /// Number of entries of the 1.2 file table (including the count slot).
    pub nfiletab: usize,
    /// Base of pc-value table offsets (`pcfile`, `pcln`, `pcdata[i]`).
    pub pctab: usize,
    /// Base of `funcoff` values (where `_func` records are found).
    pub funcdata: usize,
    /// Start of the function table.
    pub functab: usize,
    /// Size in bytes of one functab field: 4 for 1.18+, else the pointer size.
    pub field_size: usize,
}

impl Header {
    /// Whether `b` starts with something that looks like a pcHeader (magic,
    /// pad, quantum and pointer size all sane). Cheap; used when scanning.
    pub fn plausible(b: &[u8]) -> bool {
        Self::probe(b).is_some()
    }

    /// Version and byte order if the first 8 bytes look like a header.
    fn probe(b: &[u8]) -> Option<(Version, Endian)> {
        let (le, be) = (u32_at(b, 0, Endian::Little)?, u32_at(b, 0, Endian::Big)?);
        let (version, endian) = match (Version::from_magic(le), Version::from_magic(be)) {
            (Some(v), _) => (v, Endian::Little),
            (None, Some(v)) => (v, Endian::Big),
            (None, None) => return None,
        };
        let pads_ok = u8_at(b, 4)? == 0 && u8_at(b, 5)? == 0;
        let quantum_ok = matches!(u8_at(b, 6)?, 1 | 2 | 4);
        let ptr_ok = matches!(u8_at(b, 7)?, 4 | 8);
        (pads_ok && quantum_ok && ptr_ok).then_some((version, endian))
    }

    /// Parses and bounds-checks the header of `table` (the whole pclntab).
    ///
    /// `Ok(None)` if there is no recognizable magic; `Err` if the magic is
    /// there but the header points outside the table.
    pub fn parse(table: &[u8]) -> Result<Option<Header>, GoError> {
        let Some((version, endian)) = Self::probe(table) else {
            return Ok(None);
        };
        let quantum = table[6];
        let ptr_size = table[7];
        let word = |i: usize| -> Result<u64, GoError> {
            let off = 8 + i * usize::from(ptr_size);
            word_at(table, off, endian, ptr_size).ok_or(GoError::Truncated("pclntab header"))
        };
        let off = |i: usize| -> Result<usize, GoError> {
            let v = to_usize(word(i)?).ok_or(GoError::Corrupt("pclntab header offset"))?;
            if v > table.len() {
                return Err(GoError::Truncated("pclntab sub-table offset past the end"));
            }
            Ok(v)
        };
        let nfunc = to_usize(word(0)?).ok_or(GoError::Corrupt("function count"))?;
        let mut h = Header {
            version,
            endian,
            quantum,
            ptr_size,
            nfunc,
            text_start_field: 0,
            funcnametab: 0,
            cutab: 0,
            filetab: 0,
            nfiletab: 0,
            pctab: 0,
            funcdata: 0,
            functab: 0,
            field_size: usize::from(ptr_size),
        };
        match version {
            Version::V118 | Version::V120 => {
                h.text_start_field = word(2)?;
                (h.funcnametab, h.cutab, h.filetab) = (off(3)?, off(4)?, off(5)?);
                (h.pctab, h.funcdata) = (off(6)?, off(7)?);
                h.functab = h.funcdata;
                h.field_size = 4;
            }
            Version::V116 => {
                (h.funcnametab, h.cutab, h.filetab) = (off(2)?, off(3)?, off(4)?);
                (h.pctab, h.funcdata) = (off(5)?, off(6)?);
                h.functab = h.funcdata;
            }
            Version::V12 => h.parse_v12_files(table)?,
        }
        h.check_functab(table)?;
        Ok(Some(h))
    }

    /// Go 1.2 layout: everything is relative to the table start, and the file
    /// table's offset follows the function table.
    fn parse_v12_files(&mut self, table: &[u8]) -> Result<(), GoError> {
        self.functab = 8 + usize::from(self.ptr_size);
        let fileoff_at = self.functab_size()?.checked_add(self.functab);
        let fileoff = fileoff_at
            .and_then(|o| u32_at(table, o, self.endian))
            .ok_or(GoError::Truncated("file table offset"))?;
        self.filetab = to_usize(u64::from(fileoff)).ok_or(GoError::Corrupt("file table offset"))?;
        let n = u32_at(table, self.filetab, self.endian).ok_or(GoError::Truncated("file table"))?;
        self.nfiletab = to_usize(u64::from(n)).ok_or(GoError::Corrupt("file count"))?;
        if self
            .nfiletab
            .checked_mul(4)
            .and_then(|s| s.checked_add(self.filetab))
            .is_none_or(|e| e > table.len())
        {
            return Err(GoError::Truncated("file table"));
        }
        Ok(())
    }

    /// Bytes taken by the function table: `nfunc` pairs plus the end PC.
    fn functab_size(&self) -> Result<usize, GoError> {
        self.nfunc
            .checked_mul(2)
            .and_then(|n| n.checked_add(1))
            .and_then(|n| n.checked_mul(self.field_size))
            .ok_or(GoError::Corrupt("function count"))
    }

    /// The function table must fit, and must have at least one function.
    fn check_functab(&self, table: &[u8]) -> Result<(), GoError> {
        if self.nfunc == 0 {
            return Err(GoError::Corrupt("empty function table"));
        }
        let end = self.functab_size()?.checked_add(self.functab);
        if end.is_none_or(|e| e > table.len()) {
            return Err(GoError::Truncated("function table"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_rejects_garbage() {
        assert!(!Header::plausible(b""));
        assert!(!Header::plausible(&[0xf1, 0xff, 0xff, 0xff, 0, 0, 3, 8]));
        assert!(!Header::plausible(&[0xf1, 0xff, 0xff, 0xff, 0, 1, 1, 8]));
        assert!(Header::plausible(&[0xf1, 0xff, 0xff, 0xff, 0, 0, 1, 8]));
        assert!(Header::plausible(&[0xff, 0xff, 0xff, 0xf0, 0, 0, 4, 4]));
    }

    #[test]
    fn parse_rejects_out_of_range_offsets() {
        let mut t = vec![0xf1, 0xff, 0xff, 0xff, 0, 0, 1, 8];
        for w in [1u64, 0, 0, 0x48, 0x48, 0x48, 0x48, 0x4000] {
            t.extend_from_slice(&w.to_le_bytes());
        }
        assert!(matches!(Header::parse(&t), Err(GoError::Truncated(_))));
        assert!(Header::parse(&t[..12]).is_err());
        assert!(matches!(Header::parse(b"not a table at all"), Ok(None)));
    }
}
