//! The function table, `_func` records and pc-value tables.
//!
//! Facts (from Go's `debug/gosym` and `runtime/symtab.go`):
//!
//! * The function table is `nfunc` pairs `(entry, funcoff)` followed by one
//!   more entry: the end of the last function. Entries are sorted, so a PC
//!   belongs to the last function whose entry is `<=` it. For 1.18+ both
//!   fields are u32 and `entry` is an offset from the start of the text; before
//!   that both are words and `entry` is an address.
//! * `funcoff` locates the `_func` record: `entry`, then u32 fields `nameOff,
//!   args, deferreturn, pcsp, pcfile, pcln, npcdata`, then (1.16+) `cuOffset`,
//!   then (1.20+) `startLine`, then four bytes `funcID, flag, pad, nfuncdata`.
//!   The `entry` field is a u32 offset for 1.18+ and a word before.
//! * After the record come `npcdata` u32 offsets into the pc-value tables
//!   (0 = no table), then `nfuncdata` funcdata references: u32 offsets from
//!   `moduledata.gofunc` (1.18+; `!0` = none), or word-aligned absolute
//!   addresses (before 1.18; 0 = none).
//! * A pc-value table is a sequence of (value delta, pc delta) varint pairs.
//!   The value starts at -1 and the PC at the function entry; the value delta
//!   is zig-zag encoded, the pc delta is in units of the PC quantum, and a zero
//!   value delta ends the table (except as the very first delta). The value
//!   for a PC is the one in effect when the running PC first exceeds it.
//! * File numbers from `pcfile` index the 1.2 global file table, or (1.16+)
//!   the compilation unit's slice of `cutab`, which holds offsets into the
//!   file-name blob (`!0` = none).

use super::bytes::{cstr_at, to_usize, u32_at, u8_at, uvarint32, word_at};
use super::header::{Header, Version};

/// `PCDATA_InlTreeIndex`: the pc-value table giving the inline tree index.
pub(crate) const PCDATA_INL_TREE_INDEX: u32 = 2;
/// `FUNCDATA_InlTree`: the funcdata slot holding the inline tree.
pub(crate) const FUNCDATA_INL_TREE: u8 = 3;

/// A borrowed view of one pclntab with what is needed to resolve PCs.
#[derive(Clone, Copy)]
pub(crate) struct TableView<'a> {
    /// The whole table, starting at the header.
    pub bytes: &'a [u8],
    pub h: &'a Header,
    /// Base of 1.18+ entry offsets (ignored for older tables).
    pub text_start: u64,
    /// Virtual address of the table (pre-1.18 funcdata are word-aligned in
    /// memory, so the alignment padding depends on it).
    pub vaddr: u64,
}

/// Where a funcdata slot points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FuncData {
    /// Offset from `moduledata.gofunc` (1.18+).
    GoFuncOffset(u32),
    /// Absolute address (before 1.18).
    Address(u64),
}

/// A decoded `_func` record (only the fields we use).
#[derive(Clone, Debug)]
pub(crate) struct Func {
    pub entry: u64,
    /// Entry of the next function (exclusive end of this one).
    pub end: u64,
    /// Offset of the record in the table.
    rec: usize,
    /// Size of the fixed part of the record.
    fixed: usize,
    pub name_off: u32,
    /// The stack-pointer delta table (what unwinding through the function
    /// needs).
    pub pcsp: u32,
    pcfile: u32,
    pcln: u32,
    npcdata: u32,
    cu_offset: u32,
    /// Line of the `func` keyword (1.20+), else 0.
    pub start_line: i32,
    nfuncdata: u8,
    /// The runtime's `funcID` (special functions; the last value marks
    /// compiler-generated wrappers).
    pub func_id: u8,
}

impl<'a> TableView<'a> {
    /// Raw functab field `k` (entry or funcoff of pair `k / 2`).
    fn ft_field(&self, k: usize) -> Option<u64> {
        let off = self
            .h
            .functab
            .checked_add(k.checked_mul(self.h.field_size)?)?;
        match self.h.field_size {
            4 => u32_at(self.bytes, off, self.h.endian).map(u64::from),
            _ => word_at(self.bytes, off, self.h.endian, self.h.ptr_size),
        }
    }

    /// Whether entries are text offsets (1.18+) rather than addresses.
    fn relative_entries(&self) -> bool {
        self.h.version >= Version::V118
    }

    /// The raw (unrelocated) entry value of function `i`; `i == nfunc` is the
    /// end-of-text sentinel.
    pub fn raw_entry(&self, i: usize) -> Option<u64> {
        self.ft_field(i.checked_mul(2)?)
    }

    /// Entry address of function `i` (`i == nfunc`: end of text).
    pub fn entry_pc(&self, i: usize) -> Option<u64> {
        let raw = self.raw_entry(i)?;
        if self.relative_entries() {
            self.text_start.checked_add(raw)
        } else {
            Some(raw)
        }
    }

    /// `[first entry, end of text)`, the PCs the table covers.
    pub fn pc_range(&self) -> Option<(u64, u64)> {
        let (lo, hi) = (self.entry_pc(0)?, self.entry_pc(self.h.nfunc)?);
        (lo < hi).then_some((lo, hi))
    }

    /// Index of the function containing `pc`: binary search for the last
    /// entry `<= pc`.
    pub fn find(&self, pc: u64) -> Option<usize> {
        let (lo_pc, hi_pc) = self.pc_range()?;
        if pc < lo_pc || pc >= hi_pc {
            return None;
        }
        // Invariant: entry(lo) <= pc, and the answer is in [lo, hi).
        let (mut lo, mut hi) = (0usize, self.h.nfunc);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.entry_pc(mid)? <= pc {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Some(lo)
    }

    /// A cheap consistency check of the function table, used to reject a
    /// false header match when scanning and to fail early on corruption:
    /// the first and last few entries must be sorted and the first record's
    /// entry must match the table.
    pub fn looks_sane(&self) -> bool {
        let n = self.h.nfunc;
        let head = 0..n.min(16);
        let tail = n.saturating_sub(16)..n;
        let sorted = |r: std::ops::Range<usize>| {
            r.into_iter().all(|i| matches!((self.raw_entry(i), self.raw_entry(i + 1)), (Some(a), Some(b)) if a <= b))
        };
        sorted(head) && sorted(tail) && self.func(0).is_some() && self.func(n - 1).is_some()
    }

    /// Decodes function `i`'s `_func` record, checking that its entry field
    /// agrees with the function table.
    pub fn func(&self, i: usize) -> Option<Func> {
        if i >= self.h.nfunc {
            return None;
        }
        let funcoff = to_usize(self.ft_field(i.checked_mul(2)?.checked_add(1)?)?)?;
        let rec = self.h.funcdata.checked_add(funcoff)?;
        let (b, e, v) = (self.bytes, self.h.endian, self.h.version);
        let raw_entry = self.raw_entry(i)?;
        let entry_size = if self.relative_entries() {
            4
        } else {
            usize::from(self.h.ptr_size)
        };
        let rec_entry = match entry_size {
            4 => u64::from(u32_at(b, rec, e)?),
            _ => word_at(b, rec, e, self.h.ptr_size)?,
        };
        if rec_entry != raw_entry {
            return None;
        }
        let field = |n: usize| u32_at(b, rec.checked_add(entry_size + 4 * n)?, e);
        // Offset of the 4-byte funcID/flag/pad/nfuncdata group.
        let tail = entry_size
            + match v {
                Version::V12 => 28,
                Version::V116 | Version::V118 => 32,
                Version::V120 => 36,
            };
        Some(Func {
            entry: self.entry_pc(i)?,
            end: self.entry_pc(i + 1)?,
            rec,
            fixed: tail + 4,
            name_off: field(0)?,
            pcsp: field(3)?,
            pcfile: field(4)?,
            pcln: field(5)?,
            npcdata: field(6)?,
            cu_offset: if v >= Version::V116 { field(7)? } else { 0 },
            start_line: if v >= Version::V120 {
                field(8)? as i32
            } else {
                0
            },
            nfuncdata: u8_at(b, rec.checked_add(tail + 3)?)?,
            func_id: u8_at(b, rec.checked_add(tail)?)?,
        })
    }

    /// Offset of pc-value table `k` of `f` (0 = none).
    pub fn pcdata_offset(&self, f: &Func, k: u32) -> u32 {
        if k >= f.npcdata {
            return 0;
        }
        let off = f
            .rec
            .checked_add(f.fixed)
            .and_then(|o| o.checked_add(4 * to_usize(k.into())?));
        off.and_then(|o| u32_at(self.bytes, o, self.h.endian))
            .unwrap_or(0)
    }

    /// Funcdata slot `k` of `f`, if present.
    pub fn funcdata(&self, f: &Func, k: u8) -> Option<FuncData> {
        if k >= f.nfuncdata {
            return None;
        }
        let npcdata = to_usize(f.npcdata.into())?;
        let start = f
            .rec
            .checked_add(f.fixed)?
            .checked_add(npcdata.checked_mul(4)?)?;
        if self.relative_entries() {
            let off = u32_at(
                self.bytes,
                start.checked_add(4 * usize::from(k))?,
                self.h.endian,
            )?;
            return (off != u32::MAX).then_some(FuncData::GoFuncOffset(off));
        }
        // Before 1.18 the pointers are aligned to the pointer size in memory.
        let ptr = usize::from(self.h.ptr_size);
        let addr = self.vaddr.checked_add(u64::try_from(start).ok()?)?;
        let pad = if ptr == 8 && !addr.is_multiple_of(8) {
            4
        } else {
            0
        };
        let slot = start.checked_add(pad)?.checked_add(ptr * usize::from(k))?;
        let v = word_at(self.bytes, slot, self.h.endian, self.h.ptr_size)?;
        (v != 0).then_some(FuncData::Address(v))
    }

    /// File and line in effect at `pc` in `d` (innermost position: for
    /// inlined code this is the position inside the inlined function).
    pub fn file_line(&self, d: &DecodedFunc, pc: u64) -> (Option<&'a [u8]>, u32) {
        let line = d.line.at(pc).and_then(|l| u32::try_from(l).ok());
        let file = d.file.at(pc).and_then(|n| self.file_name(&d.func, n));
        (file, line.unwrap_or(0))
    }

    /// The name of file number `fno` of `f`.
    fn file_name(&self, f: &Func, fno: i32) -> Option<&'a [u8]> {
        let fno = usize::try_from(fno).ok()?;
        let (b, e) = (self.bytes, self.h.endian);
        let name_off = if self.h.version == Version::V12 {
            if fno == 0 || fno >= self.h.nfiletab {
                return None;
            }
            u32_at(b, self.h.filetab.checked_add(4 * fno)?, e)?
        } else {
            let idx = to_usize(f.cu_offset.into())?.checked_add(fno)?;
            let v = u32_at(b, self.h.cutab.checked_add(idx.checked_mul(4)?)?, e)?;
            if v == u32::MAX {
                return None;
            }
            // 1.16+ names are relative to the file-name blob.
            return cstr_at(b, self.h.filetab.checked_add(to_usize(v.into())?)?);
        };
        cstr_at(b, to_usize(name_off.into())?)
    }

    /// A function name by its `nameOff`.
    pub fn func_name(&self, name_off: u32) -> Option<&'a [u8]> {
        cstr_at(
            self.bytes,
            self.h.funcnametab.checked_add(to_usize(name_off.into())?)?,
        )
    }

    /// Whether `name_off` points at the start of a non-empty name (the byte
    /// before it is a terminator). Used to validate inline trees.
    pub fn is_name_start(&self, name_off: u32) -> bool {
        let Some(at) = to_usize(name_off.into()).and_then(|o| self.h.funcnametab.checked_add(o))
        else {
            return false;
        };
        let starts = at == self.h.funcnametab || u8_at(self.bytes, at - 1) == Some(0);
        starts && self.func_name(name_off).is_some_and(|n| !n.is_empty())
    }
}

/// Upper bound on decoded runs per table, so a corrupt table cannot make us
/// allocate without limit (real tables end with their function).
const MAX_RUNS: usize = 1 << 18;

/// A pc-value table decoded into runs `(end pc, value)`: each value applies
/// from the previous run's end up to (not including) its own end. Lookups are
/// then binary searches instead of scans from the function entry, which is
/// what makes repeated lookups in large functions fast.
#[derive(Clone, Debug, Default)]
pub(crate) struct Runs(Vec<(u64, i32)>);

impl Runs {
    /// Decodes table `off` of the function `[entry, end)`; empty if there is
    /// no table. A malformed table keeps the runs decoded before the error,
    /// as a scan would have seen them.
    pub fn decode(view: &TableView<'_>, off: u32, entry: u64, end: u64) -> Runs {
        let Some(mut it) = PcValues::new(view, off, entry) else {
            return Runs::default();
        };
        let mut runs = Vec::new();
        while let Some(run) = it.next() {
            runs.push(run);
            if run.0 >= end || runs.len() >= MAX_RUNS {
                break;
            }
        }
        Runs(runs)
    }

    /// The value in effect at `pc`, if the table covers it.
    pub fn at(&self, pc: u64) -> Option<i32> {
        let i = self.0.partition_point(|&(end, _)| end <= pc);
        self.0.get(i).map(|r| r.1)
    }

    /// Whether there is no table.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The runs as `(start pc, end pc, value)`, from the function entry.
    pub fn spans(&self, entry: u64) -> impl Iterator<Item = (u64, u64, i32)> + '_ {
        let starts = std::iter::once(entry).chain(self.0.iter().map(|r| r.0));
        starts
            .zip(&self.0)
            .map(|(start, &(end, v))| (start, end, v))
    }

    /// The largest value in the table.
    pub fn max(&self) -> Option<i32> {
        self.0.iter().map(|r| r.1).max()
    }
}

/// A function with the pc-value tables a lookup needs decoded; cached per
/// function by [`super::GoTable`].
#[derive(Clone, Debug)]
pub(crate) struct DecodedFunc {
    pub func: Func,
    pub file: Runs,
    pub line: Runs,
    /// `PCDATA_InlTreeIndex` (empty if the function has no inlined calls).
    pub inl: Runs,
}

impl DecodedFunc {
    /// Decodes the file, line and inline-index tables of `func`.
    pub fn decode(view: &TableView<'_>, func: Func) -> DecodedFunc {
        let runs = |off| Runs::decode(view, off, func.entry, func.end);
        let inl = runs(view.pcdata_offset(&func, PCDATA_INL_TREE_INDEX));
        DecodedFunc {
            file: runs(func.pcfile),
            line: runs(func.pcln),
            inl,
            func,
        }
    }
}

/// Iterator over the (end PC, value) runs of one pc-value table.
struct PcValues<'v, 'a> {
    view: &'v TableView<'a>,
    pos: usize,
    pc: u64,
    entry: u64,
    val: i32,
}

impl<'v, 'a> PcValues<'v, 'a> {
    /// Starts table `off` at the function entry; `None` if there is none.
    fn new(view: &'v TableView<'a>, off: u32, entry: u64) -> Option<Self> {
        if off == 0 {
            return None;
        }
        let pos = view.h.pctab.checked_add(to_usize(off.into())?)?;
        Some(PcValues {
            view,
            pos,
            pc: entry,
            entry,
            val: -1,
        })
    }

    /// The next run: the value and the PC where it stops applying.
    fn next(&mut self) -> Option<(u64, i32)> {
        let b = self.view.bytes;
        let uv = uvarint32(b, &mut self.pos)?;
        if uv == 0 && self.pc != self.entry {
            return None;
        }
        // Zig-zag decoding: low bit is the sign.
        let delta = (0u32.wrapping_sub(uv & 1) ^ (uv >> 1)) as i32;
        self.val = self.val.wrapping_add(delta);
        let pcd = uvarint32(b, &mut self.pos)?;
        let step = u64::from(pcd).checked_mul(u64::from(self.view.h.quantum))?;
        self.pc = self.pc.checked_add(step)?;
        Some((self.pc, self.val))
    }
}
