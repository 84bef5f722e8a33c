//! Compiling `.eh_frame` (and uncompressed `.debug_frame`) into the compact
//! unwind rows the BPF unwinder searches.
//!
//! A row says, from a file offset on: where the canonical frame address
//! (CFA) is (rsp or rbp plus an offset, a PLT stub's formula, or "this is the
//! outermost frame"), and where rbp was saved. x86-64 keeps the return
//! address at CFA-8 everywhere, so the row does not store it. Code no FDE
//! covers gets a `CFA_NONE` row: the unwinder falls back to frame pointers
//! there, which is what Go code (which has no `.eh_frame`) needs.

use gimli::{
    BaseAddresses, CfaRule, CieOrFde, DebugFrame, EhFrame, EndianSlice, LittleEndian, RegisterRule,
    UnwindContext, UnwindSection, X86_64,
};
use object::elf::{FileHeader64, PT_LOAD, SHF_COMPRESSED};
use object::read::elf::{FileHeader, ProgramHeader, SectionHeader};

use profiler_ebpf::abi::{UnwindRow, CFA_END, CFA_NONE, CFA_PLT, CFA_RBP, CFA_RSP};

/// Why a file has no table.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("not a 64-bit little-endian ELF file")]
    NotElf,
    #[error("malformed ELF: {0}")]
    Elf(String),
}

/// A unit-test-friendly view of one row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// No information: frame pointers.
    None,
    /// CFA = rsp + offset; rbp saved at CFA + rbp (0: unchanged).
    Rsp { offset: i32, rbp: i16 },
    /// CFA = rbp + offset; rbp saved at CFA + rbp.
    Rbp { offset: i32, rbp: i16 },
    /// A PLT stub; the byte threshold of its formula.
    Plt { threshold: i32 },
    /// The outermost frame.
    End,
}

impl Rule {
    fn row(self, pc: u64) -> UnwindRow {
        let (cfa_reg, cfa_offset, rbp_offset) = match self {
            Rule::None => (CFA_NONE, 0, 0),
            Rule::Rsp { offset, rbp } => (CFA_RSP, offset, rbp),
            Rule::Rbp { offset, rbp } => (CFA_RBP, offset, rbp),
            Rule::Plt { threshold } => (CFA_PLT, threshold, 0),
            Rule::End => (CFA_END, 0, 0),
        };
        UnwindRow {
            pc,
            cfa_offset,
            rbp_offset,
            cfa_reg,
            _pad: 0,
        }
    }

    /// The rule a row encodes.
    pub fn of(row: &UnwindRow) -> Rule {
        match row.cfa_reg {
            CFA_RSP => Rule::Rsp {
                offset: row.cfa_offset,
                rbp: row.rbp_offset,
            },
            CFA_RBP => Rule::Rbp {
                offset: row.cfa_offset,
                rbp: row.rbp_offset,
            },
            CFA_PLT => Rule::Plt {
                threshold: row.cfa_offset,
            },
            CFA_END => Rule::End,
            _ => Rule::None,
        }
    }
}

/// Compiles the unwind tables of an ELF file into rows sorted by file
/// offset, with identical neighbours merged. An ELF without `.eh_frame`
/// gives an empty table.
pub fn compile(data: &[u8]) -> Result<Vec<UnwindRow>, TableError> {
    compile_with(data, Vec::new())
}

/// Like [`compile`], with `extra` rules `(start, end, rule)` in link-time
/// addresses for code no CFI covers (Go's cgo trampolines, see
/// [`super::cgo`]). Where both cover a PC, one of them wins arbitrarily:
/// callers only add rules where there is no FDE.
pub fn compile_with(
    data: &[u8],
    extra: Vec<(u64, u64, Rule)>,
) -> Result<Vec<UnwindRow>, TableError> {
    let header =
        FileHeader64::<object::LittleEndian>::parse(data).map_err(|_| TableError::NotElf)?;
    let endian = header.endian().map_err(|_| TableError::NotElf)?;
    let sections = header
        .sections(endian, data)
        .map_err(|e| TableError::Elf(e.to_string()))?;
    let segments: Vec<(u64, u64, u64)> = header
        .program_headers(endian, data)
        .map_err(|e| TableError::Elf(e.to_string()))?
        .iter()
        .filter(|p| p.p_type(endian) == PT_LOAD)
        .map(|p| (p.p_vaddr(endian), p.p_filesz(endian), p.p_offset(endian)))
        .collect();
    // vaddr → file offset, for code in a loadable segment. Offsets come
    // from the file: one past u64::MAX means a corrupt header, no offset
    // (found by fuzzing, fuzz/regressions/eh_frame/).
    let to_offset = |vaddr: u64| -> Option<u64> {
        segments
            .iter()
            .find(|(v, size, _)| *v <= vaddr && vaddr - v < *size)
            .and_then(|(v, _, off)| (vaddr - v).checked_add(*off))
    };

    let mut raw = extra;
    for (name, is_eh) in [(&b".eh_frame"[..], true), (&b".debug_frame"[..], false)] {
        let Some((index, sh)) = sections.section_by_name(endian, name) else {
            continue;
        };
        let _ = index;
        if sh.sh_flags(endian) & u64::from(SHF_COMPRESSED) != 0 {
            continue;
        }
        let Ok(bytes) = sh.data(endian, data) else {
            continue;
        };
        let addr = sh.sh_addr(endian);
        if is_eh {
            let section = EhFrame::new(bytes, LittleEndian);
            let bases = BaseAddresses::default().set_eh_frame(addr);
            collect(&section, &bases, &mut raw);
        } else {
            let mut section = DebugFrame::new(bytes, LittleEndian);
            section.set_address_size(8);
            collect(&section, &BaseAddresses::default(), &mut raw);
        }
    }

    // Convert to file offsets; each FDE's end gets a NONE row, which a
    // following FDE starting there overrides.
    let mut rows: Vec<(u64, u8, Rule)> = Vec::with_capacity(raw.len() * 2);
    for (start, end, rule) in raw {
        let (Some(s), Some(after)) = (
            to_offset(start),
            to_offset(end.saturating_sub(1)).and_then(|e| e.checked_add(1)),
        ) else {
            continue;
        };
        rows.push((s, 1, rule));
        rows.push((after, 0, Rule::None));
    }
    // At one offset, a real rule (priority 1) beats an end marker.
    rows.sort_by_key(|r| (r.0, std::cmp::Reverse(r.1)));
    rows.dedup_by_key(|r| r.0);
    let mut out: Vec<UnwindRow> = Vec::with_capacity(rows.len());
    for (pc, _, rule) in rows {
        if out.last().is_some_and(|last| Rule::of(last) == rule) {
            continue;
        }
        out.push(rule.row(pc));
    }
    Ok(out)
}

type Reader<'a> = EndianSlice<'a, LittleEndian>;

/// Appends (start, end, rule) for every row of every FDE in `section`.
/// Malformed entries are skipped: a table with holes only means frame
/// pointers there.
fn collect<'a, S: UnwindSection<Reader<'a>>>(
    section: &S,
    bases: &BaseAddresses,
    out: &mut Vec<(u64, u64, Rule)>,
) {
    let mut ctx = Box::new(UnwindContext::new());
    let mut entries = section.entries(bases);
    // A parse error leaves the iterator at an unknown position: stop there.
    while let Ok(Some(entry)) = entries.next() {
        let CieOrFde::Fde(partial) = entry else {
            continue;
        };
        let Ok(fde) = partial.parse(|s, b, o| s.cie_from_offset(b, o)) else {
            continue;
        };
        let Ok(mut table) = fde.rows(section, bases, &mut ctx) else {
            continue;
        };
        while let Ok(Some(row)) = table.next_row() {
            out.push((row.start_address(), row.end_address(), rule(row, section)));
        }
    }
}

/// The rule of one CFI row.
fn rule<'a, S: UnwindSection<Reader<'a>>>(row: &gimli::UnwindTableRow<usize>, section: &S) -> Rule {
    match row.register(X86_64::RA) {
        Some(RegisterRule::Undefined) => return Rule::End,
        None | Some(RegisterRule::Offset(-8)) => {}
        Some(_) => return Rule::None,
    }
    let rbp = match row.register(X86_64::RBP) {
        None | Some(RegisterRule::SameValue) => 0,
        Some(RegisterRule::Offset(n)) => match i16::try_from(n) {
            Ok(n) if n != 0 => n,
            _ => return Rule::None,
        },
        Some(_) => return Rule::None,
    };
    match row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } => {
            let Ok(offset) = i32::try_from(*offset) else {
                return Rule::None;
            };
            match *register {
                X86_64::RSP => Rule::Rsp { offset, rbp },
                X86_64::RBP => Rule::Rbp { offset, rbp },
                _ => Rule::None,
            }
        }
        CfaRule::Expression(expr) => match expr.get(section) {
            Ok(e) => {
                plt_threshold(e.0.slice()).map_or(Rule::None, |threshold| Rule::Plt { threshold })
            }
            Err(_) => Rule::None,
        },
    }
}

/// The CFA expression the linker writes for PLT stubs:
/// `rsp + 8 + ((rip & 15) >= N) << 3`, as
/// `breg7 8; breg16 0; lit15; and; litN; ge; lit3; shl; plus`.
pub fn plt_threshold(expr: &[u8]) -> Option<i32> {
    const LIT0: u8 = 0x30;
    match expr {
        [0x77, 0x08, 0x80, 0x00, 0x3f, 0x1a, lit, 0x2a, 0x33, 0x24, 0x22]
            if (LIT0..=LIT0 + 31).contains(lit) =>
        {
            Some(i32::from(lit - LIT0))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object::{Object, ObjectSymbol};
    use std::process::Command;

    /// Builds `src` with gcc and returns the binary's bytes.
    fn build(src: &str, flags: &[&str]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let c = dir.path().join("t.c");
        std::fs::write(&c, src).unwrap();
        let exe = dir.path().join("t");
        let ok = Command::new("gcc")
            .args(flags)
            .arg(&c)
            .arg("-o")
            .arg(&exe)
            .status()
            .unwrap();
        assert!(ok.success());
        std::fs::read(exe).unwrap()
    }

    /// File offset of symbol `name` (PIE: offsets equal addresses in text).
    fn symbol(data: &[u8], name: &str) -> u64 {
        let f = object::File::parse(data).unwrap();
        let s = f.symbols().find(|s| s.name() == Ok(name)).unwrap();
        crate::symbolize::elf::vaddr_of(data, s.address(), 0).unwrap();
        s.address()
    }

    /// The rule in effect at file offset `off`.
    fn at(rows: &[UnwindRow], off: u64) -> Rule {
        let i = rows.partition_point(|r| r.pc <= off);
        Rule::of(&rows[i - 1])
    }

    const SRC: &str = r#"
#include <stdio.h>
__attribute__((noinline)) int f(int x) { volatile int a = x; return a + 1; }
int main(int c, char **v) { printf("%d\n", f(c)); return 0; }
"#;

    #[test]
    fn frame_pointer_prologue_and_epilogue() {
        let data = build(SRC, &["-O0", "-fno-omit-frame-pointer", "-Wl,-z,lazy"]);
        let rows = compile(&data).unwrap();
        let f = symbol(&data, "f");
        // push %rbp (1 byte); mov %rsp,%rbp (3 bytes); ...; pop %rbp; ret
        assert_eq!(at(&rows, f), Rule::Rsp { offset: 8, rbp: 0 });
        assert_eq!(
            at(&rows, f + 1),
            Rule::Rsp {
                offset: 16,
                rbp: -16
            }
        );
        assert_eq!(
            at(&rows, f + 4),
            Rule::Rbp {
                offset: 16,
                rbp: -16
            }
        );
        // The last byte of f is its ret, after pop %rbp.
        let end = rows.iter().find(|r| r.pc > f + 4).unwrap().pc;
        assert_eq!(
            at(&rows, end),
            Rule::Rsp {
                offset: 8,
                rbp: -16
            }
        );
        // _start is the outermost frame.
        assert_eq!(at(&rows, symbol(&data, "_start")), Rule::End);
        // Lazy binding keeps the PLT stub formula.
        assert!(rows
            .iter()
            .any(|r| Rule::of(r) == Rule::Plt { threshold: 11 }));
        // Sorted, no two neighbours alike.
        assert!(rows
            .windows(2)
            .all(|w| w[0].pc < w[1].pc && Rule::of(&w[0]) != Rule::of(&w[1])));
    }

    #[test]
    fn frameless_code_uses_rsp_offsets() {
        let data = build(
            r#"
__attribute__((noinline)) long g(long *p, int n) { long a[64]; for (int i = 0; i < 64; i++) a[i] = p[i % 4] * i; long s = 0; for (int i = 0; i < n; i++) s += a[i & 63]; return s; }
int main(int c, char **v) { long p[4] = {1,2,3,4}; return (int)g(p, c); }
"#,
            &["-O2", "-fomit-frame-pointer"],
        );
        let rows = compile(&data).unwrap();
        let g = symbol(&data, "g");
        assert_eq!(at(&rows, g), Rule::Rsp { offset: 8, rbp: 0 });
        // Somewhere inside, the 512-byte array is on the stack (less the
        // 128-byte red zone a leaf may use below rsp).
        let inside: Vec<Rule> = rows
            .iter()
            .filter(|r| r.pc > g && r.pc < g + 64)
            .map(Rule::of)
            .collect();
        assert!(
            inside
                .iter()
                .any(|r| matches!(r, Rule::Rsp { offset, .. } if *offset > 256)),
            "{inside:?}"
        );
    }

    #[test]
    fn uncovered_code_falls_back_to_frame_pointers() {
        let data = build(
            SRC,
            &[
                "-O0",
                "-fno-asynchronous-unwind-tables",
                "-fno-unwind-tables",
            ],
        );
        let rows = compile(&data).unwrap();
        let f = symbol(&data, "f");
        assert_eq!(at(&rows, f), Rule::None);
    }

    #[test]
    fn plt_expression_and_garbage() {
        let e = [
            0x77, 0x08, 0x80, 0x00, 0x3f, 0x1a, 0x3a, 0x2a, 0x33, 0x24, 0x22,
        ];
        assert_eq!(plt_threshold(&e), Some(10));
        assert_eq!(plt_threshold(&e[1..]), None);
        assert!(compile(b"").is_err());
        let data = build(SRC, &["-O2"]);
        // Truncations and corruptions: errors or tables, never panics.
        for cut in (0..data.len()).step_by(data.len() / 97 + 1) {
            let _ = compile(&data[..cut]);
        }
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..200 {
            let mut d = data.clone();
            for _ in 0..16 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = (x as usize) % d.len();
                d[i] = (x >> 32) as u8;
            }
            let _ = compile(&d);
        }
    }

    #[test]
    fn libc_has_a_large_table() {
        let libc = std::fs::read("/usr/lib/x86_64-linux-gnu/libc.so.6").unwrap();
        let rows = compile(&libc).unwrap();
        assert!(rows.len() > 5000, "{} rows", rows.len());
        assert!(
            rows.iter().any(|r| Rule::of(r) == Rule::End),
            "clone/start markers"
        );
    }
}
