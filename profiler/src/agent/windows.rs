//! The agent's periodic work: one profile per process (or container) per
//! `--window` for the push queue and the output directory, and giving
//! freed heap back to the system.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::push::{self, PushPer};
use super::shared::Shared;
use super::symthread::SymState;
use crate::capture::clock::{mono_now, mono_to_unix_ns};
use crate::engine::encode::{self, Header, LabelPolicy, ReadyStack};
use crate::engine::identity::{ProcKey, ProcMeta};
use crate::engine::memory;
use crate::engine::store::window::Filter;

/// Every `--window`: one profile per process (or container) of the last
/// window, to the push queue and the output directory. On shutdown, once
/// more for the partial window.
pub(super) async fn window_loop(
    shared: Arc<Shared>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut t0 = mono_now();
    let mut lost0 = shared.lost();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.changed() => true,
        };
        let t1 = mono_now();
        shared.wait_drained(t1).await;
        let lost1 = shared.lost();
        let s = shared.clone();
        let lost = lost1.saturating_sub(lost0);
        let _ = shared
            .sym
            .run(move |sym| window_job(&s, sym, t0, t1, lost))
            .await;
        t0 = t1;
        lost0 = lost1;
        if last {
            return;
        }
    }
}

/// Encodes one window and hands the profiles to the sinks.
fn window_job(shared: &Shared, sym: &mut SymState, t0: u64, t1: u64, lost: u64) {
    let start_ns = mono_to_unix_ns(t0);
    let header = |what: String| Header {
        event: shared.event,
        frequency: shared.frequency,
        start_unix_nanos: start_ns,
        duration_nanos: (t1 - t0) as i64,
        command: format!("agent {what}"),
        lost,
        truncated: 0,
        bpf_run_ns: 0,
        bpf_run_cnt: 0,
        rate_limited: 0,
        notes: Vec::new(),
    };
    let from = start_ns.div_euclid(1_000_000_000);
    let until = (start_ns + (t1 - t0) as i64)
        .div_euclid(1_000_000_000)
        .max(from + 1);
    shared.with_ready(
        sym,
        &Filter::All,
        shared.event,
        (t0, t1),
        |ready, kernel| {
            let mut by_proc: HashMap<ProcKey, Vec<&ReadyStack>> = HashMap::new();
            for s in ready {
                by_proc.entry(s.key.proc).or_default().push(s);
            }
            let per_container = shared.push_per == PushPer::Container;
            for stacks in by_proc.values() {
                let meta = &stacks[0].meta;
                let needs = shared.files.is_some() || (shared.pusher.is_some() && !per_container);
                if !needs {
                    continue;
                }
                let p = encode::build(
                    stacks,
                    &header(format!("window pid={} process={}", meta.pid(), meta.comm)),
                    kernel,
                    LabelPolicy::Node,
                );
                let bytes = crate::pprof::encode_gzip(&p);
                if let Some(files) = &shared.files {
                    files.write(from, meta.pid(), &meta.comm, &bytes);
                }
                if let (Some(pusher), false) = (&shared.pusher, per_container) {
                    pusher.enqueue(push::Item {
                        name: push::app_name(
                            &[meta],
                            PushPer::Process,
                            shared.app_from,
                            &shared.node,
                        ),
                        from,
                        until,
                        body: bytes,
                    });
                }
            }
            if let (Some(pusher), true) = (&shared.pusher, per_container) {
                // Container processes grouped by container; the rest alone.
                let mut groups: HashMap<String, Vec<ProcKey>> = HashMap::new();
                for (proc, stacks) in &by_proc {
                    let id = stacks[0].meta.labels().container_id.clone();
                    let key = if id.is_empty() {
                        format!("pid:{}", proc.pid)
                    } else {
                        id
                    };
                    groups.entry(key).or_default().push(*proc);
                }
                for (key, members) in groups {
                    let stacks: Vec<&ReadyStack> = members
                        .iter()
                        .flat_map(|p| by_proc.get(p).into_iter().flatten().copied())
                        .collect();
                    let metas: Vec<&ProcMeta> = members
                        .iter()
                        .filter_map(|p| by_proc.get(p).map(|s| &*s[0].meta))
                        .collect();
                    let p = encode::build(
                        &stacks,
                        &header(format!("window {key}")),
                        kernel,
                        LabelPolicy::Node,
                    );
                    pusher.enqueue(push::Item {
                        name: push::app_name(
                            &metas,
                            PushPer::Container,
                            shared.app_from,
                            &shared.node,
                        ),
                        from,
                        until,
                        body: crate::pprof::encode_gzip(&p),
                    });
                }
            }
        },
    );
    if let Some(files) = &shared.files {
        files.rotate();
    }
}

/// Heap we must have given back before the janitor trims: trimming walks
/// every arena, so not for small change.
const TRIM_AFTER: usize = 1 << 20;

/// Every second: returns freed heap to the system once our heap shrank
/// from its high-water mark (glibc keeps what a burst of short-lived
/// processes made us allocate: their mapping histories, their window
/// rows, their symbols). Measured on the whole heap, not the window: a
/// burst of processes that barely ran grows the process table far more
/// than the window.
pub(super) async fn janitor(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut high_water = 0usize;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let Some(bytes) = memory::heap_in_use() else {
            return;
        };
        if bytes + TRIM_AFTER < high_water {
            // On the symbolizer thread: trimming takes the allocator's
            // locks, and that thread is the one that grows the heap most.
            let _ = shared.sym.run(|_| memory::trim_heap()).await;
            high_water = bytes;
        } else {
            high_water = high_water.max(bytes);
        }
    }
}
