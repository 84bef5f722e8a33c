//! The browser UI: `rprof-bpf report --http ADDR FILE [--diff-base OLD]`,
//! and the same pages in the agent (`/ui/`).
//!
//! One page (`assets/`: hand-written HTML, CSS and JavaScript, compiled
//! into the binary, no build step, nothing fetched from anywhere else)
//! draws what a small JSON API sends. Everything heavy happens here, on
//! the server, with the `report` code: filtering, the top table, the call
//! tree. The page gets only what it draws: the top table's rows and the
//! flame graph frames at least half a pixel wide, so a million-sample
//! profile costs the browser no more than a small one.
//!
//! - `GET {prefix}api/meta`: sample types, label keys and values, and a
//!   snapshot id the other calls name (`snap=`), so that an agent page
//!   keeps looking at the profile it loaded.
//! - `GET {prefix}api/top`, `api/flame`, `api/peek`, `api/source`: the
//!   panels. Every view parameter is in the page's URL (sample type
//!   `si`, `focus`, `ignore`, `hide`, tag filters `tf`/`ti`, `noinlines`,
//!   `norm`, zoom `z`, `search`, `fn`), so a view can be shared.
//!
//! Bad parameters get 400 with the reason; an unknown snapshot 404 (the
//! page then reloads it).

mod source;
mod tree;
mod views;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Context, Result};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::Value;

pub use source::{BoxFuture, FileSource, ProfileSource, Snapshot, SourceError};
use views::{parse_query, Query as ViewQuery, View};

use super::ReportArgs;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// Snapshots kept for `snap=` ids (an agent makes one per page load).
const SNAPSHOTS_KEPT: usize = 8;

/// The server's state.
struct Ui {
    source: Arc<dyn ProfileSource>,
    snaps: Mutex<Vec<(u64, Arc<Snapshot>)>>,
    next: AtomicU64,
}

impl Ui {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(u64, Arc<Snapshot>)>> {
        self.snaps.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The id of `snap`, registering it if new.
    fn register(&self, snap: Arc<Snapshot>) -> u64 {
        let mut snaps = self.lock();
        if let Some((id, _)) = snaps.iter().find(|(_, s)| Arc::ptr_eq(s, &snap)) {
            return *id;
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        if snaps.len() >= SNAPSHOTS_KEPT {
            snaps.remove(0);
        }
        snaps.push((id, snap));
        id
    }

    fn find(&self, id: u64) -> Option<Arc<Snapshot>> {
        self.lock()
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, s)| s.clone())
    }
}

/// The UI's routes: the page at `page` (e.g. "/" or "/ui/view"), its
/// assets and API under `prefix` (e.g. "/" or "/ui/"), the page's
/// directory, so that its relative links work.
pub fn router(source: Arc<dyn ProfileSource>, prefix: &str, page: &str) -> Router {
    let ui = Arc::new(Ui {
        source,
        snaps: Mutex::new(Vec::new()),
        next: AtomicU64::new(1),
    });
    Router::new()
        .route(
            page,
            get(|| async { asset(INDEX_HTML, "text/html; charset=utf-8") }),
        )
        .route(
            &format!("{prefix}app.js"),
            get(|| async { asset(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            &format!("{prefix}app.css"),
            get(|| async { asset(APP_CSS, "text/css; charset=utf-8") }),
        )
        .route(&format!("{prefix}api/meta"), get(meta))
        .route(&format!("{prefix}api/{{panel}}"), get(panel))
        .with_state(ui)
}

/// Headers every answer carries: nothing may be loaded from elsewhere
/// (the page works air-gapped and cannot leak a profile), and nothing is
/// cached across snapshots.
fn secure(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn asset(body: &'static str, kind: &'static str) -> Response {
    secure(([(header::CONTENT_TYPE, kind)], body).into_response())
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    let body = serde_json::json!({ "error": msg.into() }).to_string();
    secure(
        (
            status,
            [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
            body,
        )
            .into_response(),
    )
}

fn answer(v: Value) -> Response {
    secure(
        (
            [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
            v.to_string(),
        )
            .into_response(),
    )
}

fn source_error(e: SourceError) -> Response {
    let status = match e {
        SourceError::BadRequest(_) => StatusCode::BAD_REQUEST,
        SourceError::NotFound(_) => StatusCode::NOT_FOUND,
        SourceError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e.to_string())
}

type Pairs = Result<Query<Vec<(String, String)>>, QueryRejection>;

/// The query pairs and what they ask for, or the reason for a 400.
fn pairs(q: Pairs) -> Result<(Vec<(String, String)>, ViewQuery), String> {
    let Query(pairs) = q.map_err(|e| format!("bad query: {e}"))?;
    let parsed = parse_query(&pairs)?;
    Ok((pairs, parsed))
}

/// `api/meta`: takes a snapshot from the source (the agent cuts a new
/// profile) and describes it.
async fn meta(State(ui): State<Arc<Ui>>, q: Pairs) -> Response {
    let (pairs, _) = match pairs(q) {
        Ok(p) => p,
        Err(m) => return error(StatusCode::BAD_REQUEST, m),
    };
    let snap = match ui.source.snapshot(&pairs).await {
        Ok(s) => s,
        Err(e) => return source_error(e),
    };
    let id = ui.register(snap.clone());
    match tokio::task::spawn_blocking(move || views::meta(&snap, id)).await {
        Ok(v) => answer(v),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `api/top`, `api/flame`, `api/peek`, `api/source` on the snapshot the
/// query names (or the source's current one).
async fn panel(
    State(ui): State<Arc<Ui>>,
    axum::extract::Path(panel): axum::extract::Path<String>,
    q: Pairs,
) -> Response {
    if !matches!(panel.as_str(), "top" | "flame" | "peek" | "source") {
        return error(StatusCode::NOT_FOUND, format!("no such panel: {panel}"));
    }
    let (pairs, q) = match pairs(q) {
        Ok(p) => p,
        Err(m) => return error(StatusCode::BAD_REQUEST, m),
    };
    let snap = match q.snap {
        Some(id) => match ui.find(id) {
            Some(s) => s,
            None => {
                return error(
                    StatusCode::NOT_FOUND,
                    format!("snapshot {id} is gone; reload the page"),
                )
            }
        },
        None => match ui.source.snapshot(&pairs).await {
            Ok(s) => s,
            Err(e) => return source_error(e),
        },
    };
    let work = move || -> Result<Value, (u16, String)> {
        let view = snap
            .view(&q.view.key(), || View::new(&snap, &q.view))
            .map_err(|e| (400, e))?;
        match panel.as_str() {
            "top" => Ok(views::top_table(&view, q.sort_cum)),
            "flame" => Ok(views::flame(&view, &q)),
            "peek" => views::peek(&view, &q),
            _ => views::source(&view, &q),
        }
    };
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(v)) => answer(v),
        Ok(Err((code, msg))) => error(
            StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST),
            msg,
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Parses `--http ADDR`: `HOST:PORT`, `:PORT` (loopback) or a bare port.
pub fn parse_addr(addr: &str) -> Result<SocketAddr> {
    let addr = addr.trim();
    if let Ok(port) = addr.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    if let Some(port) = addr.strip_prefix(':') {
        let port: u16 = port
            .parse()
            .map_err(|_| anyhow!("--http {addr:?}: {port:?} is not a port number"))?;
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    addr.to_socket_addrs()
        .with_context(|| format!("--http {addr:?}: expected HOST:PORT, :PORT or PORT"))?
        .next()
        .ok_or_else(|| anyhow!("--http {addr:?}: the host name has no address"))
}

/// `report --http`: loads the files (a bad one is an error before
/// anything is served), binds, prints the URL and serves until Ctrl-C.
pub fn serve_files(addr: &str, args: &ReportArgs) -> Result<()> {
    let addr = parse_addr(addr)?;
    let source = FileSource::open(args.file.clone(), args.diff_base.clone())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the HTTP server's runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr().context("reading the bound address")?;
        if !local.ip().is_loopback() {
            tracing::warn!(
                "--http {local}: the UI is reachable from other machines, without authentication; \
                 anyone who can connect can read the profile"
            );
        }
        let host = match local.ip() {
            IpAddr::V6(ip) => format!("[{ip}]"),
            ip if ip.is_unspecified() => "127.0.0.1".to_string(),
            ip => ip.to_string(),
        };
        println!(
            "rprof-bpf: serving {} at http://{host}:{}/ (Ctrl-C to stop)",
            args.file.display(),
            local.port()
        );
        let app = router(Arc::new(source), "/", "/");
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                // Ctrl-C or SIGTERM; without a SIGTERM handler, Ctrl-C only.
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(mut term) => {
                        tokio::select! {
                            _ = tokio::signal::ctrl_c() => {}
                            _ = term.recv() => {}
                        }
                    }
                    Err(_) => {
                        let _ = tokio::signal::ctrl_c().await;
                    }
                }
            })
            .await
            .context("serving HTTP")
    })
}
