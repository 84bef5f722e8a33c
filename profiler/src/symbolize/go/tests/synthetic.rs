//! Hand-built tables in the Go 1.2 and Go 1.16 formats, which no installed
//! toolchain emits. They are built from the format facts (see `header.rs`
//! and `funcs.rs`), so they check the decoding paths for those layouts, byte
//! orders and pointer sizes, not agreement with a real linker.
//!
//! Both tables describe the same two functions:
//! `pkg.alpha` at 0x1000..0x1020 in `a.go` (line 10, then 12 from 0x1010) and
//! `pkg.beta` at 0x1020..0x1030 in `b.go` (line 20).

use super::super::bytes::Endian;
use super::super::funcs::{DecodedFunc, TableView};
use super::super::header::{Header, Version};

/// Appends integers in a chosen byte order.
struct Out {
    b: Vec<u8>,
    e: Endian,
}

impl Out {
    fn u32(&mut self, v: u32) {
        self.b.extend(match self.e {
            Endian::Little => v.to_le_bytes(),
            Endian::Big => v.to_be_bytes(),
        });
    }

    fn word(&mut self, v: u64, ptr: u8) {
        match (ptr, self.e) {
            (4, _) => self.u32(u32::try_from(v).expect("fits")),
            (_, Endian::Little) => self.b.extend(v.to_le_bytes()),
            (_, Endian::Big) => self.b.extend(v.to_be_bytes()),
        }
    }

    /// Overwrites a u32 at `at`.
    fn patch_u32(&mut self, at: usize, v: u32) {
        let bytes = match self.e {
            Endian::Little => v.to_le_bytes(),
            Endian::Big => v.to_be_bytes(),
        };
        self.b[at..at + 4].copy_from_slice(&bytes);
    }

    fn patch_word(&mut self, at: usize, v: u64, ptr: u8) {
        if ptr == 4 {
            return self.patch_u32(at, u32::try_from(v).expect("fits"));
        }
        let bytes = match self.e {
            Endian::Little => v.to_le_bytes(),
            Endian::Big => v.to_be_bytes(),
        };
        self.b[at..at + 8].copy_from_slice(&bytes);
    }
}

/// Unsigned LEB128.
fn uvarint(out: &mut Vec<u8>, mut v: u32) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Encodes a pc-value table from `(run length in bytes, value)` pairs.
fn pcvalue_table(runs: &[(u32, i32)], quantum: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let mut prev = -1i32;
    for &(len, val) in runs {
        let d = val - prev;
        uvarint(&mut out, ((d << 1) ^ (d >> 31)) as u32);
        uvarint(&mut out, len / quantum);
        prev = val;
    }
    out.push(0);
    out
}

/// One function of the synthetic program.
struct Func {
    entry: u64,
    name: &'static str,
    /// File value for the whole function (1.16: CU index; 1.2: global index).
    file: i32,
    lines: &'static [(u32, i32)],
}

const FUNCS: [Func; 2] = [
    Func {
        entry: 0x1000,
        name: "pkg.alpha",
        file: 0,
        lines: &[(0x10, 10), (0x10, 12)],
    },
    Func {
        entry: 0x1020,
        name: "pkg.beta",
        file: 1,
        lines: &[(0x10, 20)],
    },
];
const END: u64 = 0x1030;

/// Appends the pc-value tables of all functions to `pctab`, returning the
/// (pcfile, pcln) offsets per function relative to `base`.
fn pc_tables(pctab: &mut Vec<u8>, base: usize, quantum: u32, file_shift: i32) -> Vec<(u32, u32)> {
    FUNCS
        .iter()
        .map(|f| {
            let size: u32 = f.lines.iter().map(|r| r.0).sum();
            let file_at = pctab.len() - base;
            pctab.extend(pcvalue_table(&[(size, f.file + file_shift)], quantum));
            let line_at = pctab.len() - base;
            pctab.extend(pcvalue_table(f.lines, quantum));
            (
                u32::try_from(file_at).expect("fits"),
                u32::try_from(line_at).expect("fits"),
            )
        })
        .collect()
}

/// A Go 1.16-format table: 8-byte words, little endian, quantum 1.
fn table_v116() -> Vec<u8> {
    let (ptr, e) = (8u8, Endian::Little);
    let mut o = Out {
        b: vec![0xfa, 0xff, 0xff, 0xff, 0, 0, 1, ptr],
        e,
    };
    let hdr_words = 7;
    o.word(2, ptr); // nfunc
    o.word(2, ptr); // nfiles
    for _ in 2..hdr_words {
        o.word(0, ptr); // patched below
    }
    let mut offsets = Vec::new();
    // funcnametab
    offsets.push(o.b.len());
    let mut name_offs = Vec::new();
    for f in &FUNCS {
        name_offs.push(o.b.len() - offsets[0]);
        o.b.extend(f.name.as_bytes());
        o.b.push(0);
    }
    // cutab: one CU with two files, at filetab offsets 0 and 5.
    offsets.push(o.b.len());
    o.u32(0);
    o.u32(5);
    // filetab
    offsets.push(o.b.len());
    o.b.extend(b"a.go\0b.go\0");
    // pctab (offset 0 means "no table", so start with a pad byte)
    offsets.push(o.b.len());
    o.b.push(0);
    let pct = pc_tables(&mut o.b, offsets[3], 1, 0);
    // pclntab: functab then _func records
    let pcln = o.b.len();
    offsets.push(pcln);
    let functab_at = o.b.len();
    for _ in 0..(2 * FUNCS.len() + 1) {
        o.word(0, ptr);
    }
    for (i, f) in FUNCS.iter().enumerate() {
        let rec = o.b.len() - pcln;
        o.patch_word(functab_at + 2 * i * 8, f.entry, ptr);
        o.patch_word(functab_at + (2 * i + 1) * 8, rec as u64, ptr);
        o.word(f.entry, ptr);
        let name = u32::try_from(name_offs[i]).expect("fits");
        for v in [name, 0, 0, 0, pct[i].0, pct[i].1, 0, 0] {
            o.u32(v); // nameoff args deferreturn pcsp pcfile pcln npcdata cuOffset
        }
        o.u32(0); // funcID, flag, pad, nfuncdata
    }
    o.patch_word(functab_at + 2 * FUNCS.len() * 8, END, ptr);
    for (k, off) in offsets.iter().enumerate() {
        o.patch_word(8 + (2 + k) * 8, *off as u64, ptr);
    }
    o.b
}

/// A Go 1.2-format table: 4-byte words, big endian, quantum 4.
fn table_v12() -> Vec<u8> {
    let (ptr, e) = (4u8, Endian::Big);
    let mut o = Out {
        b: vec![0xff, 0xff, 0xff, 0xfb, 0, 0, 4, ptr],
        e,
    };
    o.word(2, ptr); // nfunc
    let functab_at = o.b.len();
    for _ in 0..(2 * FUNCS.len() + 1) {
        o.word(0, ptr);
    }
    let fileoff_at = o.b.len();
    o.u32(0); // file table offset, patched below
    o.b.push(0); // pad so no pc-value table starts at offset 0
                 // 1.2 file numbers are 1-based indices into the file table.
    let pct = pc_tables(&mut o.b, 0, 4, 1);
    let mut name_offs = Vec::new();
    for f in &FUNCS {
        name_offs.push(o.b.len());
        o.b.extend(f.name.as_bytes());
        o.b.push(0);
    }
    let file_names = [o.b.len(), o.b.len() + 5];
    o.b.extend(b"a.go\0b.go\0");
    for (i, f) in FUNCS.iter().enumerate() {
        let rec = o.b.len();
        o.patch_word(functab_at + 2 * i * 4, f.entry, ptr);
        o.patch_word(functab_at + (2 * i + 1) * 4, rec as u64, ptr);
        o.word(f.entry, ptr);
        let name = u32::try_from(name_offs[i]).expect("fits");
        for v in [name, 0, 0, 0, pct[i].0, pct[i].1, 0] {
            o.u32(v); // nameoff args frame pcsp pcfile pcln npcdata
        }
        o.u32(0); // funcID, pad, nfuncdata
    }
    o.patch_word(functab_at + 2 * FUNCS.len() * 4, END, ptr);
    let filetab = o.b.len();
    o.patch_u32(fileoff_at, u32::try_from(filetab).expect("fits"));
    o.u32(3); // count slot + two files
    for n in file_names {
        o.u32(u32::try_from(n).expect("fits"));
    }
    o.b
}

/// Resolves `pc` to (name, file, line) through the table view.
fn resolve(view: &TableView<'_>, pc: u64) -> Option<(String, String, u32)> {
    let d = DecodedFunc::decode(view, view.func(view.find(pc)?)?);
    let (file, line) = view.file_line(&d, pc);
    let name = String::from_utf8(view.func_name(d.func.name_off)?.to_vec()).ok()?;
    Some((name, String::from_utf8(file?.to_vec()).ok()?, line))
}

fn check(table: &[u8], version: Version) {
    let h = Header::parse(table).expect("valid").expect("has magic");
    assert_eq!(h.version, version);
    let view = TableView {
        bytes: table,
        h: &h,
        text_start: 0,
        vaddr: 0x10_0000,
    };
    assert!(view.looks_sane());
    assert_eq!(view.pc_range(), Some((0x1000, END)));
    let want = |n: &str, f: &str, l: u32| Some((n.to_owned(), f.to_owned(), l));
    assert_eq!(resolve(&view, 0x1000), want("pkg.alpha", "a.go", 10));
    assert_eq!(resolve(&view, 0x100c), want("pkg.alpha", "a.go", 10));
    assert_eq!(resolve(&view, 0x1010), want("pkg.alpha", "a.go", 12));
    assert_eq!(resolve(&view, 0x101f), want("pkg.alpha", "a.go", 12));
    assert_eq!(resolve(&view, 0x1020), want("pkg.beta", "b.go", 20));
    assert_eq!(resolve(&view, 0x102c), want("pkg.beta", "b.go", 20));
    assert_eq!(resolve(&view, 0xfff), None);
    assert_eq!(resolve(&view, END), None);
    // Every truncation of the table is rejected or answers without panicking.
    for cut in 0..table.len() {
        if let Ok(Some(h)) = Header::parse(&table[..cut]) {
            let v = TableView {
                bytes: &table[..cut],
                h: &h,
                text_start: 0,
                vaddr: 0x10_0000,
            };
            let _ = (v.looks_sane(), resolve(&v, 0x1000), resolve(&v, 0x1024));
        }
    }
}

#[test]
fn go116_little_endian_64bit_table() {
    check(&table_v116(), Version::V116);
}

#[test]
fn go12_big_endian_32bit_table() {
    check(&table_v12(), Version::V12);
}
