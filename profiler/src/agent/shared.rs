//! State shared by the capture loop, the HTTP server and the background
//! tasks, and the one way profiles are cut from the window.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Semaphore};

use crate::capture::Event;
use crate::engine::encode::ReadyStack;
use crate::engine::identity::lock;
use crate::engine::store::window::{Filter, Locs, Window};
use crate::symbolize::kernel::Kallsyms;

use super::metrics::{self, Counters};
use super::push::{AppNameFrom, PushPer, Pusher};
use super::symthread::{SymState, SymThread};
use super::{files, labels};

/// State shared by the capture loop, the HTTP server and the background
/// tasks.
pub struct Shared {
    pub window: Mutex<Window>,
    /// Pod and container names from the kubelet's directories (and the
    /// API server): asked by ingest for new processes and by requests for
    /// a pod's UID, so behind a lock of its own.
    pub kube: Arc<Mutex<labels::Kubelet>>,
    pub sym: SymThread,
    pub counters: Arc<Counters>,
    /// Monotonic ns up to which every sample is in the window.
    pub drained: watch::Sender<u64>,
    /// Monotonic ns of the capture loop's last tick, for /healthz.
    pub last_tick: AtomicU64,
    /// The other workers /healthz checks.
    pub health: super::health::Health,
    /// The sampling clock.
    pub event: Event,
    /// Whether off-CPU waits are recorded (`--off-cpu`).
    pub off_cpu: bool,
    pub frequency: u64,
    pub token: Option<String>,
    pub metrics_no_auth: bool,
    pub profile_slots: Arc<Semaphore>,
    pub max_profiles: usize,
    pub window_cap: u64,
    pub sym_cap: u64,
    pub pusher: Option<Arc<Pusher>>,
    pub push_per: PushPer,
    pub app_from: AppNameFrom,
    pub node: String,
    pub files: Option<files::FileSink>,
}

impl Shared {
    /// Resolves the stacks matching `filter` in `[t0, t1)` and hands them,
    /// with the kernel's symbols, to `f` (which builds profiles). Runs on
    /// the symbolizer thread, which owns `sym`.
    ///
    /// `event` picks the stacks: on-CPU samples for the clock's events,
    /// waits for `off-cpu`, both for `wall`.
    pub fn with_ready<R>(
        &self,
        sym: &mut SymState,
        filter: &Filter,
        event: Event,
        (t0, t1): (u64, u64),
        f: impl FnOnce(&[ReadyStack], Option<&Kallsyms>) -> R,
    ) -> R {
        let mut selected = lock(&self.window).select(filter, t0, t1);
        selected.retain(|s| match event {
            Event::Wall => true,
            Event::OffCpu => s.key.state.is_off_cpu(),
            Event::CpuClock | Event::Cycles => !s.key.state.is_off_cpu(),
        });
        let mut ready = Vec::with_capacity(selected.len());
        let mut pending = Vec::new();
        for s in selected {
            let r = ReadyStack {
                key: s.key,
                meta: s.meta,
                thread: s.thread,
                user: Arc::from(Vec::new()),
                samples: s.samples,
                weight: s.weight,
            };
            match s.locs {
                Locs::Ready(locs) => ready.push(ReadyStack { user: locs, ..r }),
                Locs::Pending(maps) => pending.push((s.id, r, maps)),
            }
        }
        if !pending.is_empty() {
            let stacks: Vec<(&[u64], &_)> = pending
                .iter()
                .map(|(_, r, maps)| (&r.key.user[..maps.len()], maps))
                .collect();
            let resolved = sym.resolve(&stacks);
            let mut store = Vec::with_capacity(resolved.len());
            for ((id, r, _), locs) in pending.into_iter().zip(resolved) {
                store.push((id, r.key.clone(), locs.clone()));
                ready.push(ReadyStack { user: locs, ..r });
            }
            lock(&self.window).store(store);
        }
        let kernel = if ready.iter().any(|s| !s.key.kernel.is_empty()) {
            sym.kernel()
        } else {
            None
        };
        f(&ready, kernel)
    }

    /// Lost samples so far.
    pub fn lost(&self) -> u64 {
        self.counters.lost()
    }

    /// Waits until every sample before `t1` is in the window (at most a
    /// few ticks after `t1`).
    pub async fn wait_drained(&self, t1: u64) {
        let mut rx = self.drained.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(3), rx.wait_for(|&d| d >= t1)).await;
    }

    /// The values `/metrics` reads from the window and elsewhere.
    pub fn gauges(&self) -> metrics::Gauges {
        let ((procs, samples, stacks), bytes) = {
            let w = lock(&self.window);
            (w.sizes(), w.bytes())
        };
        let c = &self.counters;
        metrics::Gauges {
            samples: c.samples(),
            lost: c.lost(),
            processes_tracked: c.live_processes(),
            processes_in_window: procs as u64,
            window_samples: samples as u64,
            window_stacks: stacks as u64,
            window_bytes: bytes as u64,
            window_bytes_limit: self.window_cap,
            open_binaries: c.open_binaries(),
            symbol_cache_limit: self.sym_cap,
            push_queue: self.pusher.as_ref().map_or(0, |p| p.queued() as u64),
            output_bytes: self.files.as_ref().map_or(0, |f| f.total()),
            profile_requests_in_flight: (self.max_profiles - self.profile_slots.available_permits())
                as u64,
        }
    }
}
