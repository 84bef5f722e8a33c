//! `rprof-bpf agent`: the node agent, run once per node (a Kubernetes
//! DaemonSet). A front end over the engine, like the recorder.
//!
//! One BPF capture of the whole machine runs for the agent's lifetime and
//! feeds the engine, whose store is a rolling window
//! ([`crate::engine::store::window`]). Everything the agent offers is cut
//! from that window, never from a capture of its own:
//!
//! - HTTP ([`http`]): `/debug/pprof/profile` like Go's `net/http/pprof`,
//!   for a pid, a container, a pod or the node; an index page; `/metrics`;
//!   `/healthz`;
//! - push ([`push`]): one profile per process (or container) per window to
//!   Pyroscope's `/ingest`;
//! - files ([`files`]): one profile per process per window in a directory
//!   of bounded size.
//!
//! Threads and locks: the capture loop ([`capture_loop`]) runs ingest
//! with no lock held (its `/proc` reads and file opens delay nobody) and
//! takes the window's lock only to count a sample. Symbolization and
//! encoding happen on one symbolizer thread ([`symthread`]), which takes
//! the window's lock only to copy out what it needs and to store what it
//! named, so neither a slow DWARF parse nor process churn ever stalls a
//! request or the capture.

pub mod args;
pub mod capture_loop;
pub mod files;
pub mod goprofiles;
pub mod health;
pub mod http;
pub mod kubeapi;
pub mod labels;
pub mod metrics;
pub mod push;
mod shared;
mod start;
pub mod symthread;
mod ui;
mod windows;

pub use args::{parse_duration, parse_size, AgentArgs, UsageError};
pub use shared::Shared;
pub use start::run;
