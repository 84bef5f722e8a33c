//! How much something was sampled lately: the measure both eviction (which
//! tables to keep) and the builder (whose tables to compile first) use.

use std::time::{Duration, Instant};

/// Samples counted with exponential decay: recent use, weighted by how
/// much. A table a busy process samples 100 times a second outranks one
/// loaded a moment ago for a process that then sleeps, however recently;
/// that stops mattering a few half-lives after the busy process stops.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Heat {
    value: f64,
    at: Instant,
}

/// How fast [`Heat`] fades.
const HEAT_HALF_LIFE: Duration = Duration::from_secs(2);

impl Heat {
    pub fn new(now: Instant) -> Heat {
        Heat {
            value: 0.0,
            at: now,
        }
    }

    /// The value at `now` (not before the last update).
    pub fn at(&self, now: Instant) -> f64 {
        let age = now.saturating_duration_since(self.at).as_secs_f64();
        self.value * 0.5f64.powf(age / HEAT_HALF_LIFE.as_secs_f64())
    }

    pub fn add(&mut self, now: Instant, samples: f64) {
        self.value = self.at(now) + samples;
        self.at = now.max(self.at);
    }
}
