//! The agent's HTTP server: `net/http/pprof`'s profile endpoint for any
//! process, an index page, Prometheus metrics and a health check.
//!
//! Routes are axum; connections are served by hyper directly so that we
//! can bound them: a header read timeout, a total lifetime per connection,
//! and a fixed number of connection slots. A client that sends its request
//! slowly, or never reads its answer, can hold one slot for a bounded time
//! and never a profile slot: profile requests have their own cap (429
//! beyond it), and a profile slot is released before the body is written.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::{watch, Semaphore};

use super::metrics::{self, Counters};
use super::shared::Shared;
use crate::capture::clock::{mono_now, mono_to_unix_ns};
use crate::capture::Event;
use crate::engine::encode::{self, Header, LabelPolicy, ReadyStack};
use crate::engine::identity::lock;
use crate::engine::store::window::{Filter, ProcRow};
use crate::process::start_ticks;

/// Longest profile a request may ask for, and the default.
pub const MAX_SECONDS: u64 = 300;
pub const DEFAULT_SECONDS: u64 = 30;
/// Connections served at once; more are closed on accept.
const CONNECTIONS: usize = 64;
/// Time a client has to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest life of one connection: the longest profile plus time to
/// encode and send it.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(MAX_SECONDS + 120);

/// What a profile request asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProfileQuery {
    pub seconds: u64,
    pub target: Target,
    /// `event=`: the sampling clock's CPU profile (`cpu`, the default),
    /// or, with `--off-cpu`, `off-cpu` or `wall`.
    pub kind: Kind,
}

/// Which profile a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Cpu,
    OffCpu,
    Wall,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Node,
    Pid(u32),
    /// A container ID or a prefix of one (12+ hex digits), lower case.
    Container(String),
    Pod {
        namespace: String,
        name: String,
    },
}

/// Parses the query of `/debug/pprof/profile`. Errors are the text of a
/// 400 answer.
pub fn parse_query(pairs: &[(String, String)]) -> Result<ProfileQuery, String> {
    let mut seconds = DEFAULT_SECONDS;
    let mut targets = Vec::new();
    let mut kind = Kind::Cpu;
    for (k, v) in pairs {
        match k.as_str() {
            "event" => {
                kind = match v.trim() {
                    "cpu" | "" => Kind::Cpu,
                    "off-cpu" => Kind::OffCpu,
                    "wall" => Kind::Wall,
                    _ => return Err(format!("event={v:?}: expected cpu, off-cpu or wall")),
                };
            }
            "seconds" => {
                seconds = v
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|s| (1..=MAX_SECONDS).contains(s))
                    .ok_or_else(|| {
                        format!("seconds={v:?}: must be a whole number from 1 to {MAX_SECONDS}")
                    })?;
            }
            "pid" => {
                let pid: u32 = v
                    .trim()
                    .parse()
                    .ok()
                    .filter(|&p| p > 0)
                    .ok_or_else(|| format!("pid={v:?}: not a process id"))?;
                targets.push(Target::Pid(pid));
            }
            "container" => {
                let id = v.trim().to_ascii_lowercase();
                let id = id.rsplit("://").next().unwrap_or(&id).to_owned();
                if !(12..=64).contains(&id.len()) || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(format!(
                        "container={v:?}: expected a container ID (12 to 64 hex digits)"
                    ));
                }
                targets.push(Target::Container(id));
            }
            "pod" => {
                let (ns, name) = v
                    .split_once('/')
                    .filter(|(a, b)| !a.is_empty() && !b.is_empty() && !b.contains('/'))
                    .ok_or_else(|| format!("pod={v:?}: expected NAMESPACE/NAME"))?;
                targets.push(Target::Pod {
                    namespace: ns.to_owned(),
                    name: name.to_owned(),
                });
            }
            _ => {}
        }
    }
    if targets.len() > 1 {
        return Err("give at most one of pid, container and pod".into());
    }
    Ok(ProfileQuery {
        seconds,
        target: targets.pop().unwrap_or(Target::Node),
        kind,
    })
}

/// The routes, with the bearer-token check in front of all but /healthz.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/debug/pprof/profile", get(profile_handler))
        .route("/debug/pprof/", get(index))
        .route("/debug/pprof", get(index))
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/debug/pprof/symbol", get(symbol_count).post(symbol_lookup))
        .merge(super::goprofiles::routes())
        .layer(middleware::from_fn_with_state(shared.clone(), auth))
        .with_state(shared.clone())
        // The browser UI (agent/ui.rs), behind the same token.
        .merge(super::ui::router(shared))
}

/// Accepts connections until `stop` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let app = router(shared.clone());
    let slots = Arc::new(Semaphore::new(CONNECTIONS));
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of fds or similar: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            Counters::inc(&shared.counters.connections_rejected);
            drop(stream);
            continue;
        };
        let svc = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
            drop(permit);
        });
    }
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response {
    let mut body: String = msg.into();
    if !body.ends_with('\n') {
        body.push('\n');
    }
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

/// Requires `Authorization: Bearer <token>` when a token is configured,
/// except for /healthz (kubelet probes) and, with --metrics-no-auth,
/// /metrics.
async fn auth(State(s): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    if let Some(token) = &s.token {
        let open = match req.uri().path() {
            "/healthz" => true,
            "/metrics" => s.metrics_no_auth,
            _ => false,
        };
        if !open {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            if !constant_time_eq(given.as_bytes(), token.as_bytes()) {
                Counters::inc(&s.counters.requests_unauthorized);
                let mut r = text(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return r;
            }
        }
    }
    next.run(req).await
}

/// Compares without an early exit, so timing does not reveal a prefix.
pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Unpins the request's range however the request ends (including the
/// client going away mid-wait, which drops the handler's future).
struct Pin<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for Pin<'_> {
    fn drop(&mut self) {
        lock(&self.shared.window).unpin(self.id);
    }
}

async fn profile_handler(
    State(s): State<Arc<Shared>>,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let bad = |m: String| {
        Counters::inc(&s.counters.requests_bad);
        text(StatusCode::BAD_REQUEST, m)
    };
    let q = match q {
        Ok(Query(pairs)) => match parse_query(&pairs) {
            Ok(q) => q,
            Err(m) => return bad(m),
        },
        Err(e) => return bad(format!("bad query string: {e}")),
    };
    let event = match q.kind {
        Kind::Cpu => s.event,
        Kind::OffCpu => Event::OffCpu,
        Kind::Wall => Event::Wall,
    };
    if event.off_cpu() && !s.off_cpu {
        return bad(format!(
            "event={}: this agent records no off-CPU waits; start it with --off-cpu",
            event.name()
        ));
    }
    let not_found = |m: String| {
        Counters::inc(&s.counters.requests_not_found);
        text(StatusCode::NOT_FOUND, m)
    };
    let (filter, what) = match &q.target {
        Target::Node => (Filter::All, "node".to_owned()),
        Target::Pid(pid) => {
            let start = start_ticks(*pid).filter(|_| crate::process::is_alive(*pid));
            let Some(start_ticks) = start else {
                return not_found(format!("no running process with pid {pid}"));
            };
            (
                Filter::Pid {
                    pid: *pid,
                    start_ticks,
                },
                format!("pid={pid}"),
            )
        }
        Target::Container(id) => {
            let known = lock(&s.window).has_container(id);
            let id2 = id.clone();
            let found = known
                || tokio::task::spawn_blocking(move || container_exists(&id2))
                    .await
                    .unwrap_or(false);
            if !found {
                return not_found(format!("no process of container {id} on this node"));
            }
            (Filter::Container(id.clone()), format!("container={id}"))
        }
        Target::Pod { namespace, name } => {
            let known = lock(&s.window).find_pod(namespace, name).is_some();
            let (kube, ns, n) = (s.kube.clone(), namespace.clone(), name.clone());
            // The kubelet's directories are read off the async threads.
            let found = known
                || tokio::task::spawn_blocking(move || lock(&kube).pod_uid(&ns, &n).is_some())
                    .await
                    .unwrap_or(false);
            if !found {
                return not_found(format!("no pod {namespace}/{name} on this node"));
            }
            (
                Filter::Pod {
                    namespace: namespace.clone(),
                    name: name.clone(),
                },
                format!("pod={namespace}/{name}"),
            )
        }
    };
    let Ok(_slot) = s.profile_slots.clone().try_acquire_owned() else {
        Counters::inc(&s.counters.requests_throttled);
        return text(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "too many profile requests at once (at most {}); try again later",
                s.max_profiles
            ),
        );
    };

    let t0 = mono_now();
    let start_ns = mono_to_unix_ns(t0);
    let lost0 = s.lost();
    let pin = Pin {
        shared: &s,
        id: lock(&s.window).pin(t0),
    };
    let t1 = t0 + q.seconds * 1_000_000_000;
    tokio::time::sleep(Duration::from_secs(q.seconds)).await;
    s.wait_drained(t1).await;
    let header = Header {
        event,
        frequency: s.frequency,
        start_unix_nanos: start_ns,
        duration_nanos: (t1 - t0) as i64,
        command: format!("agent {what} seconds={} event={}", q.seconds, event.name()),
        lost: s.lost().saturating_sub(lost0),
        truncated: 0,
        bpf_run_ns: 0,
        bpf_run_cnt: 0,
        rate_limited: 0,
        notes: Vec::new(),
    };
    let job = build_profile(&s, filter, event, t0, t1, header, |p| {
        crate::pprof::encode_gzip(&p)
    })
    .await;
    drop(pin);
    match job {
        Some(bytes) => {
            Counters::inc(&s.counters.requests_ok);
            (
                StatusCode::OK,
                [
                    (header::CONTENT_TYPE, "application/octet-stream"),
                    (
                        header::CONTENT_DISPOSITION,
                        "attachment; filename=\"profile\"",
                    ),
                ],
                bytes,
            )
                .into_response()
        }
        None => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "building the profile failed: the symbolizer thread is gone",
        ),
    }
}

/// Builds the profile of what `filter` selects in `[t0, t1)` (monotonic
/// ns) on the symbolizer thread and hands it to `f` there. None if that
/// thread is gone.
pub(super) async fn build_profile<R: Send + 'static>(
    s: &Arc<Shared>,
    filter: Filter,
    event: Event,
    t0: u64,
    t1: u64,
    header: Header,
    f: impl FnOnce(crate::pprof::Profile) -> R + Send + 'static,
) -> Option<R> {
    let s2 = s.clone();
    s.sym
        .run(move |sym| {
            s2.with_ready(sym, &filter, event, (t0, t1), |ready, kernel| {
                let stacks: Vec<&ReadyStack> = ready.iter().collect();
                f(encode::build(&stacks, &header, kernel, LabelPolicy::Node))
            })
        })
        .await
}

/// Whether any running process is in a container whose ID starts with
/// `prefix`: an idle container has no samples in the window but may still
/// be profiled.
fn container_exists(prefix: &str) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .any(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .ok()
                .and_then(|t| super::labels::parse_cgroup(&t).container_id)
                .is_some_and(|id| id.starts_with(prefix))
        })
}

pub(super) fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            _ => o.push(c),
        }
    }
    o
}

/// The index page: every process in the window, busiest first.
async fn index(State(s): State<Arc<Shared>>) -> Html<String> {
    let rows: Vec<ProcRow> = lock(&s.window).rows(mono_now(), Duration::from_secs(10));
    let mut h = String::with_capacity(4096 + rows.len() * 256);
    h.push_str(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>rprof-bpf agent</title>\
         <style>body{font-family:sans-serif}td,th{padding:2px 10px;text-align:left}\
         tr:nth-child(even){background:#f2f2f2}</style></head><body>\n\
         <h1>rprof-bpf agent</h1>\n<p>CPU profiles of every process on this node. \
         <a href=\"/debug/pprof/profile?seconds=30\">Whole node, 30 s</a> · \
         <a href=\"/metrics\">metrics</a></p>\n\
         <p>Use <code>go tool pprof http://HOST/debug/pprof/profile?pid=PID&amp;seconds=30</code>, \
         or <code>container=ID</code> or <code>pod=NAMESPACE/NAME</code> instead of <code>pid</code>.</p>\n",
    );
    let live: Vec<&ProcRow> = rows.iter().filter(|r| r.live).collect();
    h.push_str(&format!(
        "<p>{} running processes with samples in the window ({} exited).</p>\n",
        live.len(),
        rows.len() - live.len()
    ));
    h.push_str("<table>\n<tr><th>pid</th><th>comm</th><th>container</th><th>pod</th><th>samples/s (10 s)</th><th>profile</th></tr>\n");
    for r in live {
        let m = &r.meta;
        let labels = m.labels();
        let container = labels.container_id.get(..12).unwrap_or("");
        let pod = if labels.pod.is_empty() {
            String::new()
        } else {
            format!("{}/{}", labels.namespace, labels.pod)
        };
        let pod_cell = if pod.is_empty() {
            String::new()
        } else {
            format!(
                "<a href=\"/debug/pprof/profile?pod={}&amp;seconds=30\">{}</a>",
                escape(&pod),
                escape(&pod)
            )
        };
        let container_cell = if container.is_empty() {
            String::new()
        } else {
            let name = if labels.container.is_empty() {
                container.to_owned()
            } else {
                format!("{} ({container})", labels.container)
            };
            format!(
                "<a href=\"/debug/pprof/profile?container={container}&amp;seconds=30\">{}</a>",
                escape(&name)
            )
        };
        h.push_str(&format!(
            "<tr><td>{pid}</td><td>{comm}</td><td>{container_cell}</td><td>{pod_cell}</td><td>{rate:.1}</td>\
             <td><a href=\"/debug/pprof/profile?pid={pid}&amp;seconds=30\">30 s</a></td></tr>\n",
            pid = m.pid(),
            comm = escape(&m.comm),
            rate = r.samples_per_sec,
        ));
    }
    h.push_str("</table>\n</body></html>\n");
    Html(h)
}

async fn metrics_handler(State(s): State<Arc<Shared>>) -> Response {
    let s2 = s.clone();
    let body = tokio::task::spawn_blocking(move || metrics::render(&s2.counters, &s2.gauges()))
        .await
        .unwrap_or_default();
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// Healthy while the capture loop keeps ticking.
/// `GET /debug/pprof/symbol`, as `net/http/pprof` answers it. `go tool
/// pprof` asks this endpoint for the names of addresses in mappings we
/// could not symbolize (a binary without symbols, the vdso). Every name
/// the agent has is already in the profile, so it answers that it has none
/// (`num_symbols: 0`) rather than 404, which pprof treats as a failure.
async fn symbol_count() -> Response {
    text(StatusCode::OK, "num_symbols: 0\n")
}

/// `POST /debug/pprof/symbol`: no further names (see [`symbol_count`]).
async fn symbol_lookup() -> Response {
    text(StatusCode::OK, "")
}

/// `ok` while every worker the agent depends on works (see `health`).
async fn healthz(State(s): State<Arc<Shared>>) -> Response {
    match s.health.check(s.last_tick.load(Ordering::Relaxed)) {
        Ok(()) => text(StatusCode::OK, "ok"),
        Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &[(&str, &str)]) -> Result<ProfileQuery, String> {
        let pairs: Vec<(String, String)> =
            s.iter().map(|(a, b)| ((*a).into(), (*b).into())).collect();
        parse_query(&pairs)
    }

    #[test]
    fn parses_targets_and_seconds() {
        assert_eq!(
            q(&[]).unwrap(),
            ProfileQuery {
                seconds: 30,
                target: Target::Node,
                kind: Kind::Cpu,
            }
        );
        assert_eq!(
            q(&[("pid", "12"), ("seconds", "5")]).unwrap(),
            ProfileQuery {
                seconds: 5,
                target: Target::Pid(12),
                kind: Kind::Cpu,
            }
        );
        assert_eq!(q(&[("event", "wall")]).unwrap().kind, Kind::Wall);
        assert_eq!(q(&[("event", "off-cpu")]).unwrap().kind, Kind::OffCpu);
        let id = "AB".repeat(32);
        assert_eq!(
            q(&[("container", &format!("containerd://{id}"))])
                .unwrap()
                .target,
            Target::Container(id.to_ascii_lowercase())
        );
        assert_eq!(
            q(&[("pod", "ns/web-1")]).unwrap().target,
            Target::Pod {
                namespace: "ns".into(),
                name: "web-1".into()
            }
        );
        for bad in [
            vec![("seconds", "0")],
            vec![("seconds", "301")],
            vec![("seconds", "abc")],
            vec![("seconds", "-1")],
            vec![("pid", "x")],
            vec![("pid", "0")],
            vec![("container", "xyz")],
            vec![("container", "abc")],
            vec![("pod", "noslash")],
            vec![("pod", "/x")],
            vec![("pid", "1"), ("pod", "a/b")],
            vec![("event", "cycles")],
        ] {
            assert!(q(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn escapes_html_and_compares_tokens() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
