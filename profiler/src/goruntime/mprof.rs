//! The runtime's profile buckets (`runtime/mprof.go`), read from outside.
//!
//! Layout (amd64; checked against DWARF in the tests): a `bucket` header
//! of six words (`next`, `allnext`, `typ`, `hash`, `size`, `nstk`), the
//! same in every release from 1.19 to 1.27, then `nstk` PCs, then the
//! record: `blockRecord{count float64, cycles int64}` for block and mutex,
//! and for the memory profile `memRecord{active, future[3]}` of
//! `memRecordCycle`s. Those were four words (`allocs, frees, alloc_bytes,
//! free_bytes`) up to at least 1.23 and are two (`allocs, frees`; bytes are
//! objects × the bucket's `size`) in 1.27. Since every object of a bucket
//! has the bucket's size, the four-word form always has `alloc_bytes =
//! allocs × size` and `free_bytes = frees × size`: for releases after 1.23
//! we tell the forms apart by that invariant, read from the data, rather
//! than guess at the release that changed it. All buckets of a kind are
//! chained through `allnext` from `mbuckets`, `bbuckets` or `xbuckets`.
//!
//! The heap profile is published per GC cycle: mallocs and frees are
//! counted in `future[(cycle+2)%3]` and `future[(cycle+1)%3]`, and folded
//! into `active` when a cycle's sweep ends. `runtime.MemProfile` first
//! folds `future[cycle%3]` (pending when a GC ended its mark phase but did
//! not flush yet) and, when every `active` is still empty (no GC yet), all
//! three. We compute the same sums without writing anything.

use super::memory::word;
use super::vars::Var;
use super::{GoProcess, GoRuntimeError};

/// `bucketType` values.
const MEM_PROFILE: u64 = 1;
const BLOCK_PROFILE: u64 = 2;
const MUTEX_PROFILE: u64 = 3;
/// Bytes of the bucket header.
const HEADER: usize = 48;
/// `memRecord`: four cycles of four words (two words from 1.24-1.27 on).
const MEM_RECORD: usize = 128;
const MEM_RECORD_SHORT: usize = 64;
const BLOCK_RECORD: usize = 16;
/// The deepest stack any release records (GODEBUG profstackdepth caps at
/// 1024); deeper means we are not looking at a bucket.
const MAX_STACK: u64 = 1024;
/// A bound on the list walk, so a corrupt (cyclic) list cannot hang us.
const MAX_BUCKETS: usize = 10_000_000;

/// Which bucket list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Memory,
    Block,
    Mutex,
}

impl Kind {
    fn head(self) -> Var {
        match self {
            Kind::Memory => Var::MBuckets,
            Kind::Block => Var::BBuckets,
            Kind::Mutex => Var::XBuckets,
        }
    }

    fn typ(self) -> u64 {
        match self {
            Kind::Memory => MEM_PROFILE,
            Kind::Block => BLOCK_PROFILE,
            Kind::Mutex => MUTEX_PROFILE,
        }
    }

    fn record_len(self) -> usize {
        match self {
            Kind::Memory => MEM_RECORD_SHORT,
            Kind::Block | Kind::Mutex => BLOCK_RECORD,
        }
    }
}

/// One memory-profile cycle's counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct MemCycle {
    pub allocs: u64,
    pub frees: u64,
    pub alloc_bytes: u64,
    pub free_bytes: u64,
}

impl MemCycle {
    /// Cycle `i` of a record in the four-word form.
    fn long(b: &[u8], i: usize) -> MemCycle {
        let o = i * 32;
        MemCycle {
            allocs: word(b, o),
            frees: word(b, o + 8),
            alloc_bytes: word(b, o + 16),
            free_bytes: word(b, o + 24),
        }
    }

    /// Cycle `i` of a record in the two-word form.
    fn short(b: &[u8], i: usize, size: u64) -> MemCycle {
        let o = i * 16;
        let (allocs, frees) = (word(b, o), word(b, o + 8));
        MemCycle {
            allocs,
            frees,
            alloc_bytes: allocs.wrapping_mul(size),
            free_bytes: frees.wrapping_mul(size),
        }
    }

    /// Whether the bytes are the counts times the object size.
    fn consistent(&self, size: u64) -> bool {
        self.alloc_bytes == self.allocs.wrapping_mul(size)
            && self.free_bytes == self.frees.wrapping_mul(size)
    }

    fn add(&mut self, o: &MemCycle) {
        self.allocs = self.allocs.wrapping_add(o.allocs);
        self.frees = self.frees.wrapping_add(o.frees);
        self.alloc_bytes = self.alloc_bytes.wrapping_add(o.alloc_bytes);
        self.free_bytes = self.free_bytes.wrapping_add(o.free_bytes);
    }

    fn is_empty(&self) -> bool {
        self.allocs == 0 && self.frees == 0
    }
}

/// A memory-profile bucket.
#[derive(Clone, Debug)]
pub(crate) struct MemBucket {
    pub stack: Vec<u64>,
    /// The size of every object of this bucket.
    pub size: u64,
    pub active: MemCycle,
    pub future: [MemCycle; 3],
}

/// A block- or mutex-profile bucket.
#[derive(Clone, Debug)]
pub(crate) struct BlockBucket {
    pub stack: Vec<u64>,
    pub count: f64,
    pub cycles: i64,
}

/// One raw bucket: stack and record bytes.
#[derive(Clone)]
struct Raw {
    at: u64,
    size: u64,
    stack: Vec<u64>,
    record: Vec<u8>,
}

/// The memory record's form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MemForm {
    /// `allocs, frees, alloc_bytes, free_bytes` per cycle.
    Long,
    /// `allocs, frees` per cycle.
    Short,
}

impl GoProcess {
    /// Every bucket of `kind`, validated: the right `typ`, a sane depth, and
    /// PCs inside the executable's text or zero.
    fn buckets(&self, kind: Kind) -> Result<Vec<Raw>, GoRuntimeError> {
        let head_addr = self.var(kind.head())?;
        let mut next = self.mem.u64(head_addr)?;
        let mut out = Vec::new();
        let (lo, hi) = self.table.text_range();
        let (lo, hi) = (self.runtime_addr(lo), self.runtime_addr(hi));
        let mut header = [0u8; HEADER];
        while next != 0 {
            if out.len() >= MAX_BUCKETS {
                return Err(self.invalid(
                    kind.head().name(),
                    "more than 10 million buckets (a cycle?)",
                ));
            }
            let at = next;
            self.mem.read(at, &mut header)?;
            let typ = word(&header, 16);
            let nstk = word(&header, 40);
            if typ != kind.typ() || nstk > MAX_STACK {
                return Err(self.invalid(
                    kind.head().name(),
                    format!(
                        "bucket {} at {at:#x} has type {typ} and {nstk} PCs (expected type {})",
                        out.len(),
                        kind.typ()
                    ),
                ));
            }
            let n = nstk as usize;
            let body = self
                .mem
                .read_vec(at + HEADER as u64, n * 8 + kind.record_len())?;
            let stack: Vec<u64> = (0..n).map(|i| word(&body, i * 8)).collect();
            if let Some(pc) = stack.iter().find(|&&pc| !(lo..=hi).contains(&pc)) {
                return Err(self.invalid(
                    kind.head().name(),
                    format!("bucket at {at:#x} has PC {pc:#x} outside the text {lo:#x}..{hi:#x}"),
                ));
            }
            out.push(Raw {
                at,
                size: word(&header, 32),
                stack,
                record: body[n * 8..].to_vec(),
            });
            next = word(&header, 8);
        }
        Ok(out)
    }

    /// The memory-profile buckets with `active` as `runtime.MemProfile`
    /// would compute it right now.
    pub(crate) fn mem_buckets(&self) -> Result<(Vec<MemBucket>, MemForm), GoRuntimeError> {
        let mut raw = self.buckets(Kind::Memory)?;
        let form = self.mem_form(&mut raw)?;
        let cycle = self.mem.u32(self.var(Var::MProfCycle)?)? >> 1;
        let index = (cycle % 3) as usize;
        let mut out: Vec<MemBucket> = raw
            .into_iter()
            .map(|r| {
                let c = |i: usize| match form {
                    MemForm::Long => MemCycle::long(&r.record, i),
                    MemForm::Short => MemCycle::short(&r.record, i, r.size),
                };
                let future = [c(1), c(2), c(3)];
                let mut active = c(0);
                active.add(&future[index]);
                MemBucket {
                    stack: r.stack,
                    size: r.size,
                    active,
                    future,
                }
            })
            .collect();
        if out.iter().all(|b| b.active.is_empty()) {
            // No GC has published yet: Go folds every cycle in.
            for b in &mut out {
                for (i, f) in b.future.iter().enumerate() {
                    if i != index {
                        b.active.add(f);
                    }
                }
            }
        }
        Ok((out, form))
    }

    /// Which record form this runtime uses; for the long form, completes
    /// each record to its 128 bytes.
    fn mem_form(&self, raw: &mut [Raw]) -> Result<MemForm, GoRuntimeError> {
        if self.version.minor <= 23 || self.version.minor >= 27 {
            let form = if self.version.minor <= 23 {
                MemForm::Long
            } else {
                MemForm::Short
            };
            if form == MemForm::Long {
                self.complete_long(raw)?;
            }
            return Ok(form);
        }
        let mut long = raw.to_vec();
        if self.complete_long(&mut long).is_ok()
            && long
                .iter()
                .all(|r| (0..4).all(|i| MemCycle::long(&r.record, i).consistent(r.size)))
        {
            for (r, l) in raw.iter_mut().zip(long) {
                r.record = l.record;
            }
            return Ok(MemForm::Long);
        }
        Ok(MemForm::Short)
    }

    /// Reads the second half of every record of the four-word form.
    fn complete_long(&self, raw: &mut [Raw]) -> Result<(), GoRuntimeError> {
        for r in raw.iter_mut() {
            let rest = r.at + (HEADER + r.stack.len() * 8 + MEM_RECORD_SHORT) as u64;
            let more = self.mem.read_vec(rest, MEM_RECORD - MEM_RECORD_SHORT)?;
            r.record.extend_from_slice(&more);
        }
        Ok(())
    }

    /// The block- or mutex-profile buckets.
    pub(crate) fn block_buckets(&self, kind: Kind) -> Result<Vec<BlockBucket>, GoRuntimeError> {
        Ok(self
            .buckets(kind)?
            .into_iter()
            .map(|r| BlockBucket {
                stack: r.stack,
                count: f64::from_bits(word(&r.record, 0)),
                cycles: word(&r.record, 8) as i64,
            })
            .collect())
    }
}
