//! Encoding: counted stacks, their mappings and symbols become one pprof
//! [`Profile`], following the conventions of Go's own CPU profiles.

use std::collections::HashMap;

use crate::aggregate::Aggregate;
use crate::capture::Event;
use crate::normalize::{Normalized, Normalizer};
use crate::pprof::{FunctionKey, Line, Mapping, Profile, ProfileBuilder};
use crate::process::ProcessTable;
use crate::symbolize::{Frame, SymbolFile, Symbolizer};

/// Facts about the capture that go into the profile's header.
pub struct Meta {
    pub event: Event,
    pub frequency: u64,
    /// Wall-clock start, ns since the epoch.
    pub start_unix_nanos: i64,
    pub duration_nanos: i64,
    /// The command line, for the comment.
    pub command: String,
    pub lost: u64,
    /// BPF program run time and count (zero unless kernel.bpf_stats_enabled).
    pub bpf_run_ns: u64,
    pub bpf_run_cnt: u64,
}

/// A user address of a process: (pid, address, is it the leaf). A leaf is
/// looked up as is, a return address one byte earlier, so the two can name
/// different lines.
type AddrKey = (u32, u64, bool);

/// Name of the kernel mapping, as perf and pprof spell it.
pub const KERNEL_MAPPING: &str = "[kernel.kallsyms]";

/// Builds the profile. With `symbolizer` `None`, locations carry addresses
/// and mappings only (`--no-symbolize`).
pub fn build(
    agg: &Aggregate,
    procs: &ProcessTable,
    mut symbolizer: Option<&mut Symbolizer>,
    meta: &Meta,
) -> Profile {
    let mut b = ProfileBuilder::new();
    header(&mut b, meta);

    // Normalize every distinct user address once; note which are leaves,
    // since a return address is looked up one byte earlier.
    let mut norm = Normalizer::new(procs);
    let mut user_addrs: HashMap<AddrKey, Option<Normalized>> = HashMap::new();
    for (key, _) in agg.stacks() {
        for (i, &addr) in key.user.iter().enumerate() {
            user_addrs
                .entry((key.pid, addr, i == 0))
                .or_insert_with(|| norm.normalize(key.pid, addr));
        }
    }

    // Mappings: per process, the main executable first.
    let mut order: Vec<usize> = (0..norm.mappings().len()).collect();
    order.sort_by_key(|&i| {
        let m = &norm.mappings()[i];
        (m.pid, !m.is_main, m.entry.start)
    });
    let mut mapping_ids = vec![0u64; norm.mappings().len()];
    for i in order {
        let m = &norm.mappings()[i];
        let build_id = m.binary.as_ref().and_then(|b| b.identity()).unwrap_or("");
        let mapping = Mapping {
            memory_start: m.entry.start,
            memory_limit: m.entry.end,
            file_offset: m.entry.offset,
            filename: b.intern(m.entry.path.as_deref().unwrap_or("")),
            build_id: b.intern(build_id),
            ..Mapping::default()
        };
        mapping_ids[i] = b.add_mapping(mapping);
    }

    // Symbolize per binary, in one batch each.
    let mut frames: HashMap<AddrKey, Vec<Frame>> = HashMap::new();
    if let Some(sym) = symbolizer.as_deref_mut() {
        // Per mapping: (address key, file offset to look up).
        let mut per_mapping: HashMap<usize, Vec<(AddrKey, u64)>> = HashMap::new();
        for (&k, n) in &user_addrs {
            if let Some(n) = n {
                let lookup = if k.2 {
                    n.file_offset
                } else {
                    n.file_offset.saturating_sub(1)
                };
                per_mapping.entry(n.mapping).or_default().push((k, lookup));
            }
        }
        for (mi, reqs) in per_mapping {
            let m = &norm.mappings()[mi];
            let Some(file) = m.binary.as_deref().and_then(SymbolFile::from_binary) else {
                continue;
            };
            let (keys, vaddrs): (Vec<_>, Vec<u64>) = reqs
                .iter()
                .filter_map(|&(k, off)| Some((k, file.vaddr(off, m.entry.offset)?)))
                .unzip();
            for (k, f) in keys.into_iter().zip(sym.symbolize_file(&file, &vaddrs)) {
                if !f.is_empty() {
                    frames.insert(k, f);
                }
            }
        }
    }

    // Kernel mapping, only if some sample has kernel frames.
    let has_kernel = agg.stacks().any(|(k, _)| !k.kernel.is_empty());
    let kernel_mapping = if has_kernel {
        add_kernel_mapping(&mut b, symbolizer.as_deref())
    } else {
        0
    };

    let mut flags: HashMap<u64, MappingFlags> = HashMap::new();
    let mut locations: HashMap<(u64, u32, u64, bool), u64> = HashMap::new();
    let mut location = |b: &mut ProfileBuilder,
                        mapping_id: u64,
                        pid: u32,
                        addr: u64,
                        leaf: bool,
                        f: Option<&Vec<Frame>>| {
        // Unmapped addresses of different processes must not share a
        // location; mapped ones are distinct through their mapping id.
        let pid_key = if mapping_id == 0 { pid } else { 0 };
        if let Some(&id) = locations.get(&(mapping_id, pid_key, addr, leaf)) {
            return id;
        }
        let lines: Vec<Line> = f
            .map(|frames| frames.iter().map(|fr| line(b, fr)).collect())
            .unwrap_or_default();
        if let Some(frames) = f {
            flags.entry(mapping_id).or_default().note(frames);
        }
        let id = b.add_location(mapping_id, addr, lines);
        locations.insert((mapping_id, pid_key, addr, leaf), id);
        id
    };

    let mut keys: Vec<_> = agg.stacks().collect();
    // Deterministic output: same capture, same bytes.
    keys.sort_by(|a, b| {
        (a.0.pid, a.0.tid, &a.0.user, &a.0.kernel).cmp(&(b.0.pid, b.0.tid, &b.0.user, &b.0.kernel))
    });
    for (key, counts) in keys {
        let mut ids = Vec::with_capacity(key.kernel.len() + key.user.len());
        for (i, &addr) in key.kernel.iter().enumerate() {
            let lookup = if i == 0 { addr } else { addr.saturating_sub(1) };
            let f = symbolizer
                .as_deref()
                .and_then(|s| s.kernel(lookup))
                .map(|f| vec![f]);
            ids.push(location(
                &mut b,
                kernel_mapping,
                key.pid,
                addr,
                i == 0,
                f.as_ref(),
            ));
        }
        for (i, &addr) in key.user.iter().enumerate() {
            let k = (key.pid, addr, i == 0);
            let mapping_id = user_addrs
                .get(&k)
                .copied()
                .flatten()
                .map_or(0, |n| mapping_ids[n.mapping]);
            ids.push(location(
                &mut b,
                mapping_id,
                key.pid,
                addr,
                i == 0,
                frames.get(&k),
            ));
        }
        let proc = procs.get(key.pid);
        // key.pid is an alias for a process whose pid was reused.
        let pid = proc.map_or(key.pid, |p| p.pid);
        let process = proc
            .map(|p| p.comm.clone())
            .filter(|c| !c.is_empty())
            .or_else(|| agg.thread_name(key.pid, pid).map(str::to_owned))
            .unwrap_or_default();
        let labels = vec![
            b.num_label("pid", i64::from(pid)),
            b.num_label("tid", i64::from(key.tid)),
            b.str_label("thread", agg.thread_name(key.pid, key.tid).unwrap_or("")),
            b.str_label("process", &process),
        ];
        b.add_sample(
            ids,
            vec![counts.samples as i64, counts.weight as i64],
            labels,
        );
    }

    for (id, f) in flags {
        if let Some(m) = b.mapping_mut(id) {
            f.apply(m);
        }
    }
    b.finish()
}

/// Adds the `[kernel.kallsyms]` mapping, with the running kernel's build
/// ID, and returns its id.
///
/// Symbolized, it spans the kernel symbols the symbolizer knows. Raw (no
/// kernel symbolizer), it records the kernel text as perf does, so that a
/// vmlinux can name the frames later despite KASLR: `memory_start` and
/// `memory_limit` are the runtime `_stext` and `_etext`, and `file_offset`
/// is the runtime `_stext` again (perf's pgoff for the kernel map). pprof
/// reads a kernel mapping whose offset equals its start this way, with
/// `_stext` its default relocation symbol. When kallsyms hides addresses,
/// the mapping spans everything and the frames can only be named from a
/// kallsyms copy.
pub(crate) fn add_kernel_mapping(b: &mut ProfileBuilder, symbolizer: Option<&Symbolizer>) -> u64 {
    let (start, limit, offset) = match symbolizer.and_then(Symbolizer::kernel_range) {
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
pub(crate) fn header(b: &mut ProfileBuilder, meta: &Meta) {
    let period = 1_000_000_000 / meta.frequency.max(1) as i64;
    match meta.event {
        Event::CpuClock => {
            b.sample_types(&[("samples", "count"), ("cpu", "nanoseconds")]);
            b.period("cpu", "nanoseconds", period);
        }
        Event::Cycles => {
            b.sample_types(&[("samples", "count"), ("cycles", "count")]);
            b.period("cycles", "count", 1);
        }
    }
    b.time(meta.start_unix_nanos, meta.duration_nanos);
    b.comment(&format!("rprof-bpf: {}", meta.command));
    b.comment(&format!(
        "event={} frequency={}Hz lost_samples={}",
        meta.event.name(),
        meta.frequency,
        meta.lost
    ));
    if meta.bpf_run_cnt > 0 {
        b.comment(&format!(
            "bpf_run_time_ns={} bpf_run_count={}",
            meta.bpf_run_ns, meta.bpf_run_cnt
        ));
    }
}

/// A pprof line for a frame, interning its function.
pub(crate) fn line(b: &mut ProfileBuilder, f: &Frame) -> Line {
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
pub(crate) struct MappingFlags {
    functions: bool,
    filenames: bool,
    lines: bool,
    inlines: bool,
}

impl MappingFlags {
    /// Records what one location's frames provide.
    pub(crate) fn note(&mut self, frames: &[Frame]) {
        self.functions |= !frames.is_empty();
        self.filenames |= frames.iter().any(|f| !f.file.is_empty());
        self.lines |= frames.iter().any(|f| f.line != 0);
        self.inlines |= frames.iter().any(|f| f.inlined);
    }

    /// Sets the mapping's `has_*` flags.
    pub(crate) fn apply(&self, m: &mut Mapping) {
        m.has_functions = self.functions;
        m.has_filenames = self.filenames;
        m.has_line_numbers = self.lines;
        m.has_inline_frames = self.inlines;
    }
}
