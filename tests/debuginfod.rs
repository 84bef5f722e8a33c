//! debuginfod: debug files by build ID from elfutils' own server on
//! loopback, for `symbolize` and for live recording, then from the cache
//! with the server gone; and servers that answer 404, send the wrong file,
//! stall, or are not there.

mod harness;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::kernel::*;
use harness::*;
use rprof_bpf::pprof::{self, Mapping, ProfileBuilder};

/// elfutils' `debuginfod` serving one directory on a free port; killed on
/// drop. It binds every address (0.188 has no option to choose), but only
/// 127.0.0.1 is ever asked.
struct Server {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Server {
    /// Starts it on `dir`, its database and log under `work`.
    fn start(dir: &Path, work: &Path) -> Server {
        let exe = debuginfod_server();
        let port = free_port();
        let log = work.join(format!("debuginfod-{port}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(exe)
            .args(["-F", "-p", &port.to_string(), "-d"])
            .arg(work.join(format!("debuginfod-{port}.sqlite")))
            // One scanning thread, no grooming, no rescans: the initial
            // scan is all a test needs.
            .args(["-c", "1", "-g", "0", "-t", "0", "--disable-source-scan"])
            .arg(dir)
            // It would forward misses to these (federation).
            .env_remove("DEBUGINFOD_URLS")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("starting debuginfod");
        Server { child, port, log }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Waits until it serves `kind` for `build_id`: it indexes in the
    /// background after it starts listening.
    fn wait_for(&mut self, build_id: &str, kind: &str) {
        let path = format!("/buildid/{build_id}/{kind}");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!("debuginfod exited ({st}):\n{}", self.log());
            }
            if http_status(self.port, &path) == Some(200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "debuginfod did not index {path} in 120 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The status of `GET path` on a loopback port; `None` if nothing answers.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut status = String::new();
    BufReader::new(s).read_line(&mut status).ok()?;
    status.split(' ').nth(1)?.parse().ok()
}

/// How a stand-in server misbehaves.
#[derive(Clone)]
enum Behaviour {
    /// 404 for every path.
    NotFound,
    /// 200 with these bytes for every path.
    Serve(Arc<Vec<u8>>),
    /// Reads the request, then sends nothing.
    StallBeforeHeaders,
    /// Sends headers promising a megabyte and 1 KiB of it, then nothing.
    StallInBody,
}

/// A loopback HTTP server that behaves one way for every request and
/// counts them; stalled connections are held until it is dropped.
struct StandIn {
    port: u16,
    requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl StandIn {
    fn start(behaviour: Behaviour) -> StandIn {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, halt) = (requests.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if halt.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (b, count, halt) = (behaviour.clone(), count.clone(), halt.clone());
                std::thread::spawn(move || answer(conn, &b, &count, &halt));
            }
        });
        StandIn {
            port,
            requests,
            stop,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Serves the requests of one connection (HTTP/1.1 keeps it open).
fn answer(conn: TcpStream, b: &Behaviour, count: &AtomicUsize, halt: &AtomicBool) {
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut out = conn;
    loop {
        // The request line and headers, up to the blank line.
        let mut got_any = false;
        loop {
            let mut l = String::new();
            match reader.read_line(&mut l) {
                Ok(0) | Err(_) => return,
                Ok(_) if l.trim().is_empty() && got_any => break,
                Ok(_) => got_any = true,
            }
        }
        count.fetch_add(1, Ordering::Relaxed);
        let sent = match b {
            Behaviour::NotFound => {
                out.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found")
            }
            Behaviour::Serve(body) => {
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                out.write_all(head.as_bytes())
                    .and_then(|()| out.write_all(body))
            }
            Behaviour::StallBeforeHeaders | Behaviour::StallInBody => {
                if matches!(b, Behaviour::StallInBody) {
                    let head = "HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n";
                    let _ = out.write_all(head.as_bytes());
                    let _ = out.write_all(&[0x7f; 1024]);
                }
                // Held open, silent, until the test ends (at most a minute).
                let until = Instant::now() + Duration::from_secs(60);
                while !halt.load(Ordering::Relaxed) && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(50));
                }
                return;
            }
        };
        if sent.is_err() {
            return;
        }
    }
}

/// `rprof-bpf symbolize` with `env` (a private cache always), killed if it
/// takes more than a minute: a hang fails the test instead of stalling it.
fn symbolize_with(args: &[&str], cache: &Path, env: &[(&str, &str)]) -> Output {
    let mut c = rprof();
    c.arg("symbolize")
        .args(args)
        .env("DEBUGINFOD_CACHE_PATH", cache)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!(
                "symbolize hung for 60 s:\n{}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// [`symbolize_with`], which must succeed; its summary (stderr).
fn symbolize_ok(args: &[&str], cache: &Path, env: &[(&str, &str)]) -> String {
    let o = symbolize_with(args, cache, env);
    assert_ok(&o);
    stderr(&o)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The summary line of the mapping whose file name ends with `name`.
fn line_for<'a>(summary: &'a str, name: &str) -> &'a str {
    summary
        .lines()
        .find(|l| l.trim_start().starts_with('/') && l.contains(&format!("{name} [")))
        .unwrap_or_else(|| panic!("no summary line for {name}:\n{summary}"))
}

fn warnings(summary: &str) -> Vec<&str> {
    summary
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .collect()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// An unstripped build of the inline fixture and its `--strip-all` twin
/// (same build ID) in `serve/` and `deploy/` under `dir`.
fn inline_builds(dir: &Path) -> (PathBuf, PathBuf, String) {
    let serve = dir.join("serve");
    let deploy = dir.join("deploy");
    std::fs::create_dir_all(&serve).unwrap();
    std::fs::create_dir_all(&deploy).unwrap();
    let full = serve.join("inline");
    build_c("inline.c", &full, &["-O2", "-g", "-fno-omit-frame-pointer"]);
    let stripped = deploy.join("inline");
    let ok = Command::new("objcopy")
        .args(["--strip-all", s(&full), s(&stripped)])
        .status()
        .unwrap()
        .success();
    assert!(ok, "objcopy --strip-all");
    let id = gnu_build_id(&full);
    assert_eq!(gnu_build_id(&stripped), id);
    (full, stripped, id)
}

#[test]
fn a_real_server_names_offline_and_live_then_its_cache_without_it() {
    let _lock = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name);
    let (full, stripped, id) = inline_builds(dir.path());
    let mut server = Server::start(&d("serve"), dir.path());

    // The reference: live symbolization of the unstripped build. Then the
    // stripped build, raw.
    let (live, raw) = (d("live.pb.gz"), d("raw.pb.gz"));
    let t = Target::spawn(&full, &["20"]);
    assert_ok(&record_pid(t.pid(), "2", &live, &[]));
    drop(t);
    let t = Target::spawn(&stripped, &["20"]);
    assert_ok(&record_pid(t.pid(), "2", &raw, &["--no-symbolize"]));
    drop(t);
    let live = load(&live);
    assert!(lines_by_offset(&load(&raw), "/inline").is_empty());
    server.wait_for(&id, "debuginfo");
    let url = server.url();

    // Offline: DEBUGINFOD_URLS, no --debug-dir.
    let cache = d("cache");
    let sym = d("sym.pb.gz");
    let summary = symbolize_ok(
        &[s(&raw), "-o", s(&sym)],
        &cache,
        &[("DEBUGINFOD_URLS", &url)],
    );
    let cached = cache.join(&id).join("debuginfo");
    let line = line_for(&summary, "/deploy/inline");
    assert!(
        line.contains(&format!(
            "found {} (debuginfod {url}, debuginfo)",
            cached.display()
        )),
        "{line}"
    );
    assert!(warnings(&summary).is_empty(), "{summary}");
    let symp = load(&sym);
    assert_inline_fixture_named_as_live(&live, &symp);
    // The cache is elfutils': the file itself, read-only, build ID checked.
    let meta = std::fs::metadata(&cached).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o400);
    assert_eq!(gnu_build_id(&cached), id);
    assert_eq!(meta.len(), std::fs::metadata(&full).unwrap().len());

    // Live: off by default, even with DEBUGINFOD_URLS set.
    let quiet_cache = d("cache-live-off");
    let off = d("live-off.pb.gz");
    let t = Target::spawn(&stripped, &["20"]);
    let o = record_pid_command(t.pid(), "2", &off, &[])
        .env("DEBUGINFOD_URLS", &url)
        .env("DEBUGINFOD_CACHE_PATH", &quiet_cache)
        .output()
        .unwrap();
    drop(t);
    assert_ok(&o);
    assert!(lines_by_offset(&load(&off), "/inline").is_empty());
    assert!(!quiet_cache.exists());

    // Live with --debuginfod URL: fetched after the capture, then named as
    // the unstripped build is.
    let on = d("live-on.pb.gz");
    let live_cache = d("cache-live");
    let t = Target::spawn(&stripped, &["20"]);
    let o = record_pid_command(t.pid(), "2", &on, &["--debuginfod", &url])
        .env("DEBUGINFOD_CACHE_PATH", &live_cache)
        .output()
        .unwrap();
    drop(t);
    assert_ok(&o);
    let text = stderr(&o);
    let from = format!(
        "/deploy/inline [{id}]: names from {} (debuginfod {url}, debuginfo)",
        live_cache.join(&id).join("debuginfo").display()
    );
    assert!(text.contains(&from), "{text}");
    assert_inline_fixture_named_as_live(&live, &load(&on));

    // The server stopped: the cache still names everything, the same way.
    drop(server);
    let again = d("again.pb.gz");
    let summary = symbolize_ok(
        &[s(&raw), "-o", s(&again)],
        &cache,
        &[("DEBUGINFOD_URLS", &url)],
    );
    let line = line_for(&summary, "/deploy/inline");
    assert!(
        line.contains(&format!(
            "found {} (debuginfod cache, debuginfo)",
            cached.display()
        )),
        "{line}"
    );
    assert_eq!(load(&again), symp);

    // ... and with an empty cache, the unreachable server is one warning
    // line, however many mappings wanted it, and frames stay addresses.
    let summary = symbolize_ok(
        &[s(&raw), "-o", s(&d("down.pb.gz"))],
        &d("cache-empty"),
        &[("DEBUGINFOD_URLS", &url)],
    );
    let w = warnings(&summary);
    assert_eq!(w.len(), 1, "{summary}");
    assert!(
        w[0].contains(&url) && w[0].contains("unreachable"),
        "{}",
        w[0]
    );
    let line = line_for(&summary, "/deploy/inline");
    assert!(
        line.contains(&format!("debuginfod: {url}: unreachable")),
        "{line}"
    );
    assert!(lines_by_offset(&load(&d("down.pb.gz")), "/inline").is_empty());
}

#[test]
fn the_kernel_image_comes_through_a_real_server_as_with_vmlinux() {
    let _lock = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name);
    let serve = d("serve");
    std::fs::create_dir(&serve).unwrap();
    // A kernel image linked 16 MiB below where the kernel runs, with the
    // running kernel's build ID.
    let vmlinux = serve.join("vmlinux");
    write_vmlinux(
        &vmlinux,
        &kernel_text_symbols(),
        &kernel_build_id(),
        0x100_0000,
    );
    let mut server = Server::start(&serve, dir.path());
    let spin = d("spin");
    build_c("spin.c", &spin, &["-O2", "-fno-omit-frame-pointer"]);
    // write(2) in a loop: most samples are in the kernel.
    let t = Target::spawn(&spin, &["20", "sys"]);
    let raw = d("raw.pb.gz");
    assert_ok(&record_pid(t.pid(), "2", &raw, &["--no-symbolize"]));
    drop(t);
    let kid = rprof_bpf::symbolize::kernel::build_id().unwrap();
    // Its .text is allocated code, so the server files it as an executable.
    server.wait_for(&kid, "executable");

    let by_flag = d("by-flag.pb.gz");
    let o = symbolize_with(
        &[s(&raw), "-o", s(&by_flag), "--vmlinux", s(&vmlinux)],
        &d("unused-cache"),
        &[],
    );
    assert_ok(&o);
    let cache = d("cache");
    let by_server = d("by-server.pb.gz");
    let url = server.url();
    let summary = symbolize_ok(
        &[s(&raw), "-o", s(&by_server)],
        &cache,
        &[("DEBUGINFOD_URLS", &url)],
    );
    let line = summary
        .lines()
        .find(|l| l.contains("[kernel.kallsyms]"))
        .unwrap_or_else(|| panic!("{summary}"));
    let cached = cache.join(&kid).join("executable");
    assert!(
        line.contains(&format!(
            "found {} (debuginfod {url}, executable)",
            cached.display()
        )) && line.contains("KASLR slide +0x1000000"),
        "{line}"
    );
    // The miss for its debuginfo is remembered, elfutils' way.
    assert_eq!(
        std::fs::metadata(cache.join(&kid).join("debuginfo"))
            .unwrap()
            .len(),
        0
    );
    let (a, b) = (load(&by_flag), load(&by_server));
    let named = kernel_names(&b).values().filter(|n| n.is_some()).count();
    assert!(named > 0, "no kernel location named");
    assert_eq!(kernel_names(&a), kernel_names(&b));
}

/// A raw profile by hand: one unsymbolized mapping per build ID, each with
/// a few locations; no capture needed where no server can name anything.
fn synthetic_raw(path: &Path, build_ids: &[&str]) {
    let mut b = ProfileBuilder::new();
    b.sample_types(&[("samples", "count")]);
    for (i, id) in build_ids.iter().enumerate() {
        let start = 0x40_0000 + (i as u64) * 0x10_0000;
        let m = Mapping {
            memory_start: start,
            memory_limit: start + 0x1000,
            file_offset: 0,
            filename: b.intern(&format!("/srv/app{i}")),
            build_id: b.intern(id),
            ..Mapping::default()
        };
        let mid = b.add_mapping(m);
        let locs: Vec<u64> = (0..3)
            .map(|k| b.add_location(mid, start + 0x100 + k * 0x10, vec![]))
            .collect();
        b.add_sample(locs, vec![1], vec![]);
    }
    pprof::write_file_atomic(path, &pprof::encode_gzip(&b.finish())).unwrap();
}

fn no_names(p: &Path) -> bool {
    load(p).location.iter().all(|l| l.line.is_empty())
}

const ID_A: &str = "aa11223344556677889900aabbccddeeff001122";
const ID_B: &str = "bb11223344556677889900aabbccddeeff001122";

#[test]
fn a_server_that_has_nothing_is_one_line_per_binary_and_a_cached_miss() {
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name);
    let raw = d("raw.pb.gz");
    synthetic_raw(&raw, &[ID_A, ID_B]);
    let server = StandIn::start(Behaviour::NotFound);
    let url = server.url();
    let cache = d("cache");
    let out = d("out.pb.gz");
    let summary = symbolize_ok(
        &[s(&raw), "-o", s(&out)],
        &cache,
        &[("DEBUGINFOD_URLS", &url)],
    );
    // One line per binary says why, and nothing else mentions the server.
    for app in ["/srv/app0", "/srv/app1"] {
        let line = line_for(&summary, app);
        assert!(
            line.ends_with(&format!(
                "debuginfod: not found on {url}; 0/3 locations named"
            )),
            "{line}"
        );
    }
    assert_eq!(summary.matches(url.as_str()).count(), 2, "{summary}");
    assert!(warnings(&summary).is_empty(), "{summary}");
    assert!(no_names(&out));
    // debuginfo, then executable, for each.
    assert_eq!(server.requests(), 4);
    for id in [ID_A, ID_B] {
        for kind in ["debuginfo", "executable"] {
            let m = std::fs::metadata(cache.join(id).join(kind)).unwrap();
            assert_eq!(m.len(), 0, "{id}/{kind}: a miss is an empty file");
        }
    }

    // Within cache_miss_s the misses stand: the server is not asked again.
    let summary = symbolize_ok(
        &[s(&raw), "-o", s(&out)],
        &cache,
        &[("DEBUGINFOD_URLS", &url)],
    );
    let line = line_for(&summary, "/srv/app0");
    assert!(
        line.contains("debuginfod: not found (a miss cached in"),
        "{line}"
    );
    assert_eq!(server.requests(), 4);

    // --no-debuginfod asks nobody, and leaves the cache alone.
    let o = symbolize_with(
        &[s(&raw), "-o", s(&out), "--no-debuginfod"],
        &d("cache-off"),
        &[("DEBUGINFOD_URLS", &url)],
    );
    assert_ok(&o);
    assert!(!stderr(&o).contains("debuginfod"), "{}", stderr(&o));
    assert!(!d("cache-off").exists());
}

#[test]
fn a_file_with_another_build_id_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name);
    let other = d("other");
    build_c("spin.c", &other, &["-O2", "-g"]);
    let other_id = gnu_build_id(&other);
    let raw = d("raw.pb.gz");
    synthetic_raw(&raw, &[ID_A]);
    let server = StandIn::start(Behaviour::Serve(Arc::new(std::fs::read(&other).unwrap())));
    let url = server.url();
    let cache = d("cache");
    let out = d("out.pb.gz");
    let summary = symbolize_ok(&[s(&raw), "-o", s(&out), "--debuginfod", &url], &cache, &[]);
    let refused = format!("sent a file with build ID {other_id}, not the one asked for: refused");
    let line = line_for(&summary, "/srv/app0");
    assert!(
        line.contains(&format!("debuginfod: {url}: {refused}")),
        "{line}"
    );
    let w = warnings(&summary);
    assert_eq!(w.len(), 1, "{summary}");
    assert!(w[0].contains(&url) && w[0].contains(&refused), "{}", w[0]);
    assert!(no_names(&out));
    // Both files were offered and refused; neither was kept, nor taken
    // for a miss, nor left half-written.
    assert_eq!(server.requests(), 2);
    let left: Vec<_> = std::fs::read_dir(cache.join(ID_A))
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn servers_that_stall_time_out_without_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name);
    let raw = d("raw.pb.gz");
    synthetic_raw(&raw, &[ID_A, ID_B]);
    let silent = StandIn::start(Behaviour::StallBeforeHeaders);
    let slow = StandIn::start(Behaviour::StallInBody);
    let urls = format!("{} {}", silent.url(), slow.url());
    let out = d("out.pb.gz");
    let summary = symbolize_ok(
        &[s(&raw), "-o", s(&out)],
        &d("cache"),
        &[("DEBUGINFOD_URLS", &urls), ("DEBUGINFOD_TIMEOUT", "1")],
    );
    // One warning per server; each is asked once, then left alone.
    let w = warnings(&summary);
    assert_eq!(w.len(), 2, "{summary}");
    for server in [&silent, &slow] {
        let mine: Vec<_> = w.iter().filter(|l| l.contains(&server.url())).collect();
        assert_eq!(mine.len(), 1, "{summary}");
        assert!(
            mine[0].contains("no progress within 1s (DEBUGINFOD_TIMEOUT)"),
            "{}",
            mine[0]
        );
        assert_eq!(server.requests(), 1, "{}", server.url());
    }
    assert!(no_names(&out));
    // A timeout is no 404: nothing is remembered as missing.
    assert!(!d("cache").join(ID_A).join("debuginfo").exists());
}

#[test]
fn a_server_url_that_is_not_http_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("raw.pb.gz");
    synthetic_raw(&raw, &[ID_A]);
    let out = dir.path().join("out.pb.gz");
    let cache = dir.path().join("cache");
    for (args, env, named) in [
        (
            vec![],
            "http://127.0.0.1:1 ftp://mirror.example/debuginfod",
            "DEBUGINFOD_URLS entry \"ftp://mirror.example/debuginfod\"",
        ),
        (
            vec!["--debuginfod", "debuginfod.example"],
            "",
            "--debuginfod entry \"debuginfod.example\"",
        ),
    ] {
        let mut all = vec![s(&raw), "-o", s(&out)];
        all.extend(args);
        let o = symbolize_with(&all, &cache, &[("DEBUGINFOD_URLS", env)]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains(named), "{}", stderr(&o));
        assert!(!out.exists());
    }
    // The recorder checks before it captures.
    let o = rprof()
        .args([
            "--seconds",
            "1",
            "--debuginfod",
            "file:///srv/debug",
            "-o",
            s(&out),
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--debuginfod entry \"file:///srv/debug\""),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists());
}
