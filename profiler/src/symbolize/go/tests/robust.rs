//! Inputs that are not the happy path: non-Go files, files without section
//! headers, renamed sections, zeroed moduledata, truncation and corruption.

use super::super::elf::Image;
use super::super::{locate, GoError, GoTable};
use super::*;

/// A tiny deterministic PRNG (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).expect("fits")
    }
}

/// Parses a mutated file and exercises every query; only panics matter.
fn exercise(bytes: Vec<u8>, pcs: &[u64]) -> Result<bool, GoError> {
    let Some(t) = GoTable::parse(bytes.into())? else {
        return Ok(false);
    };
    let _ = (t.go_version(), t.go_build_id(), t.text_range());
    for &pc in pcs {
        let _ = (t.contains(pc), t.lookup(pc), t.function(pc));
    }
    Ok(true)
}

/// Copies `bin` with its section header table removed from the ELF header.
fn without_section_headers(data: &[u8]) -> Vec<u8> {
    let mut d = data.to_vec();
    assert_eq!(d[4], 2, "test expects ELF64");
    d[0x28..0x30].fill(0); // e_shoff
    d[0x3c..0x40].fill(0); // e_shnum, e_shstrndx
    d
}

/// Frames for a sample of PCs, to compare two opens of the same text.
fn fingerprint(t: &GoTable) -> Vec<Option<Vec<super::super::GoFrame>>> {
    sample_pcs(t, 2000)
        .into_iter()
        .map(|pc| t.lookup(pc))
        .collect()
}

#[test]
fn non_go_inputs_are_not_go() {
    let me =
        std::fs::read(std::env::current_exe().expect("test binary")).expect("read test binary");
    assert!(
        matches!(GoTable::parse(me.clone().into()), Ok(None)),
        "a Rust binary is not Go"
    );
    assert!(matches!(GoTable::parse(Vec::new().into()), Ok(None)));
    assert!(matches!(
        GoTable::parse(b"#!/bin/sh\necho hi\n".to_vec().into()),
        Ok(None)
    ));
    for cut in [4, 16, 40, 64, 100] {
        let _ = GoTable::parse(me[..cut].to_vec().into());
    }
}

#[test]
fn finds_the_table_without_section_headers() {
    for bin in all_bins() {
        let bare = GoTable::parse(without_section_headers(&bin.data).into())
            .expect("parse")
            .unwrap_or_else(|| panic!("{}: not found without section headers", bin.label));
        assert_eq!(bare.loc.vaddr, bin.table.loc.vaddr, "{}", bin.label);
        assert_eq!(bare.text_range(), bin.table.text_range(), "{}", bin.label);
        assert_eq!(bare.go_version(), bin.table.go_version(), "{}", bin.label);
        assert_eq!(bare.go_build_id(), bin.table.go_build_id(), "{}", bin.label);
        assert_eq!(fingerprint(&bare), fingerprint(&bin.table), "{}", bin.label);
    }
}

#[test]
fn symbol_and_scan_paths_agree_with_the_section() {
    for bin in all_bins() {
        let img = Image::parse(&bin.data).expect("ELF").expect("ELF");
        let scanned = locate::scan(&bin.data, &img).expect("scan finds the table");
        assert_eq!(scanned.0.vaddr, bin.table.loc.vaddr, "{}", bin.label);
        let by_symbol = locate::by_symbol(&bin.data, &img).expect("symbol lookup");
        match (bin.build.stripped, by_symbol) {
            (true, found) => assert!(found.is_none(), "{}: stripped yet has symbols", bin.label),
            (false, found) => {
                let (loc, _) = found.unwrap_or_else(|| panic!("{}: no runtime.pclntab", bin.label));
                assert_eq!(
                    (loc.vaddr, loc.offset),
                    (bin.table.loc.vaddr, bin.table.loc.offset),
                    "{}",
                    bin.label
                );
            }
        }
    }
}

#[test]
fn renamed_section_falls_back_to_the_symbol() {
    for bin in unstripped_bins() {
        let mut d = bin.data.to_vec();
        // Rename the section in the section-name string table (same length).
        let name: &[u8] = b"gopclntab\0";
        let at = d
            .windows(name.len())
            .rposition(|w| w == name)
            .expect("section name");
        d[at] = b'x';
        let t = GoTable::parse(d.into())
            .expect("parse")
            .expect("found by symbol");
        assert_eq!(t.loc.vaddr, bin.table.loc.vaddr, "{}", bin.label);
        assert_eq!(fingerprint(&t), fingerprint(&bin.table), "{}", bin.label);
    }
}

#[test]
fn zeroed_moduledata_is_recovered_from_relocations() {
    // Simulates a linker that leaves RELA targets zero: wipe the moduledata
    // words in the file; PIEs still carry them as R_*_RELATIVE addends.
    for bin in unstripped_bins().into_iter().filter(|b| b.build.pie) {
        let md = symbol(&bin.data, "runtime.firstmoduledata").expect("moduledata symbol");
        let img = Image::parse(&bin.data).expect("ELF").expect("ELF");
        let off = img.offset_of(md).expect("moduledata in file");
        let mut d = bin.data.to_vec();
        d[off..off + 8 * 64].fill(0);
        let t = GoTable::parse(d.into()).expect("parse").expect("still Go");
        assert_eq!(t.text_start, bin.table.text_start, "{}", bin.label);
        assert_eq!(fingerprint(&t), fingerprint(&bin.table), "{}", bin.label);
    }
}

#[test]
fn truncated_files_never_panic() {
    for bin in all_bins()
        .into_iter()
        .filter(|b| b.build == Build::default() || b.build.stripped)
    {
        let pcs = sample_pcs(&bin.table, 200);
        let len = bin.data.len();
        let table_at = bin.table.loc.offset;
        // Spread over the file, plus dense cuts around the table's header.
        let mut cuts: Vec<usize> = (1..120).map(|i| len * i / 120).collect();
        cuts.extend((0..200).map(|i| table_at + i * 3));
        cuts.extend([
            table_at + bin.table.loc.len / 2,
            table_at + bin.table.loc.len - 1,
        ]);
        for cut in cuts.into_iter().filter(|&c| c < len) {
            let _ = exercise(bin.data[..cut].to_vec(), &pcs);
        }
    }
}

#[test]
fn corrupted_tables_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for bin in all_bins()
        .into_iter()
        .filter(|b| b.build == Build::default() || b.build.stripped)
    {
        let pcs = sample_pcs(&bin.table, 100);
        let (start, len) = (bin.table.loc.offset, bin.table.loc.len);
        let mut opened = 0;
        for round in 0..300 {
            let mut d = bin.data.to_vec();
            for _ in 0..1 + rng.below(8) {
                // A third of the flips hit the header, the rest anywhere in the table.
                let at = if round % 3 == 0 {
                    start + rng.below(80)
                } else {
                    start + rng.below(len)
                };
                d[at] ^= 1 << rng.below(8);
            }
            if let Ok(true) = exercise(d, &pcs) {
                opened += 1;
            }
        }
        // Most single-region flips leave a usable (if partly wrong) table.
        assert!(
            opened > 0,
            "{}: no corrupted table opened at all",
            bin.label
        );
    }
}

#[test]
fn random_bytes_everywhere_never_panic() {
    let mut rng = Rng(42);
    let bins = all_bins();
    let Some(bin) = bins.iter().find(|b| b.build.stripped) else {
        return;
    };
    let pcs = sample_pcs(&bin.table, 50);
    for _ in 0..100 {
        let mut d = bin.data.to_vec();
        for _ in 0..64 {
            let at = rng.below(d.len());
            d[at] = u8::try_from(rng.next() & 0xff).expect("byte");
        }
        let _ = exercise(d, &pcs);
    }
}
