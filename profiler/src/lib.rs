//! rprof-bpf: an eBPF-based, system-wide CPU profiler that writes pprof.
//!
//! The crate is laid out as its pipeline:
//!
//! 1. [`capture`]: load the BPF program, attach it to perf events on every
//!    CPU, drain the ring buffer;
//! 2. [`aggregate`]: fold raw samples into counted stacks;
//! 3. [`process`]: what `/proc` says about a process (maps, binaries, names);
//! 4. [`normalize`]: runtime addresses → (binary, file offset, build ID);
//! 5. [`symbolize`]: file offsets and kernel addresses → functions and lines;
//! 6. [`encode`]: counted, symbolized stacks → a pprof [`pprof::Profile`];
//! 7. [`report`]: read any pprof file back as a top table, flame graph or
//!    collapsed stacks;
//! 8. [`offline`]: symbolize a raw profile later, elsewhere, by build ID.
//!
//! [`record`] runs stages 1–6 for the command line; [`agent`] runs them
//! continuously for a whole node.

pub mod agent;
pub mod aggregate;
pub mod capture;
pub mod encode;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod goruntime;
pub mod logging;
pub mod normalize;
pub mod offline;
pub mod pprof;
pub mod preflight;
pub mod process;
pub mod record;
pub mod report;
pub mod symbolize;
pub mod unwind;
