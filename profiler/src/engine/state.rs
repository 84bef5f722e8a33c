//! What a sampled thread was doing: on CPU, waiting off CPU, or waiting
//! for a CPU. Part of a stack's identity, and its `thread_state` label in
//! off-CPU and wall profiles.

use profiler_ebpf::abi::{self, Sample};

use super::resolve::ResolvedLoc;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ThreadState {
    /// A perf-event sample: the thread was running.
    #[default]
    OnCpu,
    /// A voluntary wait: the thread slept (I/O, a lock, a sleep).
    OffCpu,
    /// Preempted: runnable, waiting in the run queue for a CPU.
    Runqueue,
}

impl ThreadState {
    pub fn of(s: &Sample) -> ThreadState {
        match s.state {
            abi::STATE_OFF_CPU => ThreadState::OffCpu,
            abi::STATE_RUNQUEUE => ThreadState::Runqueue,
            _ => ThreadState::OnCpu,
        }
    }

    /// Whether the thread was off CPU (its weight is ns waited).
    pub fn is_off_cpu(self) -> bool {
        self != ThreadState::OnCpu
    }

    /// The `thread_state` label of a stack in this state, with its user
    /// frames: a Go thread's voluntary wait in the scheduler is `idle`.
    pub fn label(self, user: &[ResolvedLoc]) -> &'static str {
        match self {
            ThreadState::OnCpu => "on_cpu",
            ThreadState::Runqueue => "runqueue",
            ThreadState::OffCpu if go_idle(user) => "idle",
            ThreadState::OffCpu => "off_cpu",
        }
    }
}

/// Go runtime functions on the stack of an M with no goroutine to run:
/// parked in `stopm` (`mPark`, `notesleep`, `futexsleep`, `futex`), polling
/// the network in `netpoll` (`epoll_pwait`), and the runtime's own threads
/// (`sysmon`, `templateThread`). Goroutines park in user space, so this is
/// where a Go program's threads spend their idle time; a goroutine blocked
/// in a syscall (a file read) has none of these and stays `off_cpu`.
const GO_IDLE: &[&str] = &[
    "runtime.stopm",
    "runtime.mPark",
    "runtime.notesleep",
    "runtime.netpoll",
    "runtime.sysmon",
    "runtime.templateThread",
];

/// Whether a stack's user frames are a Go thread idling in the scheduler.
fn go_idle(user: &[ResolvedLoc]) -> bool {
    user.iter()
        .filter_map(|l| l.frames.as_deref())
        .flatten()
        .any(|f| GO_IDLE.contains(&f.function.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::symbolize::Frame;
    use std::sync::Arc;

    fn loc(name: &str) -> ResolvedLoc {
        ResolvedLoc {
            addr: 1,
            mapping: None,
            frames: Some(Arc::from(vec![Frame {
                function: name.into(),
                file: String::new(),
                line: 0,
                start_line: 0,
                inlined: false,
            }])),
        }
    }

    #[test]
    fn go_scheduler_waits_are_idle() {
        let parked = [
            loc("runtime.futex"),
            loc("runtime.futexsleep"),
            loc("runtime.notesleep"),
            loc("runtime.mPark"),
            loc("runtime.stopm"),
            loc("runtime.findRunnable"),
        ];
        assert_eq!(ThreadState::OffCpu.label(&parked), "idle");
        let poll = [
            loc("internal/runtime/syscall.Syscall6"),
            loc("runtime.netpoll"),
        ];
        assert_eq!(ThreadState::OffCpu.label(&poll), "idle");
        let read = [
            loc("syscall.Syscall"),
            loc("os.(*File).Read"),
            loc("main.main"),
        ];
        assert_eq!(ThreadState::OffCpu.label(&read), "off_cpu");
        assert_eq!(ThreadState::Runqueue.label(&parked), "runqueue");
        assert_eq!(ThreadState::OnCpu.label(&parked), "on_cpu");
    }
}
