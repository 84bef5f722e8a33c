//! A debuginfod client: debug files by GNU build ID from the servers in
//! `DEBUGINFOD_URLS` (the distributions' symbol servers, or a company's),
//! through the cache elfutils' own client keeps, so gdb, perf and we share
//! what any of us fetched.
//!
//! For each build ID: `GET SERVER/buildid/ID/debuginfo` on every server in
//! order, then the same for `/executable`; the cache is asked first for
//! each. A fetched file is used (and cached) only once its own build ID is
//! checked. When every server answers 404 the miss is cached, as elfutils
//! caches it, and not asked again for `cache_miss_s` seconds. A server
//! that cannot be reached, or stalls past `DEBUGINFOD_TIMEOUT`, gets one
//! warning and is not asked again in the same run; other failures are one
//! warning per server too, and every failure is also reported per binary.
//!
//! The work runs on a thread of its own with its own small async runtime,
//! so that callers in and out of async code (the recorder runs in one, the
//! `symbolize` command does not) call it the same way; at most
//! [`MAX_REQUESTS`] requests run at once.

mod cache;
mod client;
mod config;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub use cache::Kind;
pub use config::{process_env, Config, ConfigError, Env};

use cache::{Cache, CacheError, Entry};
use client::FetchError;

use super::SymbolFile;
use crate::process::buildid;
use client::Http;

/// Requests in flight at once, over all servers and build IDs.
pub const MAX_REQUESTS: usize = 4;

/// Where a file came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Already in the cache (fetched earlier, by us or by elfutils).
    Cache,
    /// Downloaded now from this server.
    Server(String),
}

/// A verified file for a build ID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetched {
    /// Its place in the cache.
    pub path: PathBuf,
    pub kind: Kind,
    pub origin: Origin,
}

impl Fetched {
    /// For summaries: `debuginfod http://server (debuginfo)`.
    pub fn how(&self) -> String {
        match &self.origin {
            Origin::Cache => format!("debuginfod cache, {}", self.kind.as_str()),
            Origin::Server(url) => format!("debuginfod {url}, {}", self.kind.as_str()),
        }
    }
}

/// The outcome of looking one build ID up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lookup {
    pub found: Option<Fetched>,
    /// What went wrong on the way, one phrase each (a server without the
    /// file, a refused file, a timeout), even when a file was found later.
    pub problems: Vec<String>,
}

impl Lookup {
    fn note(&mut self, problem: String) {
        if !self.problems.contains(&problem) {
            self.problems.push(problem);
        }
    }

    /// The problems as one summary phrase: `debuginfod: not found on URL`.
    pub fn explain(&self) -> Option<String> {
        (!self.problems.is_empty()).then(|| format!("debuginfod: {}", self.problems.join("; ")))
    }

    fn failed(why: String) -> Lookup {
        Lookup {
            found: None,
            problems: vec![why],
        }
    }
}

/// Why one server did not give us a usable file.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("sent a file with {0}, not the one asked for: refused")]
    Refused(String),
}

/// One server and what this run learned about it.
struct Server {
    url: String,
    /// Set when it could not be reached: it is skipped from then on.
    down: AtomicBool,
    /// Why, for the binaries it is then skipped for.
    down_why: Mutex<String>,
    /// Set once it answered anything. Until then one request at a time
    /// goes to it, so a dead server costs one timeout, not one per
    /// request in flight.
    reached: AtomicBool,
    gate: tokio::sync::Mutex<()>,
    /// Set once it had its warning line.
    warned: AtomicBool,
}

impl Server {
    /// The one warning line of this server.
    fn warn_once(&self, failure: &Failure) {
        if self.warned.swap(true, Ordering::Relaxed) {
            return;
        }
        let then = if self.down.load(Ordering::Relaxed) {
            "; not asked again in this run, frames it would name stay addresses"
        } else {
            ""
        };
        tracing::warn!("debuginfod server {}: {failure}{then}", self.url);
    }
}

struct Inner {
    config: Config,
    cache: Cache,
    servers: Vec<Server>,
    /// Every build ID looked up so far, so each is asked about once.
    memo: Mutex<HashMap<String, Lookup>>,
    /// Set once a cache failure had its warning line.
    cache_warned: AtomicBool,
}

/// The client. Cheap to clone; clones share what they learned.
#[derive(Clone)]
pub struct Debuginfod {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Debuginfod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Debuginfod")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Debuginfod {
    pub fn new(config: Config) -> Debuginfod {
        let servers = config
            .servers
            .iter()
            .map(|url| Server {
                url: url.clone(),
                down: AtomicBool::new(false),
                down_why: Mutex::new(String::new()),
                reached: AtomicBool::new(false),
                gate: tokio::sync::Mutex::new(()),
                warned: AtomicBool::new(false),
            })
            .collect();
        Debuginfod {
            inner: Arc::new(Inner {
                cache: Cache::new(config.cache_dir.clone()),
                config,
                servers,
                memo: Mutex::new(HashMap::new()),
                cache_warned: AtomicBool::new(false),
            }),
        }
    }

    /// Looks one build ID up (see [`Debuginfod::find_all`]).
    pub fn find(&self, build_id: &str) -> Lookup {
        self.find_all(&[build_id.to_owned()])
            .pop()
            .unwrap_or_default()
    }

    /// Looks build IDs up, concurrently, and returns one outcome per ID in
    /// order. Blocks until all are done; safe to call from async code.
    pub fn find_all(&self, build_ids: &[String]) -> Vec<Lookup> {
        let ids: Vec<String> = build_ids.iter().map(|s| s.to_ascii_lowercase()).collect();
        let mut todo: Vec<String> = {
            let memo = self.memo();
            ids.iter()
                .filter(|id| !memo.contains_key(*id))
                .cloned()
                .collect()
        };
        todo.sort();
        todo.dedup();
        let mut results: HashMap<String, Lookup> = HashMap::new();
        let (askable, bad): (Vec<String>, Vec<String>) =
            todo.into_iter().partition(|id| is_gnu_build_id(id));
        for id in bad {
            let why = format!("{id:?} is not a GNU build ID, so no server can have it");
            results.insert(id, Lookup::failed(why));
        }
        if !askable.is_empty() {
            let inner = self.inner.clone();
            let batch = askable.clone();
            let ran = std::thread::Builder::new()
                .name("debuginfod".into())
                .spawn(move || run_batch(&inner, batch))
                .map_err(|e| format!("cannot start the debuginfod thread: {e}"))
                .and_then(|t| {
                    t.join()
                        .map_err(|_| "the debuginfod thread panicked".to_owned())
                });
            match ran {
                Ok(done) => results.extend(done),
                Err(why) => {
                    tracing::warn!("{why}");
                    for id in &askable {
                        results.insert(id.clone(), Lookup::failed(why.clone()));
                    }
                }
            }
        }
        let mut memo = self.memo();
        memo.extend(results);
        ids.iter()
            .map(|id| memo.get(id).cloned().unwrap_or_default())
            .collect()
    }

    fn memo(&self) -> std::sync::MutexGuard<'_, HashMap<String, Lookup>> {
        // A panic elsewhere cannot leave the map half-updated.
        self.inner.memo.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Hex of even length, as build IDs are, and short enough for a path.
pub fn is_gnu_build_id(id: &str) -> bool {
    (2..=128).contains(&id.len())
        && id.len().is_multiple_of(2)
        && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Runs one batch of lookups to completion on a runtime of its own.
fn run_batch(inner: &Arc<Inner>, ids: Vec<String>) -> Vec<(String, Lookup)> {
    let fail_all = |why: String| {
        tracing::warn!("debuginfod: {why}");
        ids.iter()
            .map(|id| (id.clone(), Lookup::failed(why.clone())))
            .collect()
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail_all(format!("cannot start its async runtime: {e}")),
    };
    rt.block_on(async {
        let http = match Http::new(inner.config.timeout, MAX_REQUESTS) {
            Ok(h) => Arc::new(h),
            Err(e) => return fail_all(format!("cannot set up the HTTP client: {e}")),
        };
        let mut set = tokio::task::JoinSet::new();
        for id in ids.iter().cloned() {
            let (inner, http) = (inner.clone(), http.clone());
            set.spawn(async move {
                let l = resolve(&inner, &http, &id).await;
                (id, l)
            });
        }
        let mut out = Vec::with_capacity(ids.len());
        while let Some(done) = set.join_next().await {
            match done {
                Ok(pair) => out.push(pair),
                Err(e) => tracing::warn!("debuginfod: a lookup failed: {e}"),
            }
        }
        out
    })
}

/// The cache, then every server, for the debug file, then the executable.
async fn resolve(inner: &Inner, http: &Http, id: &str) -> Lookup {
    let mut lookup = Lookup::default();
    let mut not_found_on: Vec<&str> = Vec::new();
    for kind in [Kind::Debuginfo, Kind::Executable] {
        match inner.cache.lookup(id, kind) {
            Entry::Hit(path) => match verify(&path, id) {
                Ok(()) => {
                    lookup.found = Some(Fetched {
                        path,
                        kind,
                        origin: Origin::Cache,
                    });
                    return lookup;
                }
                Err(why) => lookup.note(format!("cached {} has {why}: not used", path.display())),
            },
            Entry::Miss => {
                lookup.note(format!(
                    "not found (a miss cached in {} less than {} s ago)",
                    inner.cache.root().display(),
                    inner.cache.miss_ttl().as_secs()
                ));
                continue;
            }
            Entry::Absent => {}
        }
        let mut all_said_404 = true;
        let mut asked = false;
        for server in &inner.servers {
            let _first = match server.reached.load(Ordering::Relaxed) {
                true => None,
                false => Some(server.gate.lock().await),
            };
            if server.down.load(Ordering::Relaxed) {
                all_said_404 = false;
                let why = server
                    .down_why
                    .lock()
                    .map(|w| w.clone())
                    .unwrap_or_default();
                lookup.note(format!("{}: {why}", server.url));
                continue;
            }
            asked = true;
            let got = fetch_one(inner, http, &server.url, id, kind).await;
            if !matches!(&got, Err(Failure::Fetch(e)) if e.server_is_down()) {
                server.reached.store(true, Ordering::Relaxed);
            }
            match got {
                Ok(path) => {
                    lookup.found = Some(Fetched {
                        path,
                        kind,
                        origin: Origin::Server(server.url.clone()),
                    });
                    return lookup;
                }
                Err(Failure::Fetch(FetchError::NotFound)) => {
                    if !not_found_on.contains(&server.url.as_str()) {
                        not_found_on.push(&server.url);
                    }
                }
                Err(Failure::Cache(e)) => {
                    // Our disk, not the server: one warning for the run.
                    all_said_404 = false;
                    lookup.note(e.to_string());
                    if !inner.cache_warned.swap(true, Ordering::Relaxed) {
                        tracing::warn!("{e}; nothing can be fetched into it");
                    }
                }
                Err(f) => {
                    all_said_404 = false;
                    if matches!(&f, Failure::Fetch(e) if e.server_is_down()) {
                        if let Ok(mut why) = server.down_why.lock() {
                            *why = f.to_string();
                        }
                        server.down.store(true, Ordering::Relaxed);
                    }
                    lookup.note(format!("{}: {f}", server.url));
                    server.warn_once(&f);
                }
            }
        }
        if asked && all_said_404 {
            if let Err(e) = inner.cache.remember_miss(id, kind) {
                tracing::debug!("{e}");
            }
        }
    }
    if !not_found_on.is_empty() {
        lookup
            .problems
            .insert(0, format!("not found on {}", not_found_on.join(", ")));
    }
    lookup
}

/// One GET into a temporary file of the cache; checked, then renamed in.
async fn fetch_one(
    inner: &Inner,
    http: &Http,
    server: &str,
    id: &str,
    kind: Kind,
) -> Result<PathBuf, Failure> {
    let url = format!("{server}/buildid/{id}/{}", kind.as_str());
    let mut tmp = inner.cache.temp_file(id, kind)?;
    let bytes = http.get(&url, tmp.as_file_mut()).await?;
    tracing::debug!("debuginfod: {url}: {bytes} bytes");
    verify(tmp.path(), id).map_err(Failure::Refused)?;
    Ok(inner.cache.commit(tmp, id, kind)?)
}

/// Checks that the file at `path` has GNU build ID `id`; else what it has.
fn verify(path: &Path, id: &str) -> Result<(), String> {
    let file = SymbolFile::open(path).map_err(|e| format!("an error on reading ({e})"))?;
    match buildid::read(&file.data).gnu {
        Some(got) if got == id => Ok(()),
        Some(got) => Err(format!("build ID {got}")),
        None => Err("no GNU build ID".to_owned()),
    }
}

/// The GNU build ID to look up for `file`, if nothing local names its
/// frames with files and lines: it has no DWARF of its own, and no debug
/// file is installed for it under `DIR/.build-id/` in `debug_dirs`.
/// Callers leave out Go binaries, which `.gopclntab` names in full.
pub fn wanted(file: &SymbolFile, debug_dirs: &[PathBuf]) -> Option<String> {
    let id = buildid::read(&file.data).gnu?;
    if super::elf::has_dwarf(&file.data) || id.len() < 4 {
        return None;
    }
    let (head, rest) = id.split_at(2);
    let installed = debug_dirs.iter().any(|d| {
        d.join(".build-id")
            .join(head)
            .join(format!("{rest}.debug"))
            .is_file()
    });
    (!installed).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hex_build_ids_are_asked_for() {
        assert!(is_gnu_build_id("53d38b78aa"));
        assert!(!is_gnu_build_id("53d38b78a"));
        assert!(!is_gnu_build_id("abc/def"));
        assert!(!is_gnu_build_id(""));
        assert!(!is_gnu_build_id(&"ab".repeat(65)));
        // Nothing is sent for them: the server does not exist.
        let root = tempfile::tempdir().unwrap();
        let d = Debuginfod::new(Config {
            servers: vec!["http://127.0.0.1:1".into()],
            timeout: None,
            cache_dir: root.path().to_owned(),
        });
        let l = d.find("go-build-id/xyz");
        assert_eq!(l.found, None);
        assert!(l.problems[0].contains("not a GNU build ID"), "{l:?}");
    }

    #[test]
    fn a_cache_that_cannot_be_written_is_named() {
        let root = tempfile::tempdir().unwrap();
        // A file where the cache directory should be.
        let blocked = root.path().join("cache");
        std::fs::write(&blocked, b"").unwrap();
        let d = Debuginfod::new(Config {
            servers: vec!["http://127.0.0.1:1".into()],
            timeout: None,
            cache_dir: blocked.clone(),
        });
        let l = d.find(&"ab".repeat(20));
        assert_eq!(l.found, None);
        let want = format!("debuginfod cache {}", blocked.display());
        assert!(l.problems.iter().any(|p| p.starts_with(&want)), "{l:?}");
    }

    #[test]
    fn a_verified_cache_entry_is_used_and_another_is_not() {
        let exe = std::fs::read("/proc/self/exe").unwrap();
        let id = buildid::read(&exe).gnu.unwrap();
        let root = tempfile::tempdir().unwrap();
        let cache = Cache::new(root.path().to_owned());
        let mut tmp = cache.temp_file(&id, Kind::Executable).unwrap();
        std::io::Write::write_all(&mut tmp, &exe).unwrap();
        let path = cache.commit(tmp, &id, Kind::Executable).unwrap();
        // A port nothing listens on: any request would fail.
        let d = Debuginfod::new(Config {
            servers: vec!["http://127.0.0.1:1".into()],
            timeout: None,
            cache_dir: root.path().to_owned(),
        });
        // debuginfo: the server is asked and refuses the connection; then
        // the cached executable is found.
        let l = d.find(&id.to_ascii_uppercase());
        let found = l.found.clone().unwrap();
        assert_eq!((found.path, found.kind), (path, Kind::Executable));
        assert_eq!(found.origin, Origin::Cache);
        assert!(
            l.problems[0].contains("http://127.0.0.1:1: unreachable"),
            "{l:?}"
        );
        // Asked once: the second answer is the memo's.
        assert_eq!(d.find(&id), l);
        // A cached file with the wrong build ID is not used.
        let other = "00".repeat(20);
        std::fs::create_dir_all(root.path().join(&other)).unwrap();
        std::fs::write(root.path().join(&other).join("debuginfo"), &exe).unwrap();
        let l = d.find(&other);
        assert_eq!(l.found, None);
        assert!(
            l.problems[0].contains(&format!("has build ID {id}: not used")),
            "{l:?}"
        );
    }
}
