//! Which perf event drives sampling, and attaching the program to it on
//! every online CPU.

use aya::programs::perf_event::{
    HardwareEvent, PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent,
};
use aya::programs::PerfEvent;

use super::CaptureError;

/// The sampling clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Event {
    /// The software CPU clock: a timer per CPU, available everywhere,
    /// including VMs without a virtual PMU.
    #[value(name = "cpu-clock")]
    CpuClock,
    /// The hardware cycle counter (PMU). Weighs samples by cycles spent.
    #[value(name = "cycles")]
    Cycles,
    /// Time off CPU by stack: voluntary waits and run-queue waits, from
    /// the scheduler's switches (no perf event).
    #[value(name = "off-cpu")]
    OffCpu,
    /// On-CPU samples (cpu-clock) and off-CPU waits in one time unit.
    #[value(name = "wall")]
    Wall,
}

impl Event {
    /// Name as users and pprof's `period_type` spell it.
    pub fn name(self) -> &'static str {
        match self {
            Event::CpuClock => "cpu-clock",
            Event::Cycles => "cycles",
            Event::OffCpu => "off-cpu",
            Event::Wall => "wall",
        }
    }

    /// The perf event that samples threads on CPU, if this event has any.
    pub fn clock(self) -> Option<Event> {
        match self {
            Event::CpuClock | Event::Wall => Some(Event::CpuClock),
            Event::Cycles => Some(Event::Cycles),
            Event::OffCpu => None,
        }
    }

    /// Whether this event needs the off-CPU programs.
    pub fn off_cpu(self) -> bool {
        matches!(self, Event::OffCpu | Event::Wall)
    }

    fn config(self) -> PerfEventConfig {
        match self {
            Event::Cycles => PerfEventConfig::Hardware(HardwareEvent::CpuCycles),
            _ => PerfEventConfig::Software(SoftwareEvent::CpuClock),
        }
    }
}

/// Attaches `prog` on every CPU in `cpus` at `frequency` Hz. If `event` is
/// the PMU and the first CPU refuses it, falls back to cpu-clock and says so
/// through the returned event.
pub fn attach_all(
    prog: &mut PerfEvent,
    event: Event,
    frequency: u64,
    cpus: &[u32],
) -> Result<Event, CaptureError> {
    let mut used = event;
    for (i, &cpu) in cpus.iter().enumerate() {
        let attach = |prog: &mut PerfEvent, ev: Event| {
            prog.attach(
                ev.config(),
                PerfEventScope::AllProcessesOneCpu { cpu },
                SamplePolicy::Frequency(frequency),
                false,
            )
        };
        match attach(prog, used) {
            Ok(_) => {}
            Err(e) if i == 0 && used == Event::Cycles => {
                tracing::warn!(
                    "the cycles event is unavailable here ({}); sampling on cpu-clock instead",
                    super::root_cause(&e)
                );
                used = Event::CpuClock;
                attach(prog, used).map_err(|e| CaptureError::attach(cpu, used, e))?;
            }
            Err(e) => return Err(CaptureError::attach(cpu, used, e)),
        }
    }
    Ok(used)
}
