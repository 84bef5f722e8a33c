//! Encode: resolved stacks become one pprof [`Profile`], following the
//! conventions of Go's own profiles.
//!
//! - Sample types by event (`samples/count` and `cpu/nanoseconds` for the
//!   CPU clock), the period, the time range, and comments that say how the
//!   profile was taken and what it lost.
//! - One mapping per mapped file of each process, its main executable
//!   first, with the build ID; a `[kernel.kallsyms]` mapping for kernel
//!   frames.
//! - Locations at runtime addresses, inlined functions innermost first;
//!   `has_*` flags only where symbolization really found that much, so
//!   that `go tool pprof` fills the rest itself when it can.
//! - Labels by [`LabelPolicy`]: `pid`, `tid`, `thread`, `process` always;
//!   the agent adds where a process runs.

use std::collections::HashMap;
use std::sync::Arc;

use super::identity::{ProcKey, ProcMeta};
use super::normalize::MappingRef;
use super::resolve::{lookup_pc, ResolvedLoc};
use super::store::StackKey;
use crate::capture::Event;
use crate::pprof::{FunctionKey, Line, Mapping, Profile, ProfileBuilder};
use crate::symbolize::kernel::Kallsyms;
use crate::symbolize::Frame;

/// Name of the kernel mapping, as perf and pprof spell it.
pub const KERNEL_MAPPING: &str = "[kernel.kallsyms]";

/// A stack ready to encode.
pub struct ReadyStack {
    pub key: Arc<StackKey>,
    pub meta: Arc<ProcMeta>,
    pub thread: Arc<str>,
    /// The user frames kept, named where possible.
    pub user: Arc<[ResolvedLoc]>,
    pub samples: u64,
    pub weight: u64,
}

/// Facts about the capture that go into the profile's header.
pub struct Header {
    pub event: Event,
    pub frequency: u64,
    /// Wall-clock start, ns since the epoch.
    pub start_unix_nanos: i64,
    pub duration_nanos: i64,
    /// How the profile was made (the command line, or what the agent was
    /// asked), for the first comment.
    pub command: String,
    pub lost: u64,
    /// Stacks cut at an address in no executable mapping.
    pub truncated: u64,
    /// BPF program run time and count (zero unless kernel.bpf_stats_enabled).
    pub bpf_run_ns: u64,
    pub bpf_run_cnt: u64,
    /// Off-CPU waits the per-CPU rate limit did not record.
    pub rate_limited: u64,
    /// More comments (what the Go label walk dropped or cut).
    pub notes: Vec<String>,
}

/// Which labels samples carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabelPolicy {
    /// `pid`, `tid`, `thread`, `process`.
    Process,
    /// Those, plus `exe`, `container_id`, `namespace`, `pod`, `container`
    /// where known: what a node-wide profile is filtered by.
    Node,
}

/// Builds the profile. `kernel` names kernel frames (`None`: addresses
/// only, with the kernel text range recorded for later symbolization).
pub fn build(
    stacks: &[&ReadyStack],
    header: &Header,
    kernel: Option<&Kallsyms>,
    policy: LabelPolicy,
) -> Profile {
    let mut b = ProfileBuilder::new();
    write_header(&mut b, header);
    let mapping_ids = add_mappings(&mut b, stacks);
    let kernel_mapping = if stacks.iter().any(|s| !s.key.kernel.is_empty()) {
        add_kernel_mapping(&mut b, kernel)
    } else {
        0
    };

    let mut flags: HashMap<u64, MappingFlags> = HashMap::new();
    // (mapping id, process for unmapped addresses, address, leaf) -> id.
    let mut locations: HashMap<(u64, Option<ProcKey>, u64, bool), u64> = HashMap::new();
    let mut sorted: Vec<&&ReadyStack> = stacks.iter().collect();
    // Deterministic output: same capture, same bytes.
    sorted.sort_by(|a, b| {
        let (x, y) = (&a.key, &b.key);
        (x.proc, x.tid, x.state, &x.user, &x.kernel, &x.go, a.samples)
            .cmp(&(y.proc, y.tid, y.state, &y.user, &y.kernel, &y.go, b.samples))
    });
    for s in sorted {
        let mut ids = Vec::with_capacity(s.key.kernel.len() + s.user.len());
        for (i, &addr) in s.key.kernel.iter().enumerate() {
            let leaf = i == 0;
            let id = *locations
                .entry((kernel_mapping, None, addr, leaf))
                .or_insert_with(|| {
                    let lines = kernel
                        .and_then(|k| k.lookup(lookup_pc(addr, leaf)))
                        .map(|f| vec![line(&mut b, &f)])
                        .unwrap_or_default();
                    b.add_location(kernel_mapping, addr, lines)
                });
            ids.push(id);
        }
        for (i, loc) in s.user.iter().enumerate() {
            let leaf = i == 0;
            let mapping_id = loc
                .mapping
                .as_ref()
                .and_then(|m| mapping_ids.get(&mapping_key(m)).copied())
                .unwrap_or(0);
            // Unmapped addresses of different processes must not share a
            // location; mapped ones are distinct through their mapping.
            let proc_key = (mapping_id == 0).then_some(s.key.proc);
            let id = *locations
                .entry((mapping_id, proc_key, loc.addr, leaf))
                .or_insert_with(|| {
                    let lines = match &loc.frames {
                        Some(frames) => {
                            flags.entry(mapping_id).or_default().note(frames);
                            frames.iter().map(|f| line(&mut b, f)).collect()
                        }
                        None => Vec::new(),
                    };
                    b.add_location(mapping_id, loc.addr, lines)
                });
            ids.push(id);
        }
        let mut labels = sample_labels(&mut b, s, policy);
        if header.event.off_cpu() {
            labels.push(b.str_label("thread_state", s.key.state.label(&s.user)));
        }
        b.add_sample(ids, vec![s.samples as i64, value(s, header) as i64], labels);
    }
    for (id, f) in flags {
        if let Some(m) = b.mapping_mut(id) {
            f.apply(m);
        }
    }
    b.finish()
}

/// A stack's time value: its summed weight, except for on-CPU stacks of a
/// wall profile, which count one period per sample (fgprof's rule), so
/// that running and waiting share one unit whatever the clock.
fn value(s: &ReadyStack, h: &Header) -> u64 {
    if h.event == Event::Wall && !s.key.state.is_off_cpu() {
        s.samples.saturating_mul(1_000_000_000 / h.frequency.max(1))
    } else {
        s.weight
    }
}

fn sample_labels(
    b: &mut ProfileBuilder,
    s: &ReadyStack,
    policy: LabelPolicy,
) -> Vec<crate::pprof::Label> {
    let m = &s.meta;
    let mut labels = vec![
        b.num_label("pid", i64::from(m.pid())),
        b.num_label("tid", i64::from(s.key.tid)),
        b.str_label("thread", &s.thread),
        b.str_label("process", &m.comm),
    ];
    if policy == LabelPolicy::Node {
        let l = m.labels();
        for (k, v) in [
            ("exe", &m.exe),
            ("container_id", &l.container_id),
            ("namespace", &l.namespace),
            ("pod", &l.pod),
            ("container", &l.container),
        ] {
            if !v.is_empty() {
                labels.push(b.str_label(k, v));
            }
        }
    }
    // Go's pprof labels as string labels, as Go's own CPU profile has
    // them (and `goid` with --go-goid).
    if let Some(go) = &s.key.go {
        labels.extend(go.pprof_labels(b));
    }
    labels
}

/// A mapping's identity among the profile's mappings.
fn mapping_key(m: &MappingRef) -> (ProcKey, u64, u64) {
    (m.proc, m.entry.start, m.entry.inode)
}

/// The user mappings of `stacks`: per process, its main executable first.
fn add_mappings(
    b: &mut ProfileBuilder,
    stacks: &[&ReadyStack],
) -> HashMap<(ProcKey, u64, u64), u64> {
    let mut refs: HashMap<(ProcKey, u64, u64), &Arc<MappingRef>> = HashMap::new();
    for s in stacks {
        for m in s.user.iter().filter_map(|l| l.mapping.as_ref()) {
            refs.entry(mapping_key(m)).or_insert(m);
        }
    }
    let mut order: Vec<&Arc<MappingRef>> = refs.into_values().collect();
    order.sort_by_key(|m| (m.proc, !m.is_main, m.entry.start, m.entry.inode));
    let mut ids = HashMap::new();
    for m in order {
        let mapping = Mapping {
            memory_start: m.entry.start,
            memory_limit: m.entry.end,
            file_offset: m.entry.offset,
            filename: b.intern(m.path()),
            build_id: b.intern(m.build_id()),
            ..Mapping::default()
        };
        ids.insert(mapping_key(m), b.add_mapping(mapping));
    }
    ids
}

/// Adds the `[kernel.kallsyms]` mapping, with the running kernel's build
/// ID, and returns its id.
///
/// Symbolized, it spans the kernel symbols known. Raw, it records the
/// kernel text as perf does, so that a vmlinux can name the frames later
/// despite KASLR: `memory_start` and `memory_limit` are the runtime
/// `_stext` and `_etext`, and `file_offset` is the runtime `_stext` again
/// (perf's pgoff for the kernel map). pprof reads a kernel mapping whose
/// offset equals its start this way, with `_stext` its default relocation
/// symbol. When kallsyms hides addresses, the mapping spans everything and
/// the frames can only be named from a kallsyms copy.
pub fn add_kernel_mapping(b: &mut ProfileBuilder, kernel: Option<&Kallsyms>) -> u64 {
    let (start, limit, offset) = match kernel.and_then(Kallsyms::range) {
        Some((start, limit)) => (start, limit, 0),
        None => match crate::symbolize::kernel::text_range() {
            Some((stext, etext)) => (stext, etext, stext),
            None => (0, u64::MAX, 0),
        },
    };
    let build_id = crate::symbolize::kernel::build_id().unwrap_or_default();
    let m = Mapping {
        memory_start: start,
        memory_limit: limit,
        file_offset: offset,
        filename: b.intern(KERNEL_MAPPING),
        build_id: b.intern(&build_id),
        ..Mapping::default()
    };
    b.add_mapping(m)
}

/// The header: sample types, period, time, comments.
fn write_header(b: &mut ProfileBuilder, h: &Header) {
    let period = 1_000_000_000 / h.frequency.max(1) as i64;
    match h.event {
        Event::CpuClock => {
            b.sample_types(&[("samples", "count"), ("cpu", "nanoseconds")]);
            b.period("cpu", "nanoseconds", period);
        }
        Event::Cycles => {
            b.sample_types(&[("samples", "count"), ("cycles", "count")]);
            b.period("cycles", "count", 1);
        }
        Event::OffCpu => {
            b.sample_types(&[("samples", "count"), ("off_cpu", "nanoseconds")]);
            b.period("off_cpu", "nanoseconds", period);
        }
        Event::Wall => {
            // fgprof's convention, which `go tool pprof` users know.
            b.sample_types(&[("samples", "count"), ("time", "nanoseconds")]);
            b.period("wallclock", "nanoseconds", period);
        }
    }
    b.time(h.start_unix_nanos, h.duration_nanos);
    b.comment(&format!("rprof-bpf: {}", h.command));
    b.comment(&format!(
        "event={} frequency={}Hz lost_samples={}",
        h.event.name(),
        h.frequency,
        h.lost
    ));
    if h.event.off_cpu() {
        b.comment(&format!(
            "off-CPU: waits of at least {:.1} ms kept with their length, shorter ones with probability length/period and weight period; rate_limited={}",
            period as f64 / 1e6,
            h.rate_limited
        ));
    }
    if h.truncated > 0 {
        b.comment(&format!(
            "truncated_stacks={} (cut at a return address in no executable mapping)",
            h.truncated
        ));
    }
    if h.bpf_run_cnt > 0 {
        b.comment(&format!(
            "bpf_run_time_ns={} bpf_run_count={}",
            h.bpf_run_ns, h.bpf_run_cnt
        ));
    }
    for n in &h.notes {
        b.comment(n);
    }
}

/// A pprof line for a frame, interning its function.
pub fn line(b: &mut ProfileBuilder, f: &Frame) -> Line {
    let key = FunctionKey {
        name: f.function.clone(),
        system_name: f.function.clone(),
        filename: f.file.clone(),
        start_line: i64::from(f.start_line),
    };
    Line {
        function_id: b.function(&key),
        line: i64::from(f.line),
        column: 0,
    }
}

/// What symbolization achieved in one mapping: pprof's `has_*` flags must
/// only claim what is really there, or `go tool pprof` will not try to fill
/// the gaps itself.
#[derive(Default)]
pub struct MappingFlags {
    functions: bool,
    filenames: bool,
    lines: bool,
    inlines: bool,
}

impl MappingFlags {
    /// Records what one location's frames provide.
    pub fn note(&mut self, frames: &[Frame]) {
        self.functions |= !frames.is_empty();
        self.filenames |= frames.iter().any(|f| !f.file.is_empty());
        self.lines |= frames.iter().any(|f| f.line != 0);
        self.inlines |= frames.iter().any(|f| f.inlined);
    }

    /// Sets the mapping's `has_*` flags.
    pub fn apply(&self, m: &mut Mapping) {
        m.has_functions = self.functions;
        m.has_filenames = self.filenames;
        m.has_line_numbers = self.lines;
        m.has_inline_frames = self.inlines;
    }
}
