//! The agent's own counters, rendered in the Prometheus text format.
//!
//! Counters are plain atomics bumped where things happen; gauges that
//! describe the window are read from the window when `/metrics` is served,
//! so they can never drift from the truth.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Monotonic counters shared by every part of the agent.
#[derive(Default)]
pub struct Counters {
    pub processes_seen: AtomicU64,
    pub processes_exited: AtomicU64,
    /// Samples evicted before their time because the window hit its memory cap.
    pub window_capped_samples: AtomicU64,
    /// Addresses in the symbolization cache (a gauge, set by its owner).
    pub symbol_cache_entries: AtomicU64,
    pub symbol_cache_hits: AtomicU64,
    pub symbol_cache_misses: AtomicU64,
    /// Times the symbol cache was emptied because it reached its entry cap.
    pub symbol_cache_evictions: AtomicU64,
    /// Times the parsed symbol tables and debug info were dropped for
    /// outgrowing their memory budget.
    pub symbolizer_resets: AtomicU64,
    /// Binaries given up on because a symbolizer panicked on them.
    pub unsymbolizable_binaries: AtomicU64,
    pub binaries_closed: AtomicU64,
    pub push_success: AtomicU64,
    pub push_failures: AtomicU64,
    pub push_retries: AtomicU64,
    /// Profiles dropped from a full push queue (oldest first).
    pub push_dropped: AtomicU64,
    pub files_written: AtomicU64,
    pub files_deleted: AtomicU64,
    pub file_errors: AtomicU64,
    pub requests_ok: AtomicU64,
    pub requests_bad: AtomicU64,
    pub requests_not_found: AtomicU64,
    pub requests_unauthorized: AtomicU64,
    pub requests_throttled: AtomicU64,
    pub connections_rejected: AtomicU64,
    /// Pod lists asked of the Kubernetes API server (`--kube-api`).
    pub kube_api_requests: AtomicU64,
    pub kube_api_failures: AtomicU64,
    /// Pods in the last list (a gauge, set by its owner).
    pub kube_api_pods: AtomicU64,
    /// Stacks cut at a return address in no executable mapping.
    pub truncated_stacks: AtomicU64,
    /// Set by the capture loop at every tick: samples read and lost so
    /// far, running processes tracked, binaries open.
    capture_samples: AtomicU64,
    capture_lost: AtomicU64,
    pub live_processes_gauge: AtomicU64,
    pub open_binaries_gauge: AtomicU64,
}

impl Counters {
    /// Adds one to a counter.
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    /// The capture's own counters, as of its last tick.
    pub fn set_capture(&self, samples: u64, lost: u64) {
        self.capture_samples.store(samples, Ordering::Relaxed);
        self.capture_lost.store(lost, Ordering::Relaxed);
    }

    pub fn samples(&self) -> u64 {
        Self::get(&self.capture_samples)
    }

    pub fn lost(&self) -> u64 {
        Self::get(&self.capture_lost)
    }

    pub fn live_processes(&self) -> u64 {
        Self::get(&self.live_processes_gauge)
    }

    pub fn open_binaries(&self) -> u64 {
        Self::get(&self.open_binaries_gauge)
    }
}

/// Point-in-time values read from the rest of the agent for one scrape.
#[derive(Default)]
pub struct Gauges {
    pub samples: u64,
    pub lost: u64,
    pub processes_tracked: u64,
    pub processes_in_window: u64,
    pub window_samples: u64,
    pub window_stacks: u64,
    pub window_bytes: u64,
    pub window_bytes_limit: u64,
    pub open_binaries: u64,
    pub symbol_cache_limit: u64,
    pub push_queue: u64,
    pub output_bytes: u64,
    pub profile_requests_in_flight: u64,
}

/// One metric: name, type, help, and its value.
fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    let _ = writeln!(out, "{name} {value}");
}

/// The whole `/metrics` page.
pub fn render(c: &Counters, g: &Gauges) -> String {
    let mut o = String::with_capacity(4096);
    let ctr = |o: &mut String, name: &str, help: &str, v: &AtomicU64| {
        metric(o, name, "counter", help, Counters::get(v));
    };
    metric(
        &mut o,
        "rprof_agent_samples_total",
        "counter",
        "Samples read from the BPF ring buffer.",
        g.samples,
    );
    metric(
        &mut o,
        "rprof_agent_lost_samples_total",
        "counter",
        "Samples the kernel could not queue because the ring buffer was full.",
        g.lost,
    );
    metric(
        &mut o,
        "rprof_agent_processes_tracked",
        "gauge",
        "Running processes with samples in the window.",
        g.processes_tracked,
    );
    metric(
        &mut o,
        "rprof_agent_processes_in_window",
        "gauge",
        "Processes (running or exited) with samples in the window.",
        g.processes_in_window,
    );
    ctr(
        &mut o,
        "rprof_agent_processes_seen_total",
        "Processes seen, keyed by (pid, start time).",
        &c.processes_seen,
    );
    ctr(
        &mut o,
        "rprof_agent_processes_exited_total",
        "Tracked processes that exited (their stacks keep their mappings until they age out).",
        &c.processes_exited,
    );
    ctr(
        &mut o,
        "rprof_agent_truncated_stacks_total",
        "Stacks cut at a return address in no executable mapping (a frame-pointer walk through code without frame pointers).",
        &c.truncated_stacks,
    );
    metric(
        &mut o,
        "rprof_agent_window_samples",
        "gauge",
        "Samples held in the rolling window.",
        g.window_samples,
    );
    metric(
        &mut o,
        "rprof_agent_window_stacks",
        "gauge",
        "Distinct stacks held in the rolling window.",
        g.window_stacks,
    );
    metric(
        &mut o,
        "rprof_agent_window_bytes",
        "gauge",
        "Estimated memory of the rolling window.",
        g.window_bytes,
    );
    metric(
        &mut o,
        "rprof_agent_window_bytes_limit",
        "gauge",
        "Memory cap of the rolling window (--max-memory).",
        g.window_bytes_limit,
    );
    ctr(
        &mut o,
        "rprof_agent_window_capped_samples_total",
        "Samples evicted early because the window reached its memory cap.",
        &c.window_capped_samples,
    );
    metric(
        &mut o,
        "rprof_agent_open_binaries",
        "gauge",
        "Executable files held open for symbolization.",
        g.open_binaries,
    );
    ctr(
        &mut o,
        "rprof_agent_binaries_closed_total",
        "Executable files closed after every process mapping them exited.",
        &c.binaries_closed,
    );
    metric(
        &mut o,
        "rprof_agent_symbol_cache_entries",
        "gauge",
        "Addresses in the symbolization cache.",
        Counters::get(&c.symbol_cache_entries),
    );
    metric(
        &mut o,
        "rprof_agent_symbol_cache_limit",
        "gauge",
        "Entry cap of the symbolization cache.",
        g.symbol_cache_limit,
    );
    ctr(
        &mut o,
        "rprof_agent_symbol_cache_hits_total",
        "Symbolization cache hits.",
        &c.symbol_cache_hits,
    );
    ctr(
        &mut o,
        "rprof_agent_symbol_cache_misses_total",
        "Symbolization cache misses (addresses symbolized).",
        &c.symbol_cache_misses,
    );
    ctr(
        &mut o,
        "rprof_agent_symbol_cache_evictions_total",
        "Times the symbolization cache was emptied at its cap.",
        &c.symbol_cache_evictions,
    );
    ctr(
        &mut o,
        "rprof_agent_symbolizer_resets_total",
        "Times parsed symbol tables and debug info were dropped at their memory budget.",
        &c.symbolizer_resets,
    );
    ctr(
        &mut o,
        "rprof_agent_unsymbolizable_binaries_total",
        "Binaries whose frames stay unnamed because a symbolizer panicked on them.",
        &c.unsymbolizable_binaries,
    );
    ctr(
        &mut o,
        "rprof_agent_push_success_total",
        "Profiles accepted by the push backend.",
        &c.push_success,
    );
    ctr(
        &mut o,
        "rprof_agent_push_failures_total",
        "Profiles given up on after retries or a permanent error.",
        &c.push_failures,
    );
    ctr(
        &mut o,
        "rprof_agent_push_retries_total",
        "Push attempts retried after an error.",
        &c.push_retries,
    );
    ctr(
        &mut o,
        "rprof_agent_push_dropped_total",
        "Profiles dropped from the full push queue, oldest first.",
        &c.push_dropped,
    );
    metric(
        &mut o,
        "rprof_agent_push_queue_length",
        "gauge",
        "Profiles waiting to be pushed.",
        g.push_queue,
    );
    ctr(
        &mut o,
        "rprof_agent_files_written_total",
        "Profiles written to --output-dir.",
        &c.files_written,
    );
    ctr(
        &mut o,
        "rprof_agent_files_deleted_total",
        "Profiles deleted from --output-dir to stay under --max-disk.",
        &c.files_deleted,
    );
    ctr(
        &mut o,
        "rprof_agent_file_errors_total",
        "Failed writes or deletions in --output-dir.",
        &c.file_errors,
    );
    metric(
        &mut o,
        "rprof_agent_output_bytes",
        "gauge",
        "Bytes of profiles in --output-dir.",
        g.output_bytes,
    );
    metric(
        &mut o,
        "rprof_agent_profile_requests_in_flight",
        "gauge",
        "Profile requests being served.",
        g.profile_requests_in_flight,
    );
    let _ = writeln!(
        o,
        "# HELP rprof_agent_profile_requests_total Profile requests by outcome."
    );
    let _ = writeln!(o, "# TYPE rprof_agent_profile_requests_total counter");
    for (code, v) in [
        ("200", &c.requests_ok),
        ("400", &c.requests_bad),
        ("401", &c.requests_unauthorized),
        ("404", &c.requests_not_found),
        ("429", &c.requests_throttled),
    ] {
        let _ = writeln!(
            o,
            "rprof_agent_profile_requests_total{{code=\"{code}\"}} {}",
            Counters::get(v)
        );
    }
    ctr(
        &mut o,
        "rprof_agent_connections_rejected_total",
        "Connections closed at once because every connection slot was taken.",
        &c.connections_rejected,
    );
    ctr(
        &mut o,
        "rprof_agent_kube_api_requests_total",
        "Pod lists asked of the Kubernetes API server (--kube-api).",
        &c.kube_api_requests,
    );
    ctr(
        &mut o,
        "rprof_agent_kube_api_failures_total",
        "Pod lists that failed (network error, bad answer, HTTP error).",
        &c.kube_api_failures,
    );
    metric(
        &mut o,
        "rprof_agent_kube_api_pods",
        "gauge",
        "Pods of this node in the last list from the API server.",
        Counters::get(&c.kube_api_pods),
    );
    let (cpu, rss, fds) = own_usage();
    metric(
        &mut o,
        "process_cpu_seconds_total",
        "counter",
        "CPU time of the agent (user + system).",
        cpu,
    );
    metric(
        &mut o,
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory of the agent.",
        rss,
    );
    metric(
        &mut o,
        "rprof_agent_heap_in_use_bytes",
        "gauge",
        "Heap the allocator has handed out and not had back (live data; the resident memory adds what it keeps free).",
        crate::engine::memory::heap_in_use().unwrap_or(0),
    );
    metric(
        &mut o,
        "process_open_fds",
        "gauge",
        "Open file descriptors of the agent.",
        fds,
    );
    o
}

/// The agent's CPU seconds, RSS and open fds, from `/proc/self`.
pub fn own_usage() -> (f64, u64, u64) {
    let cpu = crate::process::cpu_seconds(std::process::id()).unwrap_or(0.0);
    let rss = rss_bytes("/proc/self/status").unwrap_or(0);
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    (cpu, rss, fds)
}

/// `VmRSS` of a `/proc/PID/status` file, in bytes.
pub fn rss_bytes(status_path: &str) -> Option<u64> {
    let s = std::fs::read_to_string(status_path).ok()?;
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The page as (sample line's name with labels, value), in order.
    fn samples(text: &str) -> Vec<(&str, &str)> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| l.rsplit_once(' ').expect("a sample line is NAME VALUE"))
            .collect()
    }

    #[test]
    fn renders_every_family_once_with_values() {
        let c = Counters::default();
        Counters::inc(&c.push_success);
        Counters::inc(&c.requests_throttled);
        Counters::inc(&c.requests_throttled);
        let g = Gauges {
            samples: 42,
            window_bytes_limit: 64 << 20,
            ..Gauges::default()
        };
        let text = render(&c, &g);
        let values: std::collections::HashMap<&str, &str> = samples(&text).into_iter().collect();
        assert_eq!(values["rprof_agent_samples_total"], "42", "{text}");
        assert_eq!(values["rprof_agent_window_bytes_limit"], "67108864");
        assert_eq!(values["rprof_agent_push_success_total"], "1");
        assert_eq!(values["rprof_agent_push_failures_total"], "0");
        assert_eq!(
            values["rprof_agent_profile_requests_total{code=\"429\"}"],
            "2"
        );
        assert_eq!(
            values["rprof_agent_profile_requests_total{code=\"200\"}"],
            "0"
        );
        assert!(
            values["process_resident_memory_bytes"]
                .parse::<u64>()
                .unwrap()
                > 0
        );
        // Every sample line is a number.
        for (name, v) in samples(&text) {
            assert!(v.parse::<f64>().is_ok(), "{name} {v}");
        }
        // Every TYPE line names a distinct family, and every family has
        // its HELP and TYPE right before its first sample.
        let mut types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        let n = types.len();
        types.sort_unstable();
        types.dedup();
        assert_eq!(types.len(), n, "a family is rendered twice");
        let lines: Vec<&str> = text.lines().collect();
        for (i, l) in lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.starts_with("# TYPE "))
        {
            let family = l.split(' ').nth(2).unwrap();
            assert!(
                lines[i - 1].starts_with(&format!("# HELP {family} ")),
                "{family}"
            );
            assert!(lines[i + 1].starts_with(family), "{family}");
        }
    }
}
