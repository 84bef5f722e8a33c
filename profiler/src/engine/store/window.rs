//! The agent's store: every sample of the last `--retain` seconds.
//!
//! Samples are kept as small timed events pointing at interned stacks, so
//! a time range can be cut exactly (an HTTP request's `seconds`, a push
//! window) while identical stacks are stored once. A stack is freed with
//! its last event, and a process (its [`ProcMeta`]) with its last stack,
//! so memory follows the retention, not the number of processes that ever
//! ran; a memory cap evicts the oldest events early if it is reached.
//!
//! Nothing here reads `/proc` or opens files: the window sits behind a
//! lock that HTTP handlers take, and every slow step happens in ingest,
//! before the lock.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use super::{Added, StackEntry, StackId, StackKey, StackTable, Store};
use crate::engine::identity::{ProcKey, ProcMeta};
use crate::engine::ingest::{Ingested, Normalized};
use crate::engine::normalize::UserMaps;
use crate::engine::resolve::ResolvedLoc;

/// One sample: when, which stack, how much.
#[derive(Clone, Copy)]
struct Event {
    /// CLOCK_MONOTONIC ns, as `bpf_ktime_get_ns` reports it.
    time_ns: u64,
    stack: StackId,
    /// The sample's weight (ns of CPU for cpu-clock, cycles for the PMU,
    /// ns blocked for off-CPU): 64 bits, since none of these fits 32.
    weight: u64,
}

/// Which processes a profile covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Filter {
    All,
    /// One process: pid and start time, so a reused pid is not included.
    Pid {
        pid: u32,
        start_ticks: u64,
    },
    /// Every process of a container, by a prefix of its ID (12+ hex digits).
    Container(String),
    /// Every process of a pod.
    Pod {
        namespace: String,
        name: String,
    },
}

impl Filter {
    pub fn matches(&self, m: &ProcMeta) -> bool {
        match self {
            Filter::All => true,
            Filter::Pid { pid, start_ticks } => m.pid() == *pid && m.start_ticks == *start_ticks,
            Filter::Container(prefix) => {
                let l = m.labels();
                !l.container_id.is_empty() && l.container_id.starts_with(prefix.as_str())
            }
            Filter::Pod { namespace, name } => {
                let l = m.labels();
                l.namespace == *namespace && l.pod == *name
            }
        }
    }
}

/// A stack's user frames: named already, or what naming them needs.
pub enum Locs {
    Ready(Arc<[ResolvedLoc]>),
    Pending(UserMaps),
}

/// A stack selected for a profile, with its counts over the range.
pub struct SelStack {
    pub id: StackId,
    pub key: Arc<StackKey>,
    pub meta: Arc<ProcMeta>,
    pub thread: Arc<str>,
    pub samples: u64,
    pub weight: u64,
    pub locs: Locs,
}

/// A row of the index page.
pub struct ProcRow {
    pub meta: Arc<ProcMeta>,
    pub live: bool,
    pub samples_per_sec: f64,
}

/// Samples can reach the ring buffer slightly after the instant a drain
/// starts; a range is complete once the drain is this much past its end.
const DRAIN_SLACK_NS: u64 = 5_000_000;

/// The rolling window.
pub struct Window {
    stacks: StackTable,
    events: VecDeque<Event>,
    retain_ns: u64,
    cap_bytes: usize,
    pins: HashMap<u64, u64>,
    next_pin: u64,
    /// Events dropped early because of the memory cap.
    capped: u64,
}

impl Window {
    pub fn new(retain: Duration, cap_bytes: usize) -> Self {
        Window {
            stacks: StackTable::default(),
            events: VecDeque::new(),
            retain_ns: retain.as_nanos() as u64,
            cap_bytes,
            pins: HashMap::new(),
            next_pin: 1,
            capped: 0,
        }
    }

    /// Drops events older than the retention (or than the oldest pinned
    /// range), then the oldest ones while over the memory cap. Runs a few
    /// times a second.
    pub fn expire(&mut self, now: u64) {
        let mut cutoff = now.saturating_sub(self.retain_ns);
        if let Some(&oldest) = self.pins.values().min() {
            cutoff = cutoff.min(oldest);
        }
        while self.events.front().is_some_and(|e| e.time_ns < cutoff) {
            if let Some(e) = self.events.pop_front() {
                self.stacks.release(e.stack, e.weight);
            }
        }
        while self.bytes() > self.cap_bytes {
            let Some(e) = self.events.pop_front() else {
                break;
            };
            self.stacks.release(e.stack, e.weight);
            self.capped += 1;
        }
    }

    /// Events dropped early because of the memory cap, so far.
    pub fn capped(&self) -> u64 {
        self.capped
    }

    /// Estimated memory held by the window.
    pub fn bytes(&self) -> usize {
        self.events.len() * std::mem::size_of::<Event>() + self.stacks.bytes()
    }

    /// Keeps samples from `t0` on past the retention until [`Window::unpin`]:
    /// a 300 s request must not lose its start to a 120 s retention.
    pub fn pin(&mut self, t0: u64) -> u64 {
        let id = self.next_pin;
        self.next_pin += 1;
        self.pins.insert(id, t0);
        id
    }

    pub fn unpin(&mut self, id: u64) {
        self.pins.remove(&id);
    }

    /// The stacks of processes matching `filter` with samples in
    /// `[t0, t1)` (monotonic ns), with their counts over that range.
    pub fn select(&self, filter: &Filter, t0: u64, t1: u64) -> Vec<SelStack> {
        let mut wanted: HashMap<ProcKey, bool> = HashMap::new();
        let mut counts: HashMap<StackId, (u64, u64)> = HashMap::new();
        for e in &self.events {
            if e.time_ns < t0 || e.time_ns >= t1 {
                continue;
            }
            let Some(st) = self.stacks.get(e.stack) else {
                continue;
            };
            let ok = *wanted
                .entry(st.key.proc)
                .or_insert_with(|| filter.matches(&st.meta));
            if ok {
                // A wait is timed by its end: only its part in the range
                // counts.
                let weight = if st.key.state.is_off_cpu() {
                    e.weight.min(e.time_ns - t0)
                } else {
                    e.weight
                };
                let c = counts.entry(e.stack).or_default();
                c.0 += 1;
                c.1 = c.1.saturating_add(weight);
            }
        }
        counts
            .into_iter()
            .filter_map(|(id, (samples, weight))| {
                let st = self.stacks.get(id)?;
                Some(SelStack {
                    id,
                    key: st.key.clone(),
                    meta: st.meta.clone(),
                    thread: st.thread.clone(),
                    samples,
                    weight,
                    locs: locs_of(st),
                })
            })
            .collect()
    }

    /// Stores symbolizations made outside the lock.
    pub fn store(&mut self, resolved: Vec<(StackId, Arc<StackKey>, Arc<[ResolvedLoc]>)>) {
        for (id, key, locs) in resolved {
            self.stacks.set_resolved(id, &key, locs);
        }
    }

    /// Every process with samples in the window, once each.
    pub fn processes(&self) -> Vec<Arc<ProcMeta>> {
        let mut seen: HashMap<ProcKey, Arc<ProcMeta>> = HashMap::new();
        for (_, e) in self.stacks.iter() {
            seen.entry(e.key.proc).or_insert_with(|| e.meta.clone());
        }
        seen.into_values().collect()
    }

    /// Whether some process of the window runs in a container whose ID
    /// starts with `prefix`.
    pub fn has_container(&self, prefix: &str) -> bool {
        let f = Filter::Container(prefix.to_owned());
        self.stacks.iter().any(|(_, e)| f.matches(&e.meta))
    }

    /// The UID of pod `namespace/name` if a process of the window runs
    /// in it.
    pub fn find_pod(&self, namespace: &str, name: &str) -> Option<String> {
        self.stacks.iter().find_map(|(_, e)| {
            let l = e.meta.labels();
            (l.namespace == namespace && l.pod == name).then(|| l.pod_uid.clone())
        })
    }

    /// The processes of the window with their sample rate over the last
    /// `over`, busiest first.
    pub fn rows(&self, now: u64, over: Duration) -> Vec<ProcRow> {
        let since = now.saturating_sub(over.as_nanos() as u64);
        let mut per: HashMap<ProcKey, u64> = HashMap::new();
        for e in self.events.iter().rev() {
            if e.time_ns < since {
                break;
            }
            if let Some(st) = self.stacks.get(e.stack) {
                *per.entry(st.key.proc).or_default() += 1;
            }
        }
        let mut rows: Vec<ProcRow> = self
            .processes()
            .into_iter()
            .map(|meta| ProcRow {
                live: !meta.exited(),
                samples_per_sec: *per.get(&meta.key).unwrap_or(&0) as f64 / over.as_secs_f64(),
                meta,
            })
            .collect();
        rows.sort_by(|a, b| {
            b.samples_per_sec
                .total_cmp(&a.samples_per_sec)
                .then(a.meta.pid().cmp(&b.meta.pid()))
        });
        rows
    }

    /// Sizes for `/metrics`: (processes, samples, stacks).
    pub fn sizes(&self) -> (usize, usize, usize) {
        (self.processes().len(), self.events.len(), self.stacks.len())
    }

    /// Monotonic time up to which every sample has been read, given the
    /// time of a drain that just finished.
    pub fn drained_through(now: u64) -> u64 {
        now.saturating_sub(DRAIN_SLACK_NS)
    }
}

/// A stack's frames as a selection hands them out.
fn locs_of(st: &StackEntry) -> Locs {
    match (&st.resolved, st.user_maps()) {
        (Some(r), _) => Locs::Ready(r.clone()),
        (None, Some(m)) => Locs::Pending(m.clone()),
        // Not normalized (cannot happen after ingest): frames as addresses.
        (None, None) => Locs::Pending(vec![None; st.key.user.len()].into()),
    }
}

impl Store for Window {
    fn add(&mut self, s: &Ingested<'_>) -> Added {
        let added = self.stacks.add(s);
        self.events.push_back(Event {
            time_ns: s.time_ns,
            stack: added.id,
            weight: s.weight,
        });
        added
    }

    fn set_norm(&mut self, id: StackId, norm: Normalized) {
        self.stacks.set_norm(id, norm);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    fn meta(pid: u32, start_ticks: u64) -> Arc<ProcMeta> {
        Arc::new(ProcMeta::new(
            ProcKey {
                pid,
                start_ns: start_ticks,
            },
            start_ticks,
            "p".into(),
            String::new(),
            Default::default(),
        ))
    }

    fn add(w: &mut Window, m: &Arc<ProcMeta>, time_ns: u64, user: &[u64]) {
        let a = w.add(&Ingested {
            meta: m.clone(),
            tid: m.pid(),
            thread: b"t",
            user: Cow::Borrowed(user),
            kernel: &[],
            time_ns,
            weight: 10_000_000,
            state: Default::default(),
            maps_gen: 0,
            epoch: 0,
            go: None,
        });
        if a.needs_norm {
            w.set_norm(
                a.id,
                Normalized {
                    maps: vec![None; user.len()].into(),
                    missed: true,
                    truncated: false,
                    maps_gen: 0,
                },
            );
        }
    }

    #[test]
    fn ranges_are_exact_and_stacks_shared() {
        let m = meta(7, 100);
        let mut w = Window::new(Duration::from_secs(3600), usize::MAX);
        for i in 0..10 {
            add(&mut w, &m, 1000 + i * 1000, &[0x10, 0x20]);
        }
        add(&mut w, &m, 20_000, &[0x30]);
        assert_eq!(w.sizes(), (1, 11, 2), "identical stacks interned once");
        let f = Filter::Pid {
            pid: 7,
            start_ticks: 100,
        };
        let sel = w.select(&f, 3000, 6000);
        assert_eq!(sel.len(), 1);
        assert_eq!((sel[0].samples, sel[0].weight), (3, 30_000_000));
        let other = Filter::Pid {
            pid: 7,
            start_ticks: 101,
        };
        assert!(
            w.select(&other, 0, u64::MAX).is_empty(),
            "another start time"
        );
    }

    #[test]
    fn weights_do_not_saturate_at_32_bits() {
        let m = meta(7, 100);
        let mut w = Window::new(Duration::from_secs(3600), usize::MAX);
        let a = w.add(&Ingested {
            meta: m.clone(),
            tid: 7,
            thread: b"t",
            user: Cow::Borrowed(&[0x10]),
            kernel: &[],
            time_ns: 5,
            weight: 10_000_000_000,
            state: Default::default(),
            maps_gen: 0,
            epoch: 0,
            go: None,
        });
        assert!(a.needs_norm);
        let sel = w.select(&Filter::All, 0, 10);
        assert_eq!(sel[0].weight, 10_000_000_000, "a 10 s off-CPU wait");
    }

    #[test]
    fn retention_and_cap_free_stacks() {
        let m = meta(7, 100);
        let mut w = Window::new(Duration::from_millis(1), usize::MAX);
        let now = 10_000_000_000;
        add(&mut w, &m, 1, &[0x10]);
        add(&mut w, &m, 2, &[0x20]);
        w.expire(now);
        assert_eq!(w.sizes(), (0, 0, 0));

        let mut w = Window::new(Duration::from_secs(3600), 64 << 10);
        for i in 0..2000u64 {
            add(&mut w, &m, now + i, &[0x1000 + i]);
        }
        w.expire(now + 2000);
        assert!(w.bytes() <= 64 << 10, "{} bytes", w.bytes());
        assert!(w.sizes().1 < 2000);
        assert!(w.capped() > 0);
    }

    #[test]
    fn pins_hold_samples_past_retention() {
        let m = meta(7, 100);
        let mut w = Window::new(Duration::from_millis(1), usize::MAX);
        let pin = w.pin(1);
        add(&mut w, &m, 1, &[0x10]);
        w.expire(10_000_000_000);
        assert_eq!(w.sizes().1, 1);
        w.unpin(pin);
        w.expire(10_000_000_000);
        assert_eq!(w.sizes().1, 0);
    }

    #[test]
    fn rows_and_exits() {
        let (a, b) = (meta(7, 100), meta(8, 100));
        let mut w = Window::new(Duration::from_secs(3600), usize::MAX);
        add(&mut w, &a, 1_000, &[0x10]);
        add(&mut w, &a, 2_000, &[0x10]);
        add(&mut w, &b, 3_000, &[0x10]);
        b.mark_exited();
        let rows = w.rows(5_000, Duration::from_secs(1));
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].meta.pid(), 7, "busiest first");
        assert!(rows[0].live && !rows[1].live);
    }
}
