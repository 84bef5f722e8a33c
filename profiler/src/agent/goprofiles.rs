//! The agent's Go runtime profile endpoints, under `net/http/pprof`'s
//! names: `GET /debug/pprof/{heap,allocs,mutex,block,goroutine}?pid=P`,
//! so `go tool pprof http://NODE:7070/debug/pprof/heap?pid=1234` works for
//! a Go service that never imported net/http/pprof. The profiles are read
//! from the process's memory ([`crate::goruntime`]); nothing is written
//! into it (no `--enable` here).

use axum::extract::rejection::QueryRejection;
use axum::extract::Query;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::goruntime::cli::{capture, CaptureOptions, Captured, GoProfileKind};
use crate::goruntime::GoRuntimeError;

/// The five routes, for any router state.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/debug/pprof/heap", get(|q| handle(GoProfileKind::Heap, q)))
        .route(
            "/debug/pprof/allocs",
            get(|q| handle(GoProfileKind::Allocs, q)),
        )
        .route(
            "/debug/pprof/mutex",
            get(|q| handle(GoProfileKind::Mutex, q)),
        )
        .route(
            "/debug/pprof/block",
            get(|q| handle(GoProfileKind::Block, q)),
        )
        .route(
            "/debug/pprof/goroutine",
            get(|q| handle(GoProfileKind::Goroutine, q)),
        )
}

fn text(code: StatusCode, msg: impl Into<String>) -> Response {
    let mut m = msg.into();
    m.push('\n');
    (
        code,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        m,
    )
        .into_response()
}

/// What a request asked for.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    pid: u32,
    details: bool,
}

/// Checks the query: `pid` is required; `gc=1`, `debug` other than 0 and
/// `seconds` (delta profiles) are refused with the reason.
fn parse(kind: GoProfileKind, pairs: &[(String, String)]) -> Result<Request, String> {
    let mut pid = None;
    let mut details = false;
    for (k, v) in pairs {
        match k.as_str() {
            "pid" => {
                pid = Some(
                    v.parse::<u32>()
                        .map_err(|_| format!("pid={v:?} is not a process id"))?,
                )
            }
            "gc" if v != "0" => {
                return Err(
                    "gc=1 is not supported: rprof-bpf reads the profile from outside the \
                            process and cannot run its garbage collector; the heap profile is \
                            as of the process's last completed GC"
                        .into(),
                )
            }
            "debug" if v != "0" => {
                return Err(format!(
                    "debug={v} is not supported: only the protobuf form (debug=0)"
                ))
            }
            "seconds" => {
                return Err(format!(
                    "seconds={v} (a delta profile) is not supported for {}: ask twice and use \
                     go tool pprof -diff_base",
                    kind.name()
                ))
            }
            "details" if kind == GoProfileKind::Goroutine => details = v != "0",
            "gc" | "debug" => {}
            _ => return Err(format!("unknown parameter {k:?}")),
        }
    }
    let pid = pid.ok_or_else(|| {
        format!(
            "/debug/pprof/{} needs ?pid=PID (a Go process on this node)",
            kind.name()
        )
    })?;
    Ok(Request { pid, details })
}

async fn handle(
    kind: GoProfileKind,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let pairs = match q {
        Ok(Query(p)) => p,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("bad query string: {e}")),
    };
    let req = match parse(kind, &pairs) {
        Ok(r) => r,
        Err(m) => return text(StatusCode::BAD_REQUEST, m),
    };
    let opts = CaptureOptions {
        details: req.details,
        command: format!(
            "rprof-bpf agent: GET /debug/pprof/{}?pid={}",
            kind.name(),
            req.pid
        ),
        ..Default::default()
    };
    let pid = req.pid;
    let result = tokio::task::spawn_blocking(move || capture(pid, kind, &opts)).await;
    match result {
        Ok(Ok(Captured::Profile(p, _))) => {
            let body = crate::pprof::encode_gzip(&p);
            let mut r = (StatusCode::OK, body).into_response();
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            if let Ok(v) =
                HeaderValue::from_str(&format!("attachment; filename=\"{}\"", kind.name()))
            {
                h.insert(header::CONTENT_DISPOSITION, v);
            }
            r
        }
        Ok(Ok(Captured::Enabled(m))) => text(StatusCode::INTERNAL_SERVER_ERROR, m),
        Ok(Err(e)) => {
            let code = match &e {
                GoRuntimeError::NoProcess { .. } => StatusCode::NOT_FOUND,
                GoRuntimeError::NotGo { .. } | GoRuntimeError::UnsupportedVersion { .. } => {
                    StatusCode::BAD_REQUEST
                }
                GoRuntimeError::Disabled { .. } => StatusCode::CONFLICT,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            text(code, e.to_string())
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("profile reader failed: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_and_refuses_what_we_cannot_do() {
        let ok = parse(GoProfileKind::Heap, &q(&[("pid", "12"), ("gc", "0")])).unwrap();
        assert_eq!(
            ok,
            Request {
                pid: 12,
                details: false
            }
        );
        let e = parse(GoProfileKind::Heap, &q(&[("pid", "12"), ("gc", "1")])).unwrap_err();
        assert!(
            e.contains("gc=1 is not supported") && e.contains("garbage collector"),
            "{e}"
        );
        assert!(parse(GoProfileKind::Heap, &q(&[]))
            .unwrap_err()
            .contains("needs ?pid="));
        assert!(parse(GoProfileKind::Mutex, &q(&[("pid", "1"), ("debug", "1")])).is_err());
        assert!(parse(GoProfileKind::Allocs, &q(&[("pid", "1"), ("seconds", "5")])).is_err());
        let d = parse(
            GoProfileKind::Goroutine,
            &q(&[("pid", "1"), ("details", "1")]),
        )
        .unwrap();
        assert!(d.details);
    }
}
