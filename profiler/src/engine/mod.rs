//! The profiling engine: one pipeline behind every front end.
//!
//! ```text
//! capture ──samples──▶ ingest ──▶ store ──▶ resolve ──▶ encode ──▶ sinks
//!  (BPF)               identity    totals    normalize   pprof      file, HTTP,
//!                      leaf fix    | window  + symbolize            push
//!                      tables
//! ```
//!
//! - [`ingest`]: who a sample belongs to ([`identity`]: pid and start
//!   time), the frameless-leaf fix-up, unwind-table requests, and the
//!   normalization of each new stack against its process's mappings
//!   ([`normalize`]).
//! - [`store`]: interned stacks with counts; [`store::totals`] for the
//!   recorder, [`store::window`] (a rolling window) for the agent.
//! - [`resolve`]: mapped frames become named frames, once per distinct
//!   (binary, address), with the one rule for which address names a frame
//!   ([`resolve::lookup_pc`]).
//! - [`encode`]: resolved stacks become a pprof profile, with one label
//!   policy per front end.
//!
//! [`Engine`] ties ingest to a store; [`Driven`] is the capture [`Sink`]
//! every front end uses, with the front end's own [`FrontEnd::tick`]. The recorder
//! (`record`) and the agent (`agent`) are thin front ends: they choose the
//! store, what stops the capture, and where profiles go.

pub mod encode;
pub mod identity;
pub mod ingest;
pub mod memory;
pub mod normalize;
pub mod resolve;
pub mod state;
pub mod store;

use std::ops::ControlFlow;

use profiler_ebpf::abi::{GoLabels, Sample};

use crate::capture::{CaptureStats, Sink, StopReason};
use crate::process::events::ProcEvent;
use ingest::Ingest;
use store::Store;

/// Ingest feeding a store.
pub struct Engine<S> {
    pub ingest: Ingest,
    pub store: S,
}

impl<S: Store> Engine<S> {
    pub fn new(ingest: Ingest, store: S) -> Self {
        Engine { ingest, store }
    }

    /// Counts one sample; a new stack is normalized (outside any lock the
    /// store may take).
    /// `go`: the goroutine's labels of a Go process's record.
    pub fn add(&mut self, s: &Sample, go: Option<&GoLabels>) {
        let ing = self.ingest.ingest(s, go);
        let added = self.store.add(&ing);
        if added.needs_norm {
            let norm = self.ingest.normalize(ing.meta.key, &ing.user, ing.time_ns);
            self.store.set_norm(added.id, norm);
        }
    }
}

/// What a front end adds at each capture tick: progress, its stop
/// condition, its own upkeep (expiring a window, publishing gauges).
pub trait FrontEnd<S> {
    fn tick(&mut self, engine: &mut Engine<S>, stats: &CaptureStats) -> ControlFlow<StopReason>;
}

/// The engine driven by a capture, with a front end's tick: the one sink
/// every front end hands the capture.
pub struct Driven<S, F> {
    pub engine: Engine<S>,
    pub front: F,
}

impl<S: Store, F: FrontEnd<S>> Sink for Driven<S, F> {
    fn sample(&mut self, s: &Sample, go: Option<&GoLabels>) {
        self.engine.add(s, go);
    }

    fn event(&mut self, e: &ProcEvent) {
        self.engine.ingest.event(e);
    }

    fn tick(&mut self, stats: &CaptureStats) -> ControlFlow<StopReason> {
        self.engine.ingest.tick();
        self.front.tick(&mut self.engine, stats)
    }
}
