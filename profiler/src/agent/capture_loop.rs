//! The agent's capture loop: the engine feeding the shared window.
//!
//! Ingest runs here with no lock held; each sample takes the window's lock
//! only to be counted (and a new stack once more to store its normalized
//! frames). At every tick, right after a drain: exits are handled, old
//! samples expire, `/metrics` gauges are published, and now and then
//! binaries nobody needs are handed to the symbolizer thread to close.

use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use profiler_ebpf::abi::Sample;

use crate::process::events::ProcEvent;

use super::labels::Kubelet;
use super::shared::Shared;
use crate::capture::clock::mono_now;
use crate::capture::{CaptureStats, Sink, StopReason};
use crate::engine::identity::lock;
use crate::engine::ingest::{Ingest, Ingested, Labeler, Normalized};
use crate::engine::store::window::Window;
use crate::engine::store::{Added, StackId, Store};
use crate::engine::Engine;
use crate::process::container::Labels;

/// How often binaries no process or stack needs are closed.
const PRUNE_EVERY: Duration = Duration::from_secs(10);
/// How often the frameless-leaf verdicts are forgotten (they are keyed by
/// process and would otherwise grow with every process that ever ran).
const LEAF_RESET: Duration = Duration::from_secs(60);

/// The window behind the shared lock, as the engine's store.
pub struct SharedWindow(pub Arc<Shared>);

impl Store for SharedWindow {
    fn add(&mut self, s: &Ingested<'_>) -> Added {
        lock(&self.0.window).add(s)
    }

    fn set_norm(&mut self, id: StackId, norm: Normalized) {
        lock(&self.0.window).set_norm(id, norm);
    }
}

/// New processes' labels: their cgroup, named by the kubelet's files.
pub struct KubeLabeler(pub Arc<Mutex<Kubelet>>);

impl Labeler for KubeLabeler {
    fn labels_of(&mut self, pid: u32) -> Labels {
        lock(&self.0).labels_of(pid)
    }
}

/// The capture's sink.
pub struct AgentSink {
    engine: Engine<SharedWindow>,
    shared: Arc<Shared>,
    last_prune: Instant,
}

impl AgentSink {
    pub fn new(mut ingest: Ingest, shared: Arc<Shared>) -> AgentSink {
        ingest.reset_leaf_every(LEAF_RESET);
        AgentSink {
            engine: Engine::new(ingest, SharedWindow(shared.clone())),
            shared,
            last_prune: Instant::now(),
        }
    }

    /// Publishes what `/metrics` reads from the capture and ingest.
    fn publish(&self, stats: &CaptureStats, capped: u64) {
        let c = &self.shared.counters;
        let i = self.engine.ingest.stats();
        c.set_capture(stats.samples, stats.lost);
        c.live_processes_gauge.store(i.live, Ordering::Relaxed);
        c.open_binaries_gauge
            .store(i.open_binaries, Ordering::Relaxed);
        c.processes_seen.store(i.processes, Ordering::Relaxed);
        c.processes_exited.store(i.exited, Ordering::Relaxed);
        c.truncated_stacks
            .store(i.truncated_stacks, Ordering::Relaxed);
        c.window_capped_samples.store(capped, Ordering::Relaxed);
    }
}

impl Sink for AgentSink {
    fn sample(&mut self, s: &Sample) {
        self.engine.add(s);
    }

    fn event(&mut self, e: &ProcEvent) {
        self.engine.event(e);
    }

    fn tick(&mut self, stats: &CaptureStats) -> ControlFlow<StopReason> {
        let _ = self.engine.tick(stats);
        let now = mono_now();
        let capped = {
            let mut w = lock(&self.shared.window);
            w.expire(now);
            w.capped()
        };
        self.publish(stats, capped);
        self.shared
            .drained
            .send_replace(Window::drained_through(now));
        self.shared.last_tick.store(now, Ordering::Relaxed);
        if self.last_prune.elapsed() >= PRUNE_EVERY {
            self.last_prune = Instant::now();
            let closed = self.engine.ingest.prune_binaries();
            self.shared.sym.retire(closed);
        }
        ControlFlow::Continue(())
    }
}
