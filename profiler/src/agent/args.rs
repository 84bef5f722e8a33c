//! The agent's command-line options and their parsers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::capture::Event;

use super::push::{AppNameFrom, PushPer};

/// `rprof-bpf agent` options.
#[derive(clap::Args, Debug, Clone)]
pub struct AgentArgs {
    /// Address of the HTTP server. Loopback by default: anything else
    /// exposes every process's profile to whoever reaches the port, so pair
    /// it with --token-file.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    /// Samples per second per CPU.
    #[arg(short = 'F', long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub frequency: u64,
    /// The event that drives sampling.
    #[arg(long, value_enum, default_value_t = Event::CpuClock)]
    pub event: Event,
    /// Capture user stacks only, no kernel frames.
    #[arg(long)]
    pub user_only: bool,
    /// Also record where threads wait off CPU (scheduler tracepoints), for
    /// `event=off-cpu` and `event=wall` profiles.
    #[arg(long)]
    pub off_cpu: bool,
    /// Add each Go sample's goroutine id as a numeric `goid` label (high
    /// cardinality: one stack per goroutine).
    #[arg(long)]
    pub go_goid: bool,
    /// How long samples stay in memory (e.g. 120s, 5m).
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub retain: Duration,
    /// Memory cap of the sample window; the oldest samples go first beyond it (e.g. 64MiB).
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    pub max_memory: u64,
    /// Cap on symbolized addresses kept in the cache.
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub symbol_cache_entries: u64,
    /// Memory that parsed symbol tables and debug info may keep between
    /// symbolizations; beyond it they are dropped and parsed again when
    /// needed (less memory, more CPU).
    #[arg(long, default_value = "16MiB", value_parser = parse_size)]
    pub symbolizer_memory: u64,
    /// Length of the push and file windows (e.g. 15s).
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub window: Duration,
    /// Pyroscope server to push to (its /ingest endpoint), e.g. http://pyroscope:4040.
    #[arg(long)]
    pub push_url: Option<String>,
    /// One pushed profile per process or per container.
    #[arg(long, value_enum, default_value_t = PushPer::Process)]
    pub push_per: PushPer,
    /// Where the pushed application name comes from.
    #[arg(long, value_enum, default_value_t = AppNameFrom::Pod)]
    pub app_name_from: AppNameFrom,
    /// Extra header on every push, as "Name: value" (repeatable), e.g. "X-Scope-OrgID: team-a".
    #[arg(long, value_name = "HEADER")]
    pub push_header: Vec<String>,
    /// Profiles waiting to be pushed at most; the oldest are dropped beyond.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..))]
    pub push_queue: u64,
    /// Write one pprof per process per window into this directory.
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
    /// Total size of --output-dir profiles; the oldest are deleted beyond (e.g. 1GiB).
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    pub max_disk: u64,
    /// File holding a bearer token that every request but /healthz must present.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Serve /metrics without the token (for annotation-based Prometheus
    /// scraping, which cannot send one). Profiles stay protected.
    #[arg(long)]
    pub metrics_no_auth: bool,
    /// Profile requests served at once; more get 429.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub max_concurrent_profiles: u64,
    /// The kubelet's pod log directory (named <namespace>_<pod>_<uid>).
    #[arg(long, default_value = "/var/log/pods")]
    pub pods_log_dir: PathBuf,
    /// The kubelet's container log links (<pod>_<namespace>_<container>-<id>.log).
    #[arg(long, default_value = "/var/log/containers")]
    pub containers_log_dir: PathBuf,
    /// Node name for pushed labels and --kube-api; defaults to $NODE_NAME
    /// (set it from the downward API), else the host name (not for --kube-api).
    #[arg(long)]
    pub node_name: Option<String>,
    /// Fall back to the Kubernetes API server for pod and container names
    /// the kubelet's directories do not give: list this node's pods (needs
    /// RBAC to list pods, and the service account token mounted).
    #[arg(long)]
    pub kube_api: bool,
    /// API server base URL; implies --kube-api. Default:
    /// https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT.
    #[arg(long, value_name = "URL")]
    pub kube_api_url: Option<String>,
    /// Bearer token for the API server (re-read before every request).
    #[arg(
        long,
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    )]
    pub kube_token_file: PathBuf,
    /// CA bundle the API server's certificate must chain to (https).
    #[arg(
        long,
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    )]
    pub kube_ca_file: PathBuf,
    /// Shortest time between two pod lists: misses within it share one list.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub kube_api_interval: Duration,
    /// Ring buffer size in KiB (a power of two, at least 4). Default: 2 s
    /// of samples from every CPU (1 MiB at 100 Hz on 2 CPUs).
    #[arg(long, value_parser = crate::capture::ring::parse_ring_kib)]
    pub ring_size: Option<u32>,
    #[command(flatten)]
    pub unwind: crate::unwind::options::UnwindArgs,
    /// How log lines are written to stderr: `text`, or `json` for log
    /// collectors (one object per line).
    #[arg(long, value_enum, default_value_t = crate::logging::LogFormat::Text)]
    pub log_format: crate::logging::LogFormat,
}

/// A bad combination of options: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Parses `120s`, `5m`, `1h`, `500ms` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 120s, 5m, 500ms)"))?;
    let too_long = || format!("{s:?}: too long");
    let d = match unit.trim() {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(too_long)?),
        "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(too_long)?),
        _ => return Err(format!("{s:?}: unknown unit (use ms, s, m or h)")),
    };
    if d.is_zero() {
        return Err(format!("{s:?}: must be more than zero"));
    }
    Ok(d)
}

/// Parses `64MiB`, `1GiB`, `500M`, `100k` or a plain number of bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 64MiB, 1GiB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("{s:?}: unknown unit (use KiB, MiB or GiB)")),
    };
    n.checked_mul(mult)
        .filter(|&v| v > 0)
        .ok_or_else(|| format!("{s:?}: must be more than zero and fit 64 bits"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("120s"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("99999999999999999h").is_err(), "overflow");
        assert!(parse_duration("9999999999999999999m").is_err(), "overflow");
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("100k"), Ok(100 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("1TB").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("99999999999999GiB").is_err());
    }
}
