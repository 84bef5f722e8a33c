//! rprof-bpf: an eBPF-based, system-wide CPU profiler that writes pprof.
//!
//! The crate is laid out as its pipeline:
//!
//! 1. [`capture`]: load the BPF program, attach it to perf events on every
//!    CPU, hand typed samples to a sink;
//! 2. [`engine`]: ingest (process identity, leaf fix-up, unwind-table
//!    requests) → store (totals or a rolling window) → resolve (normalize
//!    and symbolize) → encode (pprof);
//! 3. [`process`]: what `/proc` says about a process (maps, binaries,
//!    names, container);
//! 4. [`symbolize`]: file offsets and kernel addresses → functions and lines;
//! 5. [`unwind`]: `.eh_frame` → the BPF unwinder's tables;
//! 6. [`pprof`]: the profile format, read and written;
//! 7. [`report`]: read any pprof file back as a top table, flame graph or
//!    collapsed stacks;
//! 8. [`offline`]: symbolize a raw profile later, elsewhere, by build ID.
//!
//! The front ends are thin: [`record`] for the command line, [`agent`] for
//! a whole node, continuously.

pub mod agent;
pub mod capture;
pub mod engine;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod golabels;
pub mod goruntime;
pub mod logging;
pub mod offline;
pub mod pprof;
pub mod preflight;
pub mod process;
pub mod record;
pub mod report;
pub mod symbolize;
pub mod unwind;
