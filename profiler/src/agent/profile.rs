//! pprof profiles from the window: the same conventions as
//! [`crate::encode`] (header, mappings with the main executable first,
//! locations at runtime addresses, inlined frames innermost first), built
//! from stacks resolved ahead of time, with the agent's container and pod
//! labels on every sample.

use std::collections::HashMap;
use std::sync::Arc;

use super::resolve::{MappingInfo, ResolvedLoc};
use super::window::{ProcId, ProcMeta};
use crate::capture::Event;
use crate::encode::{self, MappingFlags, Meta};
use crate::pprof::{Mapping, Profile, ProfileBuilder};
use crate::symbolize::Symbolizer;

/// A stack ready to encode: counts, thread name and resolved user frames.
pub struct ReadyStack {
    pub proc: ProcId,
    pub tid: u32,
    pub thread: Arc<str>,
    pub kernel: Box<[u64]>,
    pub user: Arc<[ResolvedLoc]>,
    pub samples: u64,
    pub weight: u64,
}

/// What goes into the profile's header.
pub struct Header {
    pub event: Event,
    pub frequency: u64,
    pub start_unix_ns: i64,
    pub duration_ns: i64,
    /// What the profile covers, for the comment.
    pub description: String,
    pub lost: u64,
}

/// Builds one profile from `stacks` (any subset of a selection).
pub fn build(
    stacks: &[&ReadyStack],
    procs: &HashMap<ProcId, Arc<ProcMeta>>,
    kernel: Option<&Symbolizer>,
    h: &Header,
) -> Profile {
    let mut b = ProfileBuilder::new();
    encode::header(
        &mut b,
        &Meta {
            event: h.event,
            frequency: h.frequency,
            start_unix_nanos: h.start_unix_ns,
            duration_nanos: h.duration_ns,
            command: format!("agent {}", h.description),
            lost: h.lost,
            bpf_run_ns: 0,
            bpf_run_cnt: 0,
        },
    );

    // Mappings: per process, its main executable first.
    let mut infos: HashMap<(ProcId, u64), &Arc<MappingInfo>> = HashMap::new();
    for s in stacks {
        for m in s.user.iter().filter_map(|l| l.mapping.as_ref()) {
            infos.entry((m.proc, m.start)).or_insert(m);
        }
    }
    let pid_of = |p: ProcId| procs.get(&p).map_or(0, |m| m.pid);
    let mut order: Vec<&Arc<MappingInfo>> = infos.values().copied().collect();
    order.sort_by_key(|m| (pid_of(m.proc), m.proc, !m.is_main, m.start));
    let mut mapping_ids: HashMap<(ProcId, u64), u64> = HashMap::new();
    for m in order {
        let mapping = Mapping {
            memory_start: m.start,
            memory_limit: m.end,
            file_offset: m.offset,
            filename: b.intern(&m.path),
            build_id: b.intern(&m.build_id),
            ..Mapping::default()
        };
        mapping_ids.insert((m.proc, m.start), b.add_mapping(mapping));
    }

    let kernel_mapping = if stacks.iter().any(|s| !s.kernel.is_empty()) {
        encode::add_kernel_mapping(&mut b, kernel)
    } else {
        0
    };

    let mut flags: HashMap<u64, MappingFlags> = HashMap::new();
    // (mapping id, process for unmapped addresses, address, leaf) -> location.
    let mut locations: HashMap<(u64, ProcId, u64, bool), u64> = HashMap::new();
    let mut sorted: Vec<&&ReadyStack> = stacks.iter().collect();
    // Deterministic output.
    sorted.sort_by(|a, b| {
        (pid_of(a.proc), a.proc, a.tid, &a.kernel, a.samples).cmp(&(
            pid_of(b.proc),
            b.proc,
            b.tid,
            &b.kernel,
            b.samples,
        ))
    });
    for s in sorted {
        let mut ids = Vec::with_capacity(s.kernel.len() + s.user.len());
        for (i, &addr) in s.kernel.iter().enumerate() {
            let leaf = i == 0;
            let id = *locations
                .entry((kernel_mapping, 0, addr, leaf))
                .or_insert_with(|| {
                    let lookup = if leaf { addr } else { addr.saturating_sub(1) };
                    let lines = kernel
                        .and_then(|k| k.kernel(lookup))
                        .map(|f| vec![encode::line(&mut b, &f)])
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
                .and_then(|m| mapping_ids.get(&(m.proc, m.start)).copied())
                .unwrap_or(0);
            // Unmapped addresses of different processes must not share a
            // location; mapped ones are distinct through their mapping.
            let proc_key = if mapping_id == 0 { s.proc } else { 0 };
            let id = *locations
                .entry((mapping_id, proc_key, loc.addr, leaf))
                .or_insert_with(|| {
                    let lines = match &loc.frames {
                        Some(frames) => {
                            flags.entry(mapping_id).or_default().note(frames);
                            frames.iter().map(|f| encode::line(&mut b, f)).collect()
                        }
                        None => Vec::new(),
                    };
                    b.add_location(mapping_id, loc.addr, lines)
                });
            ids.push(id);
        }
        let mut labels = vec![
            b.num_label("tid", i64::from(s.tid)),
            b.str_label("thread", &s.thread),
        ];
        if let Some(m) = procs.get(&s.proc) {
            labels.push(b.num_label("pid", i64::from(m.pid)));
            labels.push(b.str_label("process", &m.comm));
            for (k, v) in [
                ("exe", &m.exe),
                ("container_id", &m.labels.container_id),
                ("namespace", &m.labels.namespace),
                ("pod", &m.labels.pod),
                ("container", &m.labels.container),
            ] {
                if !v.is_empty() {
                    labels.push(b.str_label(k, v));
                }
            }
        }
        b.add_sample(ids, vec![s.samples as i64, s.weight as i64], labels);
    }
    for (id, f) in flags {
        if let Some(m) = b.mapping_mut(id) {
            f.apply(m);
        }
    }
    b.finish()
}
