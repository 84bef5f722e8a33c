//! The goroutine profile of another process, encoded as Go's
//! `/debug/pprof/goroutine` (debug=0) encodes it: `goroutine/count`, one
//! sample per distinct stack and label set, with its count.
//!
//! How: walk `runtime.allgs` (a slice of `*g`, `allglen` long); skip dead
//! goroutines and the runtime's own (those whose start function is in
//! package runtime, as `isSystemGoroutine` decides); unwind each from
//! `g.sched` (pc, sp, bp: Go keeps frame pointers on amd64), or, for a
//! goroutine running on a thread while we hold the process stopped, from
//! that thread's registers. Labels are read from `g.labels`: a
//! `map[string]string` up to Go 1.23, a sorted `[]label` from 1.24.
//!
//! Consistency: Go stops the world for its own profile. We stop every
//! thread with ptrace ([`super::freeze`]) for the read, a bounded and
//! measured pause, or (`--no-pause`) read while it runs and say so in the
//! profile's comments.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::pprof::{Profile, ProfileBuilder};

use super::cli::CaptureOptions;
use super::freeze::Frozen;
use super::layout::{Layout, Source};
use super::memory::word;
use super::symbols::Locator;
use super::vars::Var;
use super::{GoProcess, GoRuntimeError};

/// `g.atomicstatus` values (runtime2.go, stable across 1.19-1.27).
const G_RUNNING: u32 = 2;
const G_WAITING: u32 = 4;
const G_DEAD: u32 = 6;
/// `_Gdeadextra` (1.26+): dead, parked on an extra M.
const G_DEAD_EXTRA: u32 = 11;
const G_SCAN: u32 = 0x1000;
/// More goroutines than this means we are not reading `allgs`.
const MAX_GOROUTINES: u64 = 50_000_000;
/// How many times a freeze is redone when a running goroutine's thread was
/// caught outside the goroutine's stack, and how long it runs in between.
const SETTLE_RETRIES: u32 = 5;
const SETTLE_WAIT: Duration = Duration::from_millis(3);
/// Labels read per goroutine, and bytes per key or value.
const MAX_LABELS: usize = 64;
const MAX_LABEL_LEN: u64 = 4096;

pub(crate) struct GoroutineSummary {
    pub pause: Option<Duration>,
    pub goroutines: usize,
}

/// A goroutine's labels, key and value.
type Labels = Vec<(String, String)>;

/// One goroutine as read.
struct G {
    stack: Vec<u64>,
    labels: Labels,
}

pub(crate) fn capture(
    p: &GoProcess,
    opts: &CaptureOptions,
    comments: &[String],
) -> Result<(Profile, GoroutineSummary), GoRuntimeError> {
    let (layout, source) = p.layout()?;
    let allgs = p.var(Var::Allgs)?;
    let allglen = p.var(Var::Allglen)?;
    let max_pause = opts.max_pause.unwrap_or(Duration::from_millis(1000));
    // A running goroutine's stack is read from its thread's registers. A
    // thread stopped inside a signal handler (Go preempts long-running
    // goroutines with SIGURG every 10 ms) or on its system stack is not in
    // the goroutine's code, and the goroutine's saved context is stale: let
    // the process run a moment and stop it again, a few times at most.
    let mut retries = 0;
    let (frozen, read) = loop {
        let frozen = if opts.no_pause {
            None
        } else {
            Some(Frozen::freeze(p.pid)?)
        };
        let read = read_all(p, &layout, allgs, allglen, frozen.as_ref(), max_pause, opts);
        let unsettled = read.as_ref().map_or(0, |r| r.1);
        if unsettled == 0 || frozen.is_none() || retries == SETTLE_RETRIES {
            break (frozen, read.map(|r| r.0));
        }
        retries += 1;
        tracing::debug!(
            pid = p.pid,
            unsettled,
            retries,
            "threads off their goroutine's stack; stopping again"
        );
        drop(frozen);
        std::thread::sleep(SETTLE_WAIT);
    };
    if let (Some(hold), Some(_)) = (opts.hold_pause, &frozen) {
        // Test hook: keep the process stopped, to test a SIGINT now.
        std::thread::sleep(hold.min(max_pause));
    }
    if let Some(f) = &frozen {
        tracing::debug!(pid = p.pid, elapsed = ?f.elapsed(), "goroutines read");
    }
    let pause = frozen.map(Frozen::thaw);
    let gs = read?;
    let mut comments = comments.to_vec();
    comments.push(format!(
        "struct offsets from {}",
        match source {
            Source::Dwarf => "the executable's DWARF",
            Source::Table => "rprof-bpf's table for this Go release",
        }
    ));
    match pause {
        Some(d) => comments.push(format!(
            "all threads stopped for {:.3} ms during the read",
            d.as_secs_f64() * 1e3
        )),
        None => comments.push(
            "--no-pause: read while the process ran; goroutines may have moved during the read"
                .into(),
        ),
    }
    let n = gs.len();
    Ok((
        encode(p, gs, &comments),
        GoroutineSummary {
            pause,
            goroutines: n,
        },
    ))
}

/// Reads every user goroutine; also says how many running goroutines had
/// their thread stopped outside their stack (read from their stale saved
/// context instead).
fn read_all(
    p: &GoProcess,
    l: &Layout,
    allgs: u64,
    allglen: u64,
    frozen: Option<&Frozen>,
    max_pause: Duration,
    opts: &CaptureOptions,
) -> Result<(Vec<G>, usize), GoRuntimeError> {
    let len = p.mem.u64(allglen)?;
    let slice = p.mem.read_vec(allgs, 24)?;
    let (ptr, slen, cap) = (word(&slice, 0), word(&slice, 8), word(&slice, 16));
    if len > MAX_GOROUTINES || slen < len || cap < slen || (len > 0 && ptr == 0) {
        return Err(p.invalid(
            "runtime.allgs",
            format!("allglen {len}, allgs len {slen} cap {cap} at {ptr:#x}"),
        ));
    }
    let ptrs = p.mem.read_vec(ptr, len as usize * 8)?;
    let g_len = [
        l.g_labels,
        l.g_gopc,
        l.g_startpc,
        l.g_waitreason,
        l.g_goid,
        l.g_sched_bp,
    ]
    .into_iter()
    .max()
    .unwrap_or(0) as usize
        + 8;
    let depth = if p.version.minor <= 22 { 32 } else { 128 };
    let mut out = Vec::new();
    // Every g in a few system calls, then every live stack likewise: the
    // pause is then bound by the kernel's copying, not by syscall count.
    let g_ranges: Vec<(u64, usize)> = (0..len as usize)
        .map(|i| (word(&ptrs, i * 8), g_len))
        .collect();
    let g_bytes = p.mem.read_many(&g_ranges);
    let mut walks: Vec<Walk> = Vec::new();
    let mut unsettled = 0;
    let mut reasons: Option<Option<u64>> = None;
    let mut label_cache: std::collections::HashMap<u64, Labels> = std::collections::HashMap::new();
    for (i, g_read) in g_bytes.iter().enumerate() {
        if let Some(f) = frozen {
            if f.elapsed() > max_pause {
                return Err(GoRuntimeError::Freeze {
                    pid: p.pid,
                    detail: format!(
                        "reading {len} goroutines took longer than the {} ms bound; released \
                         (raise --max-pause-ms, or use --no-pause)",
                        max_pause.as_millis()
                    ),
                });
            }
        }
        let gp = word(&ptrs, i * 8);
        if gp == 0 {
            continue;
        }
        let Some(gbuf) = g_read else {
            if frozen.is_some() {
                return Err(p.invalid("runtime.allgs", format!("g {i} at {gp:#x} is unreadable")));
            }
            continue;
        };
        let at = |o: u64| word(gbuf, o as usize);
        let status = (at(l.g_atomicstatus) as u32) & !G_SCAN;
        if status == G_DEAD || status == G_DEAD_EXTRA {
            continue;
        }
        let (lo, hi) = (at(l.g_stack_lo), at(l.g_stack_hi));
        if lo >= hi || hi - lo > 1 << 30 {
            return Err(p.invalid(
                "runtime.allgs",
                format!("g {i} at {gp:#x} has stack {lo:#x}..{hi:#x}"),
            ));
        }
        if is_system(p, at(l.g_startpc)) {
            continue;
        }
        let (mut pc, mut bp, mut sp, mut leaf_is_ip) =
            (at(l.g_sched_pc), at(l.g_sched_bp), at(l.g_sched_sp), false);
        if status == G_RUNNING && frozen.is_some() {
            let regs = frozen.and_then(|f| {
                let m = at(l.g_m);
                let tid = p.mem.u64(m.checked_add(l.m_procid)?).ok()?;
                f.regs(i32::try_from(tid).ok()?)
            });
            match regs {
                Some(regs) if (lo..hi).contains(&regs.sp) => {
                    (pc, bp, sp, leaf_is_ip) = (regs.ip, regs.bp, regs.sp, true);
                }
                _ => unsettled += 1,
            }
        }
        let base = if (lo..hi).contains(&sp) { sp } else { lo };
        walks.push(Walk {
            pc,
            bp,
            base,
            lo,
            hi,
            leaf_is_ip,
        });
        // Label sets are immutable and shared (every goroutine of a
        // pprof.Do region points at the same one): read each once.
        let lp = at(l.g_labels);
        let labels = label_cache
            .entry(lp)
            .or_insert_with(|| read_labels(p, lp).unwrap_or_default())
            .clone();
        let mut g = G {
            stack: Vec::new(),
            labels,
        };
        if opts.details {
            let facts = Facts {
                status,
                reason: gbuf[l.g_waitreason as usize],
                since: at(l.g_waitsince),
                gopc: at(l.g_gopc),
            };
            details(
                p,
                &mut g,
                &facts,
                *reasons.get_or_insert_with(|| wait_reasons(p)),
            );
        }
        out.push(g);
    }
    let snapshot_ranges: Vec<(u64, usize)> = walks
        .iter()
        .map(|w| {
            (
                w.base,
                if w.hi - w.base <= SNAPSHOT {
                    (w.hi - w.base) as usize
                } else {
                    0
                },
            )
        })
        .collect();
    let snapshots = p.mem.read_many(&snapshot_ranges);
    for ((g, w), snap) in out.iter_mut().zip(&walks).zip(&snapshots) {
        let snap = snap.as_deref().filter(|s| !s.is_empty());
        g.stack = unwind(p, w, snap, depth);
    }
    Ok((out, unsettled))
}

/// Where to start a goroutine's frame-pointer walk.
struct Walk {
    /// The resume PC.
    pc: u64,
    bp: u64,
    /// The lowest live stack address (sp, else the stack's low end).
    base: u64,
    lo: u64,
    hi: u64,
    /// `pc` is an instruction address (registers), not a return address.
    leaf_is_ip: bool,
}

/// Live stacks up to this size are read whole, in the batch.
const SNAPSHOT: u64 = 64 << 10;

/// Whether the goroutine started at `startpc` is one of the runtime's own
/// (Go's `isSystemGoroutine` with `fixed = false`, less the finalizer and
/// cleanup goroutines' "running user code" exceptions).
fn is_system(p: &GoProcess, startpc: u64) -> bool {
    let Some((_, name)) = p.table.function(p.link_addr(startpc)) else {
        return false;
    };
    if matches!(
        name.as_str(),
        "runtime.main" | "runtime.corostart" | "runtime.handleAsyncEvent"
    ) {
        return false;
    }
    name.starts_with("runtime.")
}

/// The frame-pointer walk: return addresses from `bp` up, inside the
/// goroutine's stack, read from `snapshot` (the stack from `w.base` up,
/// read in the batch) or frame by frame when the stack was too big.
fn unwind(p: &GoProcess, w: &Walk, snapshot: Option<&[u8]>, depth: usize) -> Vec<u64> {
    let (tlo, thi) = p.table.text_range();
    let text = p.runtime_addr(tlo)..=p.runtime_addr(thi);
    let mut out = Vec::new();
    if !text.contains(&w.pc) {
        return out;
    }
    out.push(if w.leaf_is_ip { w.pc + 1 } else { w.pc });
    let frame_at = |bp: u64| -> Option<(u64, u64)> {
        match snapshot {
            Some(s) if bp >= w.base => {
                let o = (bp - w.base) as usize;
                (o + 16 <= s.len()).then(|| (word(s, o), word(s, o + 8)))
            }
            _ => p
                .mem
                .read_vec(bp, 16)
                .ok()
                .map(|f| (word(&f, 0), word(&f, 8))),
        }
    };
    let mut bp = w.bp;
    while out.len() < depth && bp >= w.lo && bp.saturating_add(16) <= w.hi && bp.is_multiple_of(8) {
        let Some((next, ret)) = frame_at(bp) else {
            break;
        };
        if !text.contains(&ret) {
            break;
        }
        out.push(ret);
        if next <= bp {
            break;
        }
        bp = next;
    }
    out
}

/// A Go string header's bytes.
fn read_string(p: &GoProcess, ptr: u64, len: u64) -> Option<String> {
    if len > MAX_LABEL_LEN || (len > 0 && ptr == 0) {
        return None;
    }
    let b = p.mem.read_vec(ptr, len as usize).ok()?;
    Some(String::from_utf8_lossy(&b).into_owned())
}

/// The labels at `g.labels`.
fn read_labels(p: &GoProcess, labels: u64) -> Option<Vec<(String, String)>> {
    if labels == 0 {
        return Some(Vec::new());
    }
    if p.version.minor >= 24 {
        // *labelMap = LabelSet{list []label}: the slice header itself.
        let h = p.mem.read_vec(labels, 24).ok()?;
        let (ptr, len) = (word(&h, 0), word(&h, 8));
        if len as usize > MAX_LABELS {
            return None;
        }
        let items = p.mem.read_vec(ptr, len as usize * 32).ok()?;
        return (0..len as usize)
            .map(|i| {
                let e = &items[i * 32..];
                Some((
                    read_string(p, word(e, 0), word(e, 8))?,
                    read_string(p, word(e, 16), word(e, 24))?,
                ))
            })
            .collect();
    }
    // *labelMap = *map[string]string: a pointer to the hmap.
    let hmap = p.mem.u64(labels).ok()?;
    read_string_map(p, hmap)
}

/// The entries of a `map[string]string` (classic hmap, Go ≤ 1.23): buckets
/// of 8 tophash bytes, 8 keys, 8 values and an overflow pointer; entries
/// whose tophash is at least `minTopHash` (5) are live, in the new and (if
/// the map is growing) the old bucket array.
fn read_string_map(p: &GoProcess, hmap: u64) -> Option<Vec<(String, String)>> {
    const BUCKET: usize = 8 + 8 * 16 + 8 * 16 + 8;
    if hmap == 0 {
        return Some(Vec::new());
    }
    let h = p.mem.read_vec(hmap, 48).ok()?;
    let (count, b) = (word(&h, 0), h[9]);
    let (buckets, old) = (word(&h, 16), word(&h, 24));
    if count as usize > MAX_LABELS || b > 4 {
        return None;
    }
    let mut out = BTreeMap::new();
    let mut arrays = vec![(buckets, 1u64 << b)];
    if old != 0 && b > 0 {
        arrays.push((old, 1u64 << (b - 1)));
    }
    for (base, n) in arrays {
        for i in 0..n {
            let mut at = base + i * BUCKET as u64;
            for _chain in 0..8 {
                let bucket = p.mem.read_vec(at, BUCKET).ok()?;
                for slot in 0..8 {
                    if bucket[slot] < 5 {
                        continue;
                    }
                    let k = 8 + slot * 16;
                    let v = 8 + 128 + slot * 16;
                    let key = read_string(p, word(&bucket, k), word(&bucket, k + 8))?;
                    let value = read_string(p, word(&bucket, v), word(&bucket, v + 8))?;
                    out.insert(key, value);
                }
                at = word(&bucket, BUCKET - 8);
                if at == 0 {
                    break;
                }
            }
        }
    }
    Some(out.into_iter().collect())
}

/// What `--details` reads of one goroutine.
struct Facts {
    status: u32,
    reason: u8,
    since: u64,
    gopc: u64,
}

/// `--details`: wait reason, minutes waiting and the creating function, as
/// labels (what Go prints at debug=2).
fn details(p: &GoProcess, g: &mut G, f: &Facts, reasons: Option<u64>) {
    let Facts {
        status,
        reason,
        since,
        gopc,
    } = *f;
    if status == G_WAITING {
        if let Some(r) = reasons.and_then(|base| wait_reason(p, base, reason)) {
            g.labels.push(("go_wait_reason".into(), r));
        }
        if since != 0 {
            let now = monotonic_nanos();
            let minutes = now.saturating_sub(since) / 60_000_000_000;
            if minutes >= 1 {
                g.labels
                    .push(("go_wait_minutes".into(), minutes.to_string()));
            }
        }
    }
    if let Some((_, f)) = p.table.function(p.link_addr(gopc).wrapping_sub(1)) {
        g.labels.push(("go_created_by".into(), f));
    }
}

/// Where `runtime.waitReasonStrings` is: `.symtab`, else the array
/// `waitReason.String` indexes.
fn wait_reasons(p: &GoProcess) -> Option<u64> {
    p.table
        .symbol_addrs(&["runtime.waitReasonStrings"])
        .first()
        .copied()
        .flatten()
        .or_else(|| p.first_data_lea("runtime.waitReason.String"))
}

/// `runtime.waitReasonStrings[reason]`, read from the executable (a
/// statically initialized array of string headers).
fn wait_reason(p: &GoProcess, base: u64, reason: u8) -> Option<String> {
    let h = p.table.code(base + u64::from(reason) * 16, 16)?;
    let (ptr, len) = (word(h, 0), word(h, 8));
    if len == 0 || len > 128 {
        return None;
    }
    let s = p.table.code(ptr, len as usize)?;
    Some(String::from_utf8_lossy(s).into_owned())
}

fn monotonic_nanos() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Groups goroutines by stack and labels, as Go's `printCountProfile`.
fn encode(p: &GoProcess, gs: Vec<G>, comments: &[String]) -> Profile {
    let mut b = ProfileBuilder::new();
    b.period("goroutine", "count", 1);
    b.sample_types(&[("goroutine", "count")]);
    for c in comments {
        b.comment(c);
    }
    let mut groups: BTreeMap<(Vec<u64>, Labels), i64> = BTreeMap::new();
    for mut g in gs {
        g.labels.sort();
        *groups.entry((g.stack, g.labels)).or_default() += 1;
    }
    let mut loc = Locator::new(p, &mut b, true);
    for ((stack, labels), count) in groups {
        let ids = loc.locations(&mut b, &stack);
        let labels = labels.iter().map(|(k, v)| b.str_label(k, v)).collect();
        b.add_sample(ids, vec![count], labels);
    }
    b.time(super::heap::now_nanos(), 0);
    b.finish()
}
