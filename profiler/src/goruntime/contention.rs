//! The mutex and block profiles, encoded as Go's `runtime/pprof`
//! (`printCountCycleProfile`) encodes them at debug=0: sample types
//! `contentions/count` and `delay/nanoseconds`, period type
//! `contentions/count` with period 1, cycles converted with the target's
//! own CPU tick rate.
//!
//! Scaling by release: up to Go 1.20 the runtime counts each sampled mutex
//! event once and `runtime/pprof` multiplies by `SetMutexProfileFraction`
//! when writing (`scaleMutexProfile`); from 1.21 the runtime records the
//! scaled values itself. We pick the rule by whether the binary has
//! `runtime/pprof.scaleMutexProfile`, and by release when `runtime/pprof`
//! is not linked at all.

use crate::pprof::{Profile, ProfileBuilder};

use super::mprof::{BlockBucket, Kind};
use super::symbols::Locator;
use super::vars::Var;
use super::{GoProcess, GoRuntimeError};

/// What `--enable` writes: sample every event (`SetBlockProfileRate(1)`,
/// `SetMutexProfileFraction(1)`), as tests and short investigations do.
pub(crate) const ENABLE_RATE: u64 = 1;

/// State of block or mutex profiling in the target.
pub(crate) struct Contention {
    pub kind: Kind,
    pub rate: u64,
    rate_addr: u64,
}

impl Kind {
    pub(crate) fn profile_name(self) -> &'static str {
        match self {
            Kind::Memory => "heap",
            Kind::Block => "block",
            Kind::Mutex => "mutex",
        }
    }

    fn rate_var(self) -> Var {
        match self {
            Kind::Mutex => Var::MutexProfileRate,
            _ => Var::BlockProfileRate,
        }
    }
}

impl GoProcess {
    pub(crate) fn contention(&self, kind: Kind) -> Result<Contention, GoRuntimeError> {
        let rate_addr = self.var(kind.rate_var())?;
        let rate = self.mem.u64(rate_addr)?;
        Ok(Contention {
            kind,
            rate,
            rate_addr,
        })
    }

    pub(crate) fn enable_contention(&self, c: &Contention) -> Result<(), GoRuntimeError> {
        Ok(self.mem.write_u64(c.rate_addr, ENABLE_RATE)?)
    }

    pub(crate) fn contention_off(&self, c: &Contention) -> GoRuntimeError {
        let (name, call) = match c.kind {
            Kind::Mutex => ("mutex", "runtime.SetMutexProfileFraction"),
            _ => ("block", "runtime.SetBlockProfileRate"),
        };
        GoRuntimeError::Disabled {
            pid: self.pid,
            exe: self.exe.clone(),
            what: format!(
                "{name} profiling is off: the program never called {call} (its rate is 0 and \
                 no events were recorded); rerun with --enable to set the rate to 1 in the \
                 process (this changes the target: every {name} event is recorded from then on)"
            ),
        }
    }

    /// CPU ticks per second as the target's runtime measured it; our own
    /// measurement of the TSC when it never did (no profile was written).
    pub(crate) fn ticks_per_second(&self) -> (f64, bool) {
        let theirs = self
            .var(Var::TicksPerSecond)
            .ok()
            .and_then(|a| self.mem.u64(a).ok())
            .filter(|&t| (1e8..1e11).contains(&(t as f64)));
        match theirs {
            Some(t) => (t as f64, true),
            None => (measure_tsc(), false),
        }
    }

    /// Whether `runtime/pprof` scales mutex values when writing (Go ≤ 1.20).
    fn pprof_scales_mutex(&self) -> bool {
        if self
            .table
            .function_range("runtime/pprof.scaleMutexProfile")
            .is_some()
        {
            return true;
        }
        if self
            .table
            .function_range("runtime/pprof.printCountCycleProfile")
            .is_some()
        {
            return false;
        }
        self.version.minor <= 20
    }
}

/// The TSC rate, measured against the monotonic clock over 50 ms.
fn measure_tsc() -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        let t0 = std::time::Instant::now();
        // SAFETY: rdtsc has no memory effects.
        let c0 = unsafe { core::arch::x86_64::_rdtsc() };
        std::thread::sleep(std::time::Duration::from_millis(50));
        // SAFETY: as above.
        let c1 = unsafe { core::arch::x86_64::_rdtsc() };
        c1.wrapping_sub(c0) as f64 / t0.elapsed().as_secs_f64()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        1e9
    }
}

/// Encodes block or mutex buckets.
pub(crate) fn encode(
    p: &GoProcess,
    c: &Contention,
    buckets: &[BlockBucket],
    ticks_per_second: f64,
    comments: &[String],
) -> Profile {
    let mut b = ProfileBuilder::new();
    b.period("contentions", "count", 1);
    b.sample_types(&[("contentions", "count"), ("delay", "nanoseconds")]);
    for s in comments {
        b.comment(s);
    }
    let ghz = ticks_per_second / 1e9;
    let scale = if c.kind == Kind::Mutex && p.pprof_scales_mutex() {
        c.rate.max(1) as i64
    } else {
        1
    };
    // Go sorts records by cycles, largest first, before writing.
    let mut order: Vec<&BlockBucket> = buckets.iter().collect();
    order.sort_by_key(|b| std::cmp::Reverse(b.cycles));
    let mut loc = Locator::new(p, &mut b, false);
    for bucket in order {
        let mut count = bucket.count as i64;
        if count == 0 {
            count = 1;
        }
        let ns = bucket.cycles as f64 / ghz;
        let values = vec![count * scale, (ns * scale as f64) as i64];
        let ids = loc.locations(&mut b, &bucket.stack);
        b.add_sample(ids, values, Vec::new());
    }
    b.time(super::heap::now_nanos(), 0);
    b.finish()
}
