//! Finding the runtime's variables: `.symtab` when the binary has one, else
//! the RIP-relative operands of the runtime functions that use them.
//!
//! Each code rule below was read off the disassembly of Go 1.19 and 1.27
//! runtimes and checked against their symbol tables (see the tests). The
//! function lists name the function of each era: 1.23 moved the bodies of
//! `MemProfile`/`BlockProfile`/`MutexProfile` into `*Internal` helpers, and
//! `sync.event` (1.19) became `runtime.mutexevent`. What a rule finds is a
//! candidate only: callers validate it by reading (bucket kinds, slice
//! lengths, plausible rates).

use super::x86::{self, Access, RipRef};
use super::{GoProcess, GoRuntimeError};

/// A runtime variable we read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Var {
    /// `mbuckets`: head of the memory-profile bucket list (`allnext`).
    MBuckets,
    /// `bbuckets`: block-profile buckets.
    BBuckets,
    /// `xbuckets`: mutex-profile buckets.
    XBuckets,
    /// `mProfCycle`: the heap profile's publication cycle (and flushed bit).
    MProfCycle,
    /// `MemProfileRate` (int).
    MemProfileRate,
    /// `disableMemoryProfiling` (bool, set by the linker).
    DisableMemoryProfiling,
    /// `blockprofilerate` (int64, ticks).
    BlockProfileRate,
    /// `mutexprofilerate` (uint64).
    MutexProfileRate,
    /// `ticks.val`: CPU ticks per second, once the runtime measured it.
    TicksPerSecond,
    /// `allgs` (a slice of `*g`).
    Allgs,
    /// `allglen`.
    Allglen,
}

impl Var {
    /// The variable's symbol, when `.symtab` can name it directly: all but
    /// `ticks.val`, a field of `runtime.ticks` whose offset changed (1.21),
    /// which the code rule finds directly.
    fn symbol(self) -> Option<&'static str> {
        (self != Var::TicksPerSecond).then(|| self.name())
    }

    /// The variable's name (its symbol), for errors.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Var::MBuckets => "runtime.mbuckets",
            Var::BBuckets => "runtime.bbuckets",
            Var::XBuckets => "runtime.xbuckets",
            Var::MProfCycle => "runtime.mProfCycle",
            Var::MemProfileRate => "runtime.MemProfileRate",
            Var::DisableMemoryProfiling => "runtime.disableMemoryProfiling",
            Var::BlockProfileRate => "runtime.blockprofilerate",
            Var::MutexProfileRate => "runtime.mutexprofilerate",
            Var::TicksPerSecond => "runtime.ticks",
            Var::Allgs => "runtime.allgs",
            Var::Allglen => "runtime.allglen",
        }
    }
}

/// How a variable is found in code.
enum Rule {
    /// The first access of this kind in the first listed function that has
    /// one.
    First(&'static [&'static str], Access),
    /// In the listed functions, a byte test of `disableMemoryProfiling`
    /// followed closely by an 8-byte store to `MemProfileRate`
    /// (`if disableMemoryProfiling { MemProfileRate = 0 }`): `.0` picks the
    /// byte (false) or the store (true).
    DisableThenStore(bool),
    /// In `allgadd`, the slice whose three words are all referenced.
    SliceHeader(&'static str),
    /// `.0`, else the list head `.1` (0: mbuckets, 1: xbuckets, 2:
    /// bbuckets) in `stkbucket`, which stores a new bucket into the list of
    /// its kind: three address-taking instructions in a row, with distinct
    /// writable targets close together (the three list heads), none of them
    /// the lock taken around them. For binaries where
    /// `BlockProfile`/`MutexProfile` were dead code (no runtime/pprof).
    OrStkbucket(Box<Rule>, usize),
}

/// `mProf_FlushLocked` and `mProf_Flush` are in every binary that
/// allocates; `MemProfile` only where something can read the profile.
const MBUCKETS_USERS: &[&str] = &[
    "runtime.mProf_FlushLocked",
    "runtime.memProfileInternal",
    "runtime.MemProfile",
];
const MPROFCYCLE_USERS: &[&str] = &[
    "runtime.mProf_Flush",
    "runtime.memProfileInternal",
    "runtime.MemProfile",
];

fn rule(v: Var) -> Rule {
    match v {
        Var::MBuckets => Rule::First(MBUCKETS_USERS, Access::Load8),
        Var::MProfCycle => Rule::First(MPROFCYCLE_USERS, Access::Load4),
        Var::BBuckets => Rule::OrStkbucket(
            Box::new(Rule::First(
                &["runtime.blockProfileInternal", "runtime.BlockProfile"],
                Access::Load8,
            )),
            2,
        ),
        Var::XBuckets => Rule::OrStkbucket(
            Box::new(Rule::First(
                &["runtime.mutexProfileInternal", "runtime.MutexProfile"],
                Access::Load8,
            )),
            1,
        ),
        Var::BlockProfileRate => Rule::First(&["runtime.blockevent"], Access::Load8),
        Var::MutexProfileRate => Rule::First(&["runtime.mutexevent", "sync.event"], Access::Load8),
        Var::TicksPerSecond => Rule::First(
            &["runtime.ticksPerSecond", "runtime.tickspersecond"],
            Access::Load8,
        ),
        Var::MemProfileRate => Rule::DisableThenStore(true),
        Var::DisableMemoryProfiling => Rule::DisableThenStore(false),
        Var::Allglen => Rule::First(&["runtime.forEachGRace", "runtime.forEachG"], Access::Load8),
        Var::Allgs => Rule::SliceHeader("runtime.allgadd"),
    }
}

/// Functions that set `MemProfileRate` from `disableMemoryProfiling`.
const DISABLE_SITES: &[&str] = &["runtime.schedinit", "runtime.init", "runtime.mallocinit"];

impl GoProcess {
    /// The runtime address of `v`.
    pub(crate) fn var(&self, v: Var) -> Result<u64, GoRuntimeError> {
        if let Some(sym) = v.symbol() {
            if let Some(Some(addr)) = self.table.symbol_addrs(&[sym]).first() {
                return Ok(self.runtime_addr(*addr));
            }
        }
        let link = self.var_from_code(v)?;
        tracing::debug!(pid = self.pid, var = v.name(), addr = %format_args!("{link:#x}"), "found in code");
        if !self.table.in_data(link) {
            return Err(self.not_found(
                v.name(),
                format!("the code reference points at {link:#x}, outside the data segments"),
            ));
        }
        Ok(self.runtime_addr(link))
    }

    /// The link-time address of `v`, found in the runtime's code.
    pub(crate) fn var_from_code(&self, v: Var) -> Result<u64, GoRuntimeError> {
        self.apply(v, rule(v))
    }

    fn apply(&self, v: Var, rule: Rule) -> Result<u64, GoRuntimeError> {
        let missing = |detail: String| self.not_found(v.name(), detail);
        match rule {
            Rule::OrStkbucket(first, index) => self.apply(v, *first).or_else(|e| {
                let refs = self.refs("runtime.stkbucket")?;
                let leas: Vec<u64> = refs
                    .iter()
                    .filter(|r| r.access == Access::Lea)
                    .map(|r| r.target)
                    .collect();
                let lock = most_common(&leas);
                leas.windows(3)
                    .find(|w| {
                        let (lo, hi) = (w.iter().min(), w.iter().max());
                        let close = matches!((lo, hi), (Some(l), Some(h)) if h - l < 0x200);
                        w[0] != w[1]
                            && w[1] != w[2]
                            && w[0] != w[2]
                            && !w.contains(&lock)
                            && close
                            && w.iter().all(|&a| self.table.in_data(a))
                    })
                    .map(|w| w[index])
                    .ok_or(e)
            }),
            Rule::First(funcs, access) => {
                for f in funcs {
                    if let Some(r) = self.refs(f)?.iter().find(|r| r.access == access) {
                        return Ok(r.target);
                    }
                }
                Err(missing(format!(
                    "no {access:?} reference in {}",
                    funcs.join(" or ")
                )))
            }
            Rule::DisableThenStore(store) => {
                for f in DISABLE_SITES {
                    let refs = self.refs(f)?;
                    for (i, r) in refs.iter().enumerate() {
                        if !matches!(r.access, Access::CmpByte | Access::LoadByte) {
                            continue;
                        }
                        let next = refs[i + 1..].iter().take(3).find(|s| {
                            matches!(s.access, Access::Store8 | Access::StoreImm8)
                                && s.at - r.at < 48
                        });
                        if let Some(s) = next {
                            return Ok(if store { s.target } else { r.target });
                        }
                    }
                }
                Err(missing(format!(
                    "no test of a flag followed by a store in {}",
                    DISABLE_SITES.join(", ")
                )))
            }
            Rule::SliceHeader(f) => {
                let refs = self.refs(f)?;
                let has = |t: u64| refs.iter().any(|r| r.target == t);
                refs.iter()
                    .map(|r| r.target)
                    .filter(|&t| has(t + 8) && has(t + 16))
                    .min()
                    .ok_or_else(|| missing(format!("no slice header referenced in {f}")))
            }
        }
    }

    /// The first address of a variable (in a writable segment, so not a
    /// string constant) taken (`lea`) in function `name`.
    pub(crate) fn first_data_lea(&self, name: &str) -> Option<u64> {
        self.refs(name)
            .ok()?
            .into_iter()
            .find(|r| r.access == Access::Lea && self.table.in_data(r.target))
            .map(|r| r.target)
    }

    /// The RIP-relative references in function `name` (empty if the binary
    /// has no such function: releases differ).
    fn refs(&self, name: &str) -> Result<Vec<RipRef>, GoRuntimeError> {
        let Some((entry, end)) = self.table.function_range(name) else {
            return Ok(Vec::new());
        };
        let len = usize::try_from(end.saturating_sub(entry))
            .unwrap_or(0)
            .min(1 << 16);
        let code = self
            .table
            .code(entry, len)
            .ok_or_else(|| self.not_found("runtime code", format!("{name} is not in the file")))?;
        Ok(x86::rip_refs(code, entry))
    }

    /// The offset of `g` from the FS base (thread pointer): the displacement
    /// of the first FS-relative load in `runtime.stackcheck`, which every
    /// amd64 Go binary has (an assembly function, so stripped binaries too).
    pub(crate) fn tls_g_offset(&self) -> Result<i64, GoRuntimeError> {
        for name in ["runtime.stackcheck.abi0", "runtime.stackcheck"] {
            if let Some((entry, end)) = self.table.function_range(name) {
                let len = usize::try_from(end.saturating_sub(entry))
                    .unwrap_or(0)
                    .min(256);
                if let Some(off) = self.table.code(entry, len).and_then(x86::first_fs_load) {
                    return Ok(off);
                }
            }
        }
        Err(self.not_found(
            "the TLS offset of g",
            "no FS-relative load in runtime.stackcheck",
        ))
    }
}

/// The most frequent value (0 for none).
fn most_common(v: &[u64]) -> u64 {
    let mut counts = std::collections::HashMap::new();
    for &x in v {
        *counts.entry(x).or_insert(0usize) += 1;
    }
    counts
        .into_iter()
        .max_by_key(|&(x, n)| (n, std::cmp::Reverse(x)))
        .map_or(0, |(x, _)| x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::symbolize::go::testutil::{self, Build};

    const ALL: [Var; 10] = [
        Var::MBuckets,
        Var::BBuckets,
        Var::XBuckets,
        Var::MProfCycle,
        Var::MemProfileRate,
        Var::DisableMemoryProfiling,
        Var::BlockProfileRate,
        Var::MutexProfileRate,
        Var::Allgs,
        Var::Allglen,
    ];

    /// Every code rule finds the very address `.symtab` names, in both
    /// toolchains' runtimes, with and without runtime/pprof linked in.
    #[test]
    fn code_rules_agree_with_the_symbol_table() {
        let tcs = testutil::toolchains();
        for tc in &tcs {
            for fixture in ["goruntime", "gonoprof"] {
                let bin = testutil::build_fixture(tc, fixture, Build::default());
                let p = GoProcess::from_file(&bin);
                for v in ALL {
                    let sym = p.table.symbol_addrs(&[v.symbol().unwrap()])[0].unwrap();
                    let code = p
                        .var_from_code(v)
                        .unwrap_or_else(|e| panic!("{}: {e}", tc.version));
                    assert_eq!(code, sym, "{} {fixture}: {}", tc.version, v.name());
                }
                if fixture == "goruntime" {
                    let ticks = p.table.symbol_addrs(&["runtime.ticks"])[0].unwrap();
                    let val = if p.version.minor >= 21 { 24 } else { 16 };
                    assert_eq!(p.var_from_code(Var::TicksPerSecond).unwrap(), ticks + val);
                }
                assert_eq!(p.tls_g_offset().unwrap(), -8, "{} {fixture}", tc.version);
            }
        }
    }
}
