//! The browser UI in the agent: `GET /ui/` lists the processes in the
//! window; `GET /ui/view?pid=P&seconds=N` is `report --http`'s page over
//! the last N seconds of process P, cut from the window when the page
//! loads (no waiting: the samples are already there).
//!
//! Behind the same `--token-file` token as everything else. A browser
//! cannot send a bearer header when it follows a link, so besides
//! `Authorization: Bearer` these routes accept a cookie set by the login
//! form at `/ui/login`: an HttpOnly, SameSite=Strict cookie holding the
//! SHA-256 of the token (never the token itself).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Form, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};

use super::http::{build_profile, constant_time_eq, escape, MAX_SECONDS};
use super::metrics::Counters;
use super::shared::Shared;
use crate::capture::clock::{mono_now, mono_to_unix_ns};
use crate::engine::encode::Header;
use crate::engine::identity::lock;
use crate::engine::store::window::{Filter, ProcRow};
use crate::process::start_ticks;
use crate::report::ui::{BoxFuture, ProfileSource, Snapshot, SourceError};

/// Seconds a process link shows unless the page asks otherwise.
const DEFAULT_SECONDS: u64 = 30;
/// The cookie the login form sets.
const COOKIE: &str = "rprof_ui";

/// The UI's routes, with their own token check (bearer header or the
/// login cookie).
pub fn router(shared: Arc<Shared>) -> Router {
    let source = Arc::new(WindowSource {
        shared: shared.clone(),
    });
    crate::report::ui::router(source, "/ui/", "/ui/view")
        .route("/ui/", get(list).with_state(shared.clone()))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route(
            "/ui/login",
            get(|| async { login_page(StatusCode::OK, "") })
                .post(login)
                .with_state(shared.clone()),
        )
        .layer(middleware::from_fn_with_state(shared, auth))
}

/// The cookie value for `token`.
fn cookie_value(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Whether the request carries the token, as a bearer header or the
/// login cookie.
fn authorized(req: &Request, token: &str) -> bool {
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if bearer.is_some_and(|b| constant_time_eq(b.as_bytes(), token.as_bytes())) {
        return true;
    }
    let want = cookie_value(token);
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .any(|v| constant_time_eq(v.as_bytes(), want.as_bytes()))
}

async fn auth(State(s): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let Some(token) = &s.token else {
        return next.run(req).await;
    };
    if req.uri().path() == "/ui/login" || authorized(&req, token) {
        return next.run(req).await;
    }
    Counters::inc(&s.counters.requests_unauthorized);
    let page = matches!(req.uri().path(), "/ui" | "/ui/" | "/ui/view");
    let mut r = if page {
        login_page(StatusCode::UNAUTHORIZED, "")
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(header::CONTENT_TYPE, "application/json")],
            "{\"error\":\"missing or wrong bearer token\"}",
        )
            .into_response()
    };
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

fn login_page(status: StatusCode, error: &str) -> Response {
    let error = if error.is_empty() {
        String::new()
    } else {
        format!("<p style=\"color:#b00\">{}</p>", escape(error))
    };
    let body = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>rprof-bpf agent</title></head>\
         <body style=\"font-family:sans-serif\"><h1>rprof-bpf agent</h1>{error}\
         <p>This agent needs its token (<code>--token-file</code>).</p>\
         <form method=\"post\" action=\"/ui/login\"><input type=\"password\" name=\"token\" \
         id=\"token\" size=\"40\" autofocus> <button type=\"submit\">Log in</button></form>\
         </body></html>\n"
    );
    (status, Html(body)).into_response()
}

#[derive(serde::Deserialize)]
struct Login {
    token: String,
}

/// `POST /ui/login`: sets the cookie when the token is right.
async fn login(State(s): State<Arc<Shared>>, Form(form): Form<Login>) -> Response {
    let Some(token) = &s.token else {
        return Redirect::to("/ui/").into_response();
    };
    if !constant_time_eq(form.token.trim().as_bytes(), token.as_bytes()) {
        Counters::inc(&s.counters.requests_unauthorized);
        return login_page(StatusCode::UNAUTHORIZED, "Wrong token.");
    }
    let cookie = format!(
        "{COOKIE}={}; Path=/ui; HttpOnly; SameSite=Strict",
        cookie_value(token)
    );
    let mut r = Redirect::to("/ui/").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// `GET /ui/`: the processes with samples in the window, busiest first,
/// each linked to its UI over the last 10, 30, 60 and 120 seconds.
async fn list(State(s): State<Arc<Shared>>) -> Html<String> {
    let rows: Vec<ProcRow> = lock(&s.window).rows(mono_now(), Duration::from_secs(10));
    let mut h = String::with_capacity(4096 + rows.len() * 300);
    h.push_str(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>rprof-bpf agent · UI</title>\
         <style>body{font-family:sans-serif}td,th{padding:2px 10px;text-align:left}\
         tr:nth-child(even){background:#f2f2f2}</style></head><body>\n\
         <h1>rprof-bpf agent</h1>\n<p>Pick a process to see its flame graph, top table, \
         callers/callees and source over the last seconds of the window. \
         <a href=\"/debug/pprof/\">pprof endpoints</a></p>\n",
    );
    h.push_str("<table id=\"processes\">\n<tr><th>pid</th><th>comm</th><th>container</th><th>pod</th><th>samples/s (10 s)</th><th>view the last</th></tr>\n");
    for r in rows.iter().filter(|r| r.live) {
        let m = &r.meta;
        let labels = m.labels();
        let pod = if labels.pod.is_empty() {
            String::new()
        } else {
            format!("{}/{}", labels.namespace, labels.pod)
        };
        let links: Vec<String> = [10u64, 30, 60, 120]
            .iter()
            .map(|n| {
                format!(
                    "<a href=\"/ui/view?pid={pid}&amp;seconds={n}\">{n} s</a>",
                    pid = m.pid()
                )
            })
            .collect();
        let _ = writeln!(
            h,
            "<tr data-pid=\"{pid}\"><td>{pid}</td><td><a href=\"/ui/view?pid={pid}&amp;seconds={DEFAULT_SECONDS}\">{comm}</a></td>\
             <td>{container}</td><td>{pod}</td><td>{rate:.1}</td><td>{links}</td></tr>",
            pid = m.pid(),
            comm = escape(&m.comm),
            container = escape(labels.container_id.get(..12).unwrap_or("")),
            pod = escape(&pod),
            rate = r.samples_per_sec,
            links = links.join(" · "),
        );
    }
    h.push_str("</table>\n</body></html>\n");
    Html(h)
}

/// A process's last N seconds, cut from the window.
struct WindowSource {
    shared: Arc<Shared>,
}

/// The `pid` and `seconds` of a page's query.
fn target(params: &[(String, String)]) -> Result<(u32, u64), SourceError> {
    let get = |k: &str| {
        params
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.trim())
    };
    let pid = get("pid")
        .ok_or_else(|| SourceError::BadRequest("pid: which process? (pid=PID)".into()))?;
    let pid: u32 = pid
        .parse()
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| SourceError::BadRequest(format!("pid={pid:?}: not a process id")))?;
    let seconds = match get("seconds") {
        None => DEFAULT_SECONDS,
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|s| (1..=MAX_SECONDS).contains(s))
            .ok_or_else(|| {
                SourceError::BadRequest(format!(
                    "seconds={v:?}: must be a whole number from 1 to {MAX_SECONDS}"
                ))
            })?,
    };
    Ok((pid, seconds))
}

impl ProfileSource for WindowSource {
    fn snapshot<'a>(
        &'a self,
        params: &'a [(String, String)],
    ) -> BoxFuture<'a, Result<Arc<Snapshot>, SourceError>> {
        Box::pin(async move {
            let (pid, seconds) = target(params)?;
            let s = &self.shared;
            let start = start_ticks(pid).filter(|_| crate::process::is_alive(pid));
            let Some(start_ticks) = start else {
                return Err(SourceError::NotFound(format!(
                    "no running process with pid {pid}"
                )));
            };
            let t1 = mono_now();
            s.wait_drained(t1).await;
            let t0 = t1.saturating_sub(seconds * 1_000_000_000);
            let comm = lock(&s.window)
                .processes()
                .iter()
                .find(|m| m.pid() == pid && m.start_ticks == start_ticks)
                .map(|m| m.comm.clone())
                .unwrap_or_default();
            let header = Header {
                event: s.event,
                frequency: s.frequency,
                start_unix_nanos: mono_to_unix_ns(t0),
                duration_nanos: (t1 - t0) as i64,
                command: format!("agent ui pid={pid} last {seconds}s of the window"),
                lost: 0,
                truncated: 0,
                rate_limited: 0,
                notes: Vec::new(),
                bpf_run_ns: 0,
                bpf_run_cnt: 0,
            };
            let title = format!("pid {pid} {comm} · last {seconds} s");
            let filter = Filter::Pid { pid, start_ticks };
            let snap = build_profile(s, filter, s.event, t0, t1, header, move |p| {
                Snapshot::from_profile(title, &p)
            })
            .await
            .ok_or_else(|| SourceError::Failed("the symbolizer thread is gone".into()))?
            .map_err(|e| SourceError::Failed(format!("{e:#}")))?;
            Ok(Arc::new(snap))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(s: &[(&str, &str)]) -> Vec<(String, String)> {
        s.iter().map(|(a, b)| ((*a).into(), (*b).into())).collect()
    }

    #[test]
    fn targets() {
        assert_eq!(target(&pairs(&[("pid", "12")])).unwrap(), (12, 30));
        assert_eq!(
            target(&pairs(&[("pid", "12"), ("seconds", "5")])).unwrap(),
            (12, 5)
        );
        for bad in [
            vec![],
            vec![("pid", "x")],
            vec![("pid", "0")],
            vec![("pid", "1"), ("seconds", "0")],
            vec![("pid", "1"), ("seconds", "301")],
        ] {
            assert!(matches!(
                target(&pairs(&bad)),
                Err(SourceError::BadRequest(_))
            ));
        }
    }

    #[test]
    fn cookie_is_the_tokens_digest() {
        let c = cookie_value("s3cret");
        assert_eq!(c.len(), 64);
        assert!(!c.contains("s3cret"));
        assert_eq!(c, cookie_value("s3cret"));
        assert_ne!(c, cookie_value("s3cret2"));
    }
}
