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

use super::labels::Kubelet;
use super::shared::Shared;
use crate::capture::clock::mono_now;
use crate::capture::{CaptureStats, StopReason};
use crate::engine::identity::lock;
use crate::engine::ingest::{Ingest, Ingested, Labeler, Normalized};
use crate::engine::store::window::Window;
use crate::engine::store::{Added, StackId, Store};
use crate::engine::{Driven, Engine, FrontEnd};
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

/// What the agent does at each tick: expire the window, publish gauges,
/// signal how far the window is complete, and now and then close binaries.
pub struct AgentTick {
    shared: Arc<Shared>,
    last_prune: Instant,
}

/// The capture's sink: the engine feeding the shared window.
pub type AgentSink = Driven<SharedWindow, AgentTick>;

/// The sink for `ingest` and the shared state.
pub fn sink(mut ingest: Ingest, shared: Arc<Shared>) -> AgentSink {
    ingest.reset_leaf_every(LEAF_RESET);
    Driven {
        engine: Engine::new(ingest, SharedWindow(shared.clone())),
        front: AgentTick {
            shared,
            last_prune: Instant::now(),
        },
    }
}

impl AgentTick {
    /// Publishes what `/metrics` reads from the capture and ingest.
    fn publish(&self, ingest: &Ingest, stats: &CaptureStats, capped: u64) {
        let c = &self.shared.counters;
        let i = ingest.stats();
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

impl FrontEnd<SharedWindow> for AgentTick {
    fn tick(
        &mut self,
        engine: &mut Engine<SharedWindow>,
        stats: &CaptureStats,
    ) -> ControlFlow<StopReason> {
        let now = mono_now();
        let capped = {
            let mut w = lock(&self.shared.window);
            w.expire(now);
            w.capped()
        };
        self.publish(&engine.ingest, stats, capped);
        self.shared
            .drained
            .send_replace(Window::drained_through(now));
        self.shared.last_tick.store(now, Ordering::Relaxed);
        if self.last_prune.elapsed() >= PRUNE_EVERY {
            self.last_prune = Instant::now();
            let closed = engine.ingest.prune_binaries();
            self.shared.sym.retire(closed);
        }
        ControlFlow::Continue(())
    }
}
