//! End-to-end tests of `rprof-bpf agent`: the real agent binary with the
//! real BPF program, real fixtures, real HTTP clients (`go tool pprof`
//! among them), a real cgroup, and a local receiver speaking Pyroscope's
//! `/ingest` contract.

mod browser;
mod harness;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use harness::*;
use rprof_bpf::pprof::Profile;

/// A running agent on a free loopback port; SIGKILLed on drop if still up.
struct Agent {
    child: Child,
    port: u16,
    log: Arc<Mutex<String>>,
}

impl Agent {
    /// Starts `rprof-bpf agent --listen 127.0.0.1:0 ARGS` and waits until it
    /// says where it listens.
    fn start(args: &[&str]) -> Agent {
        let mut child = rprof()
            .args(["agent", "--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the agent");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("serving http://127.0.0.1:").nth(1) {
                    let port: u16 = rest.split('/').next().unwrap().parse().unwrap();
                    let _ = tx.send(port);
                }
                let mut l = log2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let port = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(p) => p,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the agent did not start:\n{}", log.lock().unwrap());
            }
        };
        Agent { child, port, log }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn get(&self, path: &str) -> Resp {
        http_get(self.port, path, &[])
    }

    fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        http_get(self.port, path, headers)
    }

    /// `/metrics` as name -> value (unlabelled series only).
    fn metrics(&self, headers: &[(&str, &str)]) -> HashMap<String, f64> {
        let r = self.get_with("/metrics", headers);
        assert_eq!(r.status, 200, "{}", r.text());
        r.text()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_owned(), v.parse().ok()?))
            })
            .collect()
    }

    /// Resident memory from /proc: (all of it, anonymous only) in bytes.
    /// File-backed pages are the binaries the agent maps to symbolize
    /// (page cache the kernel can reclaim); anonymous memory is its heap.
    fn rss(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let field = |name: &str| -> u64 {
            let kb: u64 = status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap()
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .unwrap();
            kb * 1024
        };
        (field("VmRSS:"), field("RssAnon:"))
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Fails the test if the agent has exited.
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("the agent exited with {status}:\n{}", self.log());
        }
    }

    /// SIGTERM, then the exit status must be success and the log clean.
    fn stop(mut self) -> String {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "agent ignored SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        std::thread::sleep(Duration::from_millis(100));
        let log = self.log();
        assert!(status.success(), "agent exited with {status}:\n{log}");
        assert!(!log.contains("panicked at"), "{log}");
        log
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP response.
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn profile(&self) -> Profile {
        assert_eq!(self.status, 200, "{}", self.text());
        rprof_bpf::pprof::decode(&self.body).expect("a pprof profile")
    }
}

/// A minimal HTTP/1.1 GET with `Connection: close`.
fn http_get(port: u16, path: &str, headers: &[(&str, &str)]) -> Resp {
    http_get_within(port, path, headers, Duration::from_secs(60))
}

/// [`http_get`], waiting at most `timeout` for each read.
fn http_get_within(port: u16, path: &str, headers: &[(&str, &str)], timeout: Duration) -> Resp {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connecting to the agent");
    s.set_read_timeout(Some(timeout)).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("reading the response");
    parse_response(&raw)
}

/// Splits a raw HTTP/1.1 response into status, headers and (dechunked)
/// body.
fn parse_response(raw: &[u8]) -> Resp {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response headers");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Resp {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size =
            usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
}

/// The set of `pid` labels of a profile.
fn pids(p: &Profile) -> std::collections::BTreeSet<i64> {
    p.sample
        .iter()
        .filter_map(|s| num_label(p, s, "pid"))
        .collect()
}

fn spin_binary(dir: &Path) -> PathBuf {
    let exe = dir.join("spin");
    build_c("spin.c", &exe, &["-O1", "-g", "-fno-omit-frame-pointer"]);
    exe
}

fn spin(exe: &Path, seconds: u32) -> Target {
    let mut c = Command::new(exe);
    c.arg(seconds.to_string());
    Target::start(c)
}

/// The agent unwinds with `.eh_frame` tables by default: binaries without
/// frame pointers (a C callback through libc's qsort, a Rust release
/// build) reach their thread's root when pulled by pid.
#[test]
fn pull_gives_whole_stacks_without_frame_pointers() {
    let _lock = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let qsort = dir.path().join("qsort");
    build_c("qsort.c", &qsort, &["-O2", "-g", "-fomit-frame-pointer"]);
    let rust = build_rustspin();
    let agent = Agent::start(&[]);
    for (exe, chain) in [
        (&qsort, &["sort_rounds", "main"][..]),
        (&rust, &["rustspin::drive", "rustspin::main"][..]),
    ] {
        let t = Target::spawn(exe, &["8"]);
        // Give the table worker a moment: until the process's tables are
        // in, its stacks are walked with frame pointers.
        std::thread::sleep(Duration::from_secs(1));
        let p = agent
            .get(&format!("/debug/pprof/profile?pid={}&seconds=3", t.pid()))
            .profile();
        let (root, whole) = (root_share(&p), chain_share(&p, chain));
        eprintln!(
            "{}: {} samples, {:.1}% reach the root, {:.1}% have {chain:?}",
            exe.display(),
            total(&p, 0),
            root * 100.0,
            whole * 100.0
        );
        assert!(total(&p, 0) >= 50, "{} samples", total(&p, 0));
        assert!(root >= 0.98, "{}: {root:.3} reach the root", exe.display());
        assert!(
            whole >= 0.98,
            "{}: {whole:.3} have {chain:?}",
            exe.display()
        );
    }
}

#[test]
fn pull_with_go_tool_pprof() {
    let go = go127();
    let _lock = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("gohot");
    build_go(&go, "gohot", &exe, &[]);
    let mut cmd = Command::new(&exe);
    cmd.args(["-seconds", "30"]);
    let target = spin_like(cmd);
    let agent = Agent::start(&[]);

    let url = format!(
        "http://127.0.0.1:{}/debug/pprof/profile?pid={}&seconds=3",
        agent.port,
        target.pid()
    );
    // pprof asks here for names of addresses left unnamed (as it does of
    // net/http/pprof): the agent has no more to give, and must say so
    // rather than fail the request.
    let symbol = agent.get("/debug/pprof/symbol");
    assert_eq!(symbol.status, 200);
    assert_eq!(String::from_utf8_lossy(&symbol.body), "num_symbols: 0\n");
    let t0 = Instant::now();
    let out = go_command(&go)
        .env("PPROF_TMPDIR", dir.path())
        .args(["tool", "pprof", "-top", &url])
        .output()
        .expect("running go tool pprof");
    let took = t0.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "go tool pprof failed:\n{stdout}\n{}\nagent:\n{}",
        String::from_utf8_lossy(&out.stderr),
        agent.log()
    );
    assert!(
        took >= Duration::from_secs(3),
        "the request must wait its seconds ({took:?})"
    );
    // The first row of the top table is the hot function.
    let rows: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("flat"))
        .skip(1)
        .collect();
    let first = rows.first().unwrap_or_else(|| panic!("no rows:\n{stdout}"));
    assert!(
        first.trim_end().ends_with("main.hotLoop"),
        "top row is {first:?}:\n{stdout}"
    );
    let flat_pct: f64 = first
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.trim_end_matches('%').parse().ok())
        .unwrap();
    assert!(flat_pct > 55.0, "main.hotLoop has {flat_pct}%:\n{stdout}");
    assert!(stdout.contains("Duration: 3s"), "{stdout}");

    // The same profile with our decoder: exact range, one process, labels,
    // and as many samples as the fixture used CPU (100 Hz x CPU seconds).
    let c0 = cpu_seconds(target.pid());
    let t0 = Instant::now();
    let p = agent
        .get(&format!(
            "/debug/pprof/profile?pid={}&seconds=2",
            target.pid()
        ))
        .profile();
    let util = (cpu_seconds(target.pid()) - c0) / t0.elapsed().as_secs_f64();
    assert_eq!(pids(&p), [i64::from(target.pid())].into());
    assert_eq!(p.duration_nanos, 2_000_000_000);
    let n = total(&p, 0) as f64;
    let expected = util * 2.0 * 100.0;
    assert!(
        (n - expected).abs() <= 0.15 * expected + 5.0,
        "{n} samples, expected {expected:.0} (2 s x 100 Hz x {util:.2} CPUs)"
    );
    let s = &p.sample[0];
    assert_eq!(str_label(&p, s, "process"), Some("gohot"));
    assert_eq!(str_label(&p, s, "exe"), Some(exe.to_str().unwrap()));
    assert!(num_label(&p, s, "tid").is_some() && str_label(&p, s, "thread").is_some());
    assert!(p.mapping[0].has_functions);
    agent.stop();
}

/// Like `Target::start` (waits for "ready").
fn spin_like(cmd: Command) -> Target {
    Target::start(cmd)
}

/// A cgroup made for the test (a containerd-style scope inside a
/// Kubernetes pod slice), removed on drop.
struct TestCgroup {
    dirs: Vec<PathBuf>,
    leaf: PathBuf,
}

impl TestCgroup {
    /// Creates `<cgroup2 mount>/kubepods.slice/.../cri-containerd-<id>.scope`.
    /// `None` (after a `SKIPPED:` line naming `test`) on a machine without
    /// a cgroup2 hierarchy, which no install can add.
    fn create(test: &str, pod_uid: &str, container_id: &str) -> Option<TestCgroup> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let mount = mountinfo.lines().find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            if !post.starts_with("cgroup2 ") {
                return None;
            }
            Some(PathBuf::from(pre.split(' ').nth(4)?))
        });
        let Some(mount) = mount else {
            skipped(test, "no cgroup2 hierarchy is mounted on this machine");
            return None;
        };
        let uid_ = pod_uid.replace('-', "_");
        let rel = [
            "kubepods.slice".to_owned(),
            "kubepods-besteffort.slice".to_owned(),
            format!("kubepods-besteffort-pod{uid_}.slice"),
            format!("cri-containerd-{container_id}.scope"),
        ];
        let mut dirs = Vec::new();
        let mut cur = mount;
        for r in rel {
            cur = cur.join(r);
            if !cur.exists() {
                std::fs::create_dir(&cur)
                    .unwrap_or_else(|e| panic!("creating cgroup {}: {e}", cur.display()));
                dirs.push(cur.clone());
            }
        }
        Some(TestCgroup { dirs, leaf: cur })
    }

    fn add(&self, pid: u32) {
        std::fs::write(self.leaf.join("cgroup.procs"), pid.to_string()).unwrap();
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for d in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

#[test]
fn container_pod_and_node_filters() {
    let _lock = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let exe = spin_binary(dir.path());
    let uid = "5f1e3c2a-9b7d-4e6f-8a1b-2c3d4e5f6a7b";
    let id = format!(
        "{:064x}",
        u128::from(std::process::id()) * 0x9e37_79b9_7f4a_7c15 + 7
    );
    let Some(cg) = TestCgroup::create("container_pod_and_node_filters", uid, &id) else {
        return;
    };
    // The kubelet's log directories, as they look on a node.
    let pods = dir.path().join("pods");
    let containers = dir.path().join("containers");
    std::fs::create_dir_all(pods.join(format!("shop_cart-5d8f_{uid}/app"))).unwrap();
    std::fs::create_dir_all(pods.join(format!("shop_cart-5d8f_{uid}/sidecar"))).unwrap();
    std::fs::create_dir_all(&containers).unwrap();
    std::fs::write(containers.join(format!("cart-5d8f_shop_app-{id}.log")), "").unwrap();

    let mut inside = spin(&exe, 30);
    cg.add(inside.pid());
    let outside = spin(&exe, 30);
    let agent = Agent::start(&[
        "--pods-log-dir",
        pods.to_str().unwrap(),
        "--containers-log-dir",
        containers.to_str().unwrap(),
    ]);

    let port = agent.port;
    let ask = |q: String| std::thread::spawn(move || http_get(port, &q, &[]));
    let by_id = ask(format!("/debug/pprof/profile?container={id}&seconds=2"));
    let by_prefix = ask(format!(
        "/debug/pprof/profile?container={}&seconds=2",
        &id[..12]
    ));
    let by_pod = ask("/debug/pprof/profile?pod=shop/cart-5d8f&seconds=2".into());
    let node = ask("/debug/pprof/profile?seconds=2".into());
    let (by_id, by_prefix, by_pod, node) = (
        by_id.join().unwrap().profile(),
        by_prefix.join().unwrap().profile(),
        by_pod.join().unwrap().profile(),
        node.join().unwrap().profile(),
    );
    let want = [i64::from(inside.pid())].into();
    assert_eq!(pids(&by_id), want, "only the process in the container");
    assert_eq!(pids(&by_prefix), want);
    assert_eq!(pids(&by_pod), want);
    assert!(total(&by_id, 0) > 60, "{} samples", total(&by_id, 0));
    assert!(flat_share(&by_id, "hot_inner") > 0.9);
    for s in &by_id.sample {
        assert_eq!(str_label(&by_id, s, "container_id"), Some(id.as_str()));
        assert_eq!(str_label(&by_id, s, "namespace"), Some("shop"));
        assert_eq!(str_label(&by_id, s, "pod"), Some("cart-5d8f"));
        assert_eq!(str_label(&by_id, s, "container"), Some("app"));
    }
    let node_pids = pids(&node);
    assert!(
        node_pids.contains(&i64::from(inside.pid()))
            && node_pids.contains(&i64::from(outside.pid()))
    );
    for s in node
        .sample
        .iter()
        .filter(|s| num_label(&node, s, "pid") == Some(i64::from(outside.pid())))
    {
        assert_eq!(
            str_label(&node, s, "container_id"),
            None,
            "host process has no container"
        );
    }
    // The index page lists both, with the container and pod of one.
    let index = agent.get("/debug/pprof/").text();
    assert!(
        index.contains(&format!("pid={}&amp;seconds=30", inside.pid())),
        "{index}"
    );
    assert!(index.contains(&format!("pid={}&amp;seconds=30", outside.pid())));
    assert!(
        index.contains("shop/cart-5d8f") && index.contains(&format!("container={}", &id[..12]))
    );
    inside.child.kill().unwrap();
    inside.wait();
    drop(cg);
    agent.stop();
}

#[test]
fn bad_requests_auth_and_limits() {
    let _lock = capture_lock();
    // Bad combinations are usage errors (exit 2) before anything loads.
    let o = record(&[
        "agent",
        "--output-dir",
        "/tmp",
        "--window",
        "30s",
        "--retain",
        "10s",
    ]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("--retain"));
    let o = record(&["agent", "--push-url", "ftp://x"]);
    assert_eq!(o.status.code(), Some(2));
    let o = record(&["agent", "--token-file", "/nonexistent/token"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/token"));

    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let exe = spin_binary(dir.path());
    let target = spin(&exe, 30);
    let agent = Agent::start(&[
        "--token-file",
        token_file.to_str().unwrap(),
        "--max-concurrent-profiles",
        "1",
    ]);
    let auth = [("Authorization", "Bearer s3cret-token")];

    // Token.
    let r = agent.get(&format!(
        "/debug/pprof/profile?pid={}&seconds=1",
        target.pid()
    ));
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    assert_eq!(agent.get("/metrics").status, 401);
    assert_eq!(agent.get("/debug/pprof/").status, 401);
    assert_eq!(
        agent
            .get_with("/metrics", &[("Authorization", "Bearer wrong")])
            .status,
        401
    );
    assert_eq!(agent.get("/healthz").status, 200, "probes need no token");

    // Unknown targets: 404 with a reason.
    let r = agent.get_with("/debug/pprof/profile?pid=2147483647&seconds=1", &auth);
    assert_eq!(r.status, 404);
    assert!(
        r.text().contains("no running process with pid 2147483647"),
        "{}",
        r.text()
    );
    let r = agent.get_with(
        &format!("/debug/pprof/profile?container={}", "e".repeat(64)),
        &auth,
    );
    assert_eq!(r.status, 404, "{}", r.text());
    let r = agent.get_with("/debug/pprof/profile?pod=nowhere/nothing", &auth);
    assert_eq!(r.status, 404, "{}", r.text());

    // Bad parameters: 400.
    for q in [
        "seconds=abc",
        "seconds=0",
        "seconds=301",
        "pid=abc",
        "pid=1&pod=a/b",
        "container=zz",
        "pod=nonamespace",
    ] {
        let r = agent.get_with(&format!("/debug/pprof/profile?{q}"), &auth);
        assert_eq!(r.status, 400, "{q}: {}", r.text());
        assert!(!r.text().is_empty());
    }

    // Clients that connect and never finish their request hold no profile
    // slot: the one slot is still free.
    let idle: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", agent.port)).unwrap();
            s.write_all(b"GET /debug/pprof/profile?seconds=1 HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            s
        })
        .collect();

    // One profile at a time: a second concurrent request gets 429.
    let port = agent.port;
    let pid = target.pid();
    let first = std::thread::spawn(move || {
        http_get(
            port,
            &format!("/debug/pprof/profile?pid={pid}&seconds=3"),
            &auth,
        )
    });
    std::thread::sleep(Duration::from_millis(800));
    let r = agent.get_with(
        &format!("/debug/pprof/profile?pid={}&seconds=1", target.pid()),
        &auth,
    );
    assert_eq!(r.status, 429, "{}", r.text());
    let p = first.join().unwrap().profile();
    assert!(flat_share(&p, "hot_inner") > 0.9);
    // The slot is free again.
    let p = agent
        .get_with(
            &format!("/debug/pprof/profile?pid={}&seconds=1", target.pid()),
            &auth,
        )
        .profile();
    assert!(total(&p, 0) > 20);
    drop(idle);

    let m = agent.metrics(&auth);
    assert!(m["rprof_agent_profile_requests_total{code=\"429\"}"] >= 1.0);
    assert!(m["rprof_agent_profile_requests_total{code=\"401\"}"] >= 4.0);
    assert!(m["rprof_agent_profile_requests_total{code=\"400\"}"] >= 7.0);
    assert!(m["rprof_agent_profile_requests_total{code=\"404\"}"] >= 3.0);
    assert!(m["rprof_agent_profile_requests_total{code=\"200\"}"] >= 2.0);
    agent.stop();
}

/// One request to the test's Pyroscope receiver.
#[derive(Clone, Debug)]
struct Ingest {
    status: u16,
    path: String,
    query: HashMap<String, String>,
    content_type: String,
    body: Vec<u8>,
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(h, 16).unwrap());
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

/// A Pyroscope stand-in: `POST /ingest?name=..&from=..&until=..&format=pprof`
/// with the profile as the body. The first `fail_first` requests get 503.
fn pyroscope_receiver(fail_first: usize) -> (u16, Arc<Mutex<Vec<Ingest>>>) {
    let seen: Arc<Mutex<Vec<Ingest>>> = Arc::default();
    let seen2 = seen.clone();
    let port = serve_http(move |req| {
        let mut seen = seen2.lock().unwrap();
        let status = if seen.len() < fail_first { 503 } else { 200 };
        let content_type = req.header("content-type");
        seen.push(Ingest {
            status,
            path: req.path,
            query: req.query,
            content_type,
            body: req.body,
        });
        (status, "", String::new())
    });
    (port, seen)
}

/// One request to a test server.
struct TestReq {
    path: String,
    query: HashMap<String, String>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl TestReq {
    /// A header's value (case-insensitive name), or "".
    fn header(&self, name: &str) -> String {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }
}

/// A one-connection-at-a-time HTTP/1.1 server on a free loopback port:
/// `handle` answers each request with (status, content type, body).
/// Returns the port.
fn serve_http(
    mut handle: impl FnMut(TestReq) -> (u16, &'static str, String) + Send + 'static,
) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            conn.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let mut request_line = String::new();
            if r.read_line(&mut request_line).is_err() {
                continue;
            }
            let mut headers = Vec::new();
            loop {
                let mut l = String::new();
                if r.read_line(&mut l).unwrap_or(0) == 0 {
                    break;
                }
                let l = l.trim_end();
                if l.is_empty() {
                    break;
                }
                if let Some((k, v)) = l.split_once(':') {
                    headers.push((k.trim().to_owned(), v.trim().to_owned()));
                }
            }
            let len: usize = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; len];
            if r.read_exact(&mut body).is_err() {
                continue;
            }
            let target = request_line.split(' ').nth(1).unwrap_or("").to_owned();
            let (path, qs) = target.split_once('?').unwrap_or((&target, ""));
            let query = qs
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (percent_decode(k), percent_decode(v)))
                .collect();
            let req = TestReq {
                path: path.to_owned(),
                query,
                headers,
                body,
            };
            let (status, content_type, body) = handle(req);
            let _ = write!(
                conn,
                "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

#[test]
fn push_to_pyroscope_ingest_with_retries() {
    let _lock = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let exe = spin_binary(dir.path());
    let target = spin(&exe, 30);
    let (port, seen) = pyroscope_receiver(2);
    let unix = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    };
    let started = unix();
    let agent = Agent::start(&[
        "--push-url",
        &format!("http://127.0.0.1:{port}"),
        "--window",
        "2s",
        "--retain",
        "10s",
        "--node-name",
        "node-a",
        "--push-header",
        "X-Scope-OrgID: team-a",
    ]);

    // Wait for an accepted profile of the fixture.
    let want = format!("pid={}", target.pid());
    let deadline = Instant::now() + Duration::from_secs(20);
    let accepted = loop {
        let got = seen
            .lock()
            .unwrap()
            .iter()
            .find(|i| i.status == 200 && i.query.get("name").is_some_and(|n| n.contains(&want)))
            .cloned();
        if let Some(i) = got {
            break i;
        }
        assert!(
            Instant::now() < deadline,
            "no profile of the fixture pushed:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let ended = unix();
    assert_eq!(accepted.path, "/ingest");
    assert_eq!(accepted.query["format"], "pprof");
    assert_eq!(accepted.content_type, "application/octet-stream");
    let name = &accepted.query["name"];
    assert_eq!(
        name,
        &format!(
            "spin{{node=node-a,pid={},process=spin,exe=spin}}",
            target.pid()
        )
    );
    let from: i64 = accepted.query["from"].parse().unwrap();
    let until: i64 = accepted.query["until"].parse().unwrap();
    assert!(
        (1..=3).contains(&(until - from)),
        "a 2 s window: {from}..{until}"
    );
    assert!(
        from >= started - 1 && until <= ended + 1,
        "{from}..{until} not within {started}..{ended}"
    );
    let p = rprof_bpf::pprof::decode(&accepted.body).expect("the body is a pprof profile");
    assert_eq!(pids(&p), [i64::from(target.pid())].into());
    assert!(
        (1_900_000_000..=2_300_000_000).contains(&p.duration_nanos),
        "{}",
        p.duration_nanos
    );
    assert!(p.time_nanos / 1_000_000_000 >= from && p.time_nanos / 1_000_000_000 <= from + 1);
    assert!(
        total(&p, 0) >= 60,
        "{} samples in a 2 s window",
        total(&p, 0)
    );
    assert!(flat_share(&p, "hot_inner") > 0.9);

    // The first two answers were 503: each of those profiles is sent again
    // and accepted. Not necessarily before the profile found above: two
    // workers push, and while one waits out its backoff (0.5 s, then 1 s)
    // the other can push the fixture's next window, which a slow first
    // window puts in the queue right behind the one refused. The backoff
    // bounds the wait: with two refusals in all, every retry is sent
    // within 1.5 s of its first attempt.
    let retried = |all: &[Ingest]| {
        all.iter().filter(|i| i.status == 503).all(|f| {
            all.iter()
                .any(|i| i.status == 200 && i.query == f.query && i.body == f.body)
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !retried(&seen.lock().unwrap()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let all = seen.lock().unwrap().clone();
    let history: Vec<String> = all
        .iter()
        .map(|i| {
            format!(
                "{} {} {}..{}",
                i.status,
                i.query.get("name").map_or("?", |s| s.as_str()),
                i.query.get("from").map_or("?", |s| s.as_str()),
                i.query.get("until").map_or("?", |s| s.as_str()),
            )
        })
        .collect();
    assert_eq!(
        all.iter().filter(|i| i.status == 503).count(),
        2,
        "requests:\n{}",
        history.join("\n")
    );
    assert!(
        retried(&all),
        "a 503'd profile was not retried within 10 s; requests:\n{}\n{}",
        history.join("\n"),
        agent.log()
    );
    // The agent counts a push once it has read the receiver's answer, which
    // can be just after the receiver recorded the request: poll briefly.
    let mut m = agent.metrics(&[]);
    for _ in 0..50 {
        if m["rprof_agent_push_success_total"] >= 2.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        m = agent.metrics(&[]);
    }
    assert!(m["rprof_agent_push_retries_total"] >= 2.0);
    assert!(m["rprof_agent_push_success_total"] >= 2.0);
    assert_eq!(m["rprof_agent_push_failures_total"], 0.0);
    agent.stop();
}

/// Quick requests never wait for slow work: neither for ingest registering
/// thousands of short-lived processes (its `/proc` reads and file opens
/// happen with no lock held) nor for a whole-node profile symbolizing
/// every stack (on the symbolizer thread, which only copies out of the
/// window under its lock). The bound is loose on purpose, so that only a
/// real stall (a request queued behind seconds of work) fails it; the
/// node profile's own time shows what such a stall would have cost.
#[test]
fn requests_do_not_wait_on_churn_or_symbolization() {
    let _lock = capture_lock();
    let agent = Agent::start(&[]);
    let mut churn = Command::new("sh")
        .args(["-c", "for i in $(seq 3000); do /bin/true; done"])
        .spawn()
        .unwrap();
    let port = agent.port;
    let node = std::thread::spawn(move || {
        let t = Instant::now();
        // A debug build symbolizing a busy node can take minutes.
        let r = http_get_within(
            port,
            "/debug/pprof/profile?seconds=2",
            &[],
            Duration::from_secs(600),
        );
        (r.status, t.elapsed())
    });
    let (mut worst, mut asked) = (Duration::ZERO, 0);
    while !node.is_finished() || churn.try_wait().unwrap().is_none() {
        for path in ["/healthz", "/debug/pprof/"] {
            let t = Instant::now();
            let r = agent.get(path);
            assert_eq!(r.status, 200, "{path}: {}", r.text());
            worst = worst.max(t.elapsed());
            asked += 1;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(churn.wait().unwrap().success());
    let (status, node_time) = node.join().unwrap();
    assert_eq!(status, 200);
    eprintln!(
        "{asked} quick requests during churn and a node profile of {node_time:?}: slowest {worst:?}"
    );
    assert!(asked >= 10, "{asked} requests");
    assert!(
        worst < Duration::from_secs(2),
        "a request waited {worst:?} (the node profile took {node_time:?})"
    );
}

#[test]
fn churn_of_short_lived_processes_keeps_memory_bounded() {
    let _lock = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let exe = spin_binary(dir.path());
    let mut agent = Agent::start(&["--retain", "4s"]);
    // Warm up: a whole-node profile with kernel frames loads the kernel
    // symbols, which stay loaded; the baseline is taken after that.
    let mut sys = Command::new(&exe);
    sys.args(["2", "sys"]);
    let mut sys = Target::start(sys);
    let warm = agent.get("/debug/pprof/profile?seconds=2").profile();
    assert!(warm
        .mapping
        .iter()
        .any(|m| warm.str(m.filename) == "[kernel.kallsyms]"));
    sys.wait();
    // The same kind of churn once, briefly, under a whole-node profile: the
    // shell's and libc's symbols get loaded and stay (within their caps),
    // so the baseline is the agent's steady state for this workload.
    let port = agent.port;
    let warm = std::thread::spawn(move || http_get(port, "/debug/pprof/profile?seconds=2", &[]));
    let status = Command::new("sh")
        .args([
            "-c",
            "for i in $(seq 300); do /bin/true; done; for i in $(seq 6); do sh -c 'i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done'; done",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(warm.join().unwrap().status, 200);
    std::thread::sleep(Duration::from_secs(6));
    let base = agent.metrics(&[]);
    let base_rss = agent.rss();

    // During the churn, a whole-node profile (symbolizes everything).
    let port = agent.port;
    let during = std::thread::spawn(move || http_get(port, "/debug/pprof/profile?seconds=3", &[]));
    let t0 = Instant::now();
    let trues = Command::new("sh")
        .args(["-c", "for i in $(seq 10000); do /bin/true; done"])
        .spawn()
        .unwrap();
    let burners = Command::new("sh")
        .args([
            "-c",
            "for i in $(seq 60); do sh -c 'i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done'; done",
        ])
        .spawn()
        .unwrap();
    for mut c in [trues, burners] {
        assert!(c.wait().unwrap().success());
    }
    // Printed, not checked: how fast a shell starts processes measures the
    // machine, not the agent.
    let churn_time = t0.elapsed();
    let p = during.join().unwrap().profile();
    let peak = agent.metrics(&[]);
    let peak_rss = agent.rss();
    assert!(
        peak["rprof_agent_processes_seen_total"] - base["rprof_agent_processes_seen_total"] >= 40.0,
        "the burners were sampled: {} processes seen",
        peak["rprof_agent_processes_seen_total"]
    );
    assert!(
        pids(&p).len() >= 10,
        "the node profile during churn has {} processes",
        pids(&p).len()
    );
    // Frame-pointer walks of the shell and libc run off their stacks; the
    // profile ends each stack before a return address of 0.
    let zero = p.location.iter().filter(|l| l.address == 0).count();
    assert_eq!(
        zero,
        0,
        "{zero} of {} locations at address 0",
        p.location.len()
    );

    // Everything of the churn ages out of the 4 s window.
    std::thread::sleep(Duration::from_secs(7));
    agent.assert_running();
    assert_eq!(agent.get("/healthz").status, 200);
    let after = agent.metrics(&[]);
    let after_rss = agent.rss();
    eprintln!(
        "churn {churn_time:?}: processes seen {} -> {}, in window {} -> {} -> {}, stacks {} -> {} -> {}, binaries {} -> {} -> {}, RSS {:.1} -> {:.1} -> {:.1} MiB, anonymous {:.1} -> {:.1} -> {:.1} MiB",
        base["rprof_agent_processes_seen_total"],
        after["rprof_agent_processes_seen_total"],
        base["rprof_agent_processes_in_window"],
        peak["rprof_agent_processes_in_window"],
        after["rprof_agent_processes_in_window"],
        base["rprof_agent_window_stacks"],
        peak["rprof_agent_window_stacks"],
        after["rprof_agent_window_stacks"],
        base["rprof_agent_open_binaries"],
        peak["rprof_agent_open_binaries"],
        after["rprof_agent_open_binaries"],
        base_rss.0 as f64 / 1048576.0,
        peak_rss.0 as f64 / 1048576.0,
        after_rss.0 as f64 / 1048576.0,
        base_rss.1 as f64 / 1048576.0,
        peak_rss.1 as f64 / 1048576.0,
        after_rss.1 as f64 / 1048576.0,
    );
    assert!(
        after["rprof_agent_processes_exited_total"] >= 40.0,
        "exited processes were handed to the janitor"
    );
    assert!(
        after["rprof_agent_processes_in_window"] <= base["rprof_agent_processes_in_window"] + 5.0,
        "processes are freed with their samples"
    );
    assert!(after["rprof_agent_window_stacks"] <= base["rprof_agent_window_stacks"] + 100.0);
    assert!(
        after["rprof_agent_open_binaries"] <= base["rprof_agent_open_binaries"] + 5.0,
        "binaries of exited processes are closed"
    );
    // Live heap (the allocator's own count): what the agent still holds
    // once the churn aged out. Anonymous RSS adds what the allocator keeps
    // free in its arenas, fragmented by the burst, which the RSS bound
    // below covers.
    let (base_heap, after_heap) = (
        base["rprof_agent_heap_in_use_bytes"],
        after["rprof_agent_heap_in_use_bytes"],
    );
    eprintln!(
        "heap in use {:.1} -> {:.1} -> {:.1} MiB",
        base_heap / 1048576.0,
        peak["rprof_agent_heap_in_use_bytes"] / 1048576.0,
        after_heap / 1048576.0
    );
    assert!(base_heap > 0.0, "the agent reports its heap");
    assert!(
        after_heap <= base_heap + 8.0 * 1048576.0,
        "heap {:.1} MiB after the churn vs {:.1} MiB before",
        after_heap / 1048576.0,
        base_heap / 1048576.0
    );
    // What stays is bounded by the caches (symbols, parsed binaries and
    // their mapped pages), not by the number of processes: measured here,
    // about 5 MiB of heap and 5 MiB of file pages above a 36 MiB baseline.
    assert!(
        after_rss.0 <= base_rss.0 + 16 * 1024 * 1024,
        "RSS {} MiB after the churn vs {} MiB before",
        after_rss.0 >> 20,
        base_rss.0 >> 20
    );
    agent.stop();
}

/// A binary the symbolizer panics on costs that binary its names, once:
/// the symbolizer thread goes on naming everything else, the binary is
/// counted, and /healthz stays green because every worker still works.
#[test]
fn a_symbolizer_panic_leaves_one_binary_unnamed_and_the_agent_healthy() {
    let _lock = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let (hostile, good) = (hostile_spin(dir.path()), spin_binary(dir.path()));
    // User stacks only: no kernel symbols to load, less work on a busy machine.
    let agent = Agent::start(&["--user-only"]);
    // Killed on drop, long before they would end.
    let hostile = spin(&hostile, 600);
    let good = spin(&good, 600);
    let profile_of = |t: &Target| {
        let p = agent
            .get(&format!("/debug/pprof/profile?pid={}&seconds=3", t.pid()))
            .profile();
        // Few samples suffice to see names; a busy machine gives few.
        assert!(total(&p, 0) >= 5, "{} samples in 3 s", total(&p, 0));
        p
    };
    for round in 0..2 {
        let p = profile_of(&hostile);
        assert_eq!(flat_share(&p, "hot_inner"), 0.0, "round {round}");
        let m = agent.metrics(&[]);
        assert_eq!(
            m["rprof_agent_unsymbolizable_binaries_total"], 1.0,
            "round {round}"
        );
        let p = profile_of(&good);
        assert!(flat_share(&p, "hot_inner") > 0.9, "round {round}");
        let health = agent.get("/healthz");
        assert_eq!(health.status, 200, "round {round}: {}", health.text());
    }
    let log = agent.stop();
    assert_eq!(
        log.matches("the symbolizer panicked").count(),
        1,
        "one warning for the binary:\n{log}"
    );
    assert!(log.contains("hostile-spin"), "{log}");
}

#[test]
fn output_dir_rotation_respects_max_disk() {
    let _lock = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let exe = spin_binary(dir.path());
    let target = spin(&exe, 30);
    let out = dir.path().join("profiles");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("README"), "not ours").unwrap();
    let max = 8 * 1024u64;
    let agent = Agent::start(&[
        "--output-dir",
        out.to_str().unwrap(),
        "--window",
        "1s",
        "--retain",
        "5s",
        "--max-disk",
        "8KiB",
    ]);
    let ours = |out: &Path| -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = std::fs::read_dir(out)
            .unwrap()
            .flatten()
            .map(|e| {
                (
                    e.file_name().into_string().unwrap(),
                    e.metadata().unwrap().len(),
                )
            })
            .filter(|(n, _)| n.ends_with(".pb.gz"))
            .collect();
        v.sort();
        v
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    // The fixture's newest profile, read as soon as it appears: with other
    // processes on the machine, rotation may delete it before the end.
    let fixture = format!("_{}_spin", target.pid());
    let mut seen: Option<rprof_bpf::pprof::Profile> = None;
    loop {
        std::thread::sleep(Duration::from_millis(700));
        let files = ours(&out);
        if let Some((name, _)) = files.iter().rev().find(|(n, _)| n.contains(&fixture)) {
            if let Ok(p) = rprof_bpf::pprof::read_file(&out.join(name)) {
                seen = Some(p);
            }
        }
        let total: u64 = files.iter().map(|f| f.1).sum();
        assert!(
            total <= max,
            "{total} bytes in {} files over --max-disk {max}",
            files.len()
        );
        let m = agent.metrics(&[]);
        if m["rprof_agent_files_deleted_total"] >= 3.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no rotation happened: {files:?}\n{}",
            agent.log()
        );
    }
    let log = agent.stop();
    let files = ours(&out);
    let total: u64 = files.iter().map(|f| f.1).sum();
    assert!(total <= max, "{total} bytes after shutdown");
    assert_eq!(
        std::fs::read_to_string(out.join("README")).unwrap(),
        "not ours",
        "{log}"
    );
    // Every file is a whole profile; the fixture's newest names its hot function.
    for (name, _) in &files {
        rprof_bpf::pprof::read_file(&out.join(name)).expect("complete profile");
        let ts = &name[..10];
        assert!(
            ts.bytes().all(|b| b.is_ascii_digit()) && name.as_bytes()[10] == b'_',
            "{name}"
        );
    }
    if let Some((name, _)) = files.iter().rev().find(|(n, _)| n.contains(&fixture)) {
        seen = Some(load(&out.join(name)));
    }
    let p = seen.unwrap_or_else(|| panic!("no profile of the fixture was written"));
    assert_eq!(pids(&p), [i64::from(target.pid())].into());
    assert!(flat_share(&p, "hot_inner") > 0.9);
}

/// One request to the test's Kubernetes API server.
#[derive(Clone, Debug)]
struct ApiReq {
    status: u16,
    path: String,
    query: HashMap<String, String>,
    authorization: String,
}

/// A Kubernetes API server stand-in for `GET /api/v1/pods`: 401 without
/// `Bearer <token>`, 400 unless the field selector names `node`, 503 while
/// `answer` is `None`, else `answer` as the PodList.
fn fake_kube_api(
    token: &'static str,
    node: &'static str,
    answer: Arc<Mutex<Option<String>>>,
) -> (u16, Arc<Mutex<Vec<ApiReq>>>) {
    let seen: Arc<Mutex<Vec<ApiReq>>> = Arc::default();
    let seen2 = seen.clone();
    let port = serve_http(move |req| {
        let authorization = req.header("authorization");
        let (status, body) = if authorization != format!("Bearer {token}") {
            (401, r#"{"kind":"Status","code":401}"#.to_owned())
        } else if req.path != "/api/v1/pods"
            || req.query.get("fieldSelector").map(String::as_str)
                != Some(&format!("spec.nodeName={node}"))
        {
            (400, r#"{"kind":"Status","code":400}"#.to_owned())
        } else {
            match answer.lock().unwrap().clone() {
                Some(list) => (200, list),
                None => (503, "etcdserver: leader changed".to_owned()),
            }
        };
        seen2.lock().unwrap().push(ApiReq {
            status,
            path: req.path,
            query: req.query,
            authorization,
        });
        (status, "application/json", body)
    });
    (port, seen)
}

/// A PodList naming one pod with an `app` container (`id`) and a
/// `sidecar`, as the API server returns it (fields the agent does not read
/// included).
fn pod_list(namespace: &str, name: &str, uid: &str, id: &str) -> String {
    format!(
        r#"{{"kind":"PodList","apiVersion":"v1","metadata":{{"resourceVersion":"4711"}},"items":[
  {{"metadata":{{"name":"{name}","namespace":"{namespace}","uid":"{uid}","labels":{{"app":"cart"}}}},
    "spec":{{"nodeName":"node-t","containers":[{{"name":"app","image":"cart:1"}},{{"name":"sidecar","image":"envoy"}}]}},
    "status":{{"phase":"Running","podIP":"10.0.0.7",
      "containerStatuses":[
        {{"name":"sidecar","ready":true,"restartCount":0,"containerID":"containerd://{}"}},
        {{"name":"app","ready":true,"restartCount":2,"containerID":"containerd://{id}","state":{{"running":{{"startedAt":"2026-11-22T00:00:00Z"}}}}}}]}}}}]}}"#,
        "e".repeat(64)
    )
}

/// A container ID unique to this test run.
fn test_container_id(salt: u128) -> String {
    format!(
        "{:064x}",
        u128::from(std::process::id()) * 0x9e37_79b9_7f4a_7c15 + salt
    )
}

/// Polls `/metrics` until `ok` holds for it, or panics after `secs`.
fn wait_metrics(agent: &Agent, secs: u64, what: &str, ok: impl Fn(&HashMap<String, f64>) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let m = agent.metrics(&[]);
        if ok(&m) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not reached in {secs} s\nmetrics: {:?}\nagent:\n{}",
            m.iter()
                .filter(|(k, _)| k.contains("kube"))
                .collect::<Vec<_>>(),
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every sample of `p` carries these pod labels.
fn assert_pod_labels(p: &Profile, id: &str, namespace: &str, pod: &str, container: &str) {
    assert!(!p.sample.is_empty());
    for s in &p.sample {
        assert_eq!(str_label(p, s, "container_id"), Some(id));
        assert_eq!(str_label(p, s, "namespace"), Some(namespace));
        assert_eq!(str_label(p, s, "pod"), Some(pod));
        assert_eq!(str_label(p, s, "container"), Some(container));
    }
}

#[test]
fn kube_api_fallback_names_pods_the_kubelet_dirs_do_not() {
    let _lock = capture_lock();
    // Usage errors first: the fallback never starts half-configured.
    let o = record(&["agent", "--kube-api", "--node-name", "n"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("KUBERNETES_SERVICE_HOST"));
    let o = record(&[
        "agent",
        "--kube-api-url",
        "http://127.0.0.1:1",
        "--node-name",
        "n",
        "--kube-token-file",
        "/nonexistent/token",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/token"));

    let dir = tempfile::tempdir().unwrap();
    let exe = spin_binary(dir.path());
    let uid = "7c2d4e6f-1a3b-4c5d-9e8f-0a1b2c3d4e5f";
    let id = test_container_id(11);
    // A second pod the API does not list, whose processes come and go:
    // each one is a miss, and misses must not turn into a list each.
    let other_uid = "0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9";
    let other_id = test_container_id(12);
    let Some(cg) = TestCgroup::create(
        "kube_api_fallback_names_pods_the_kubelet_dirs_do_not",
        uid,
        &id,
    ) else {
        return;
    };
    let Some(other_cg) = TestCgroup::create(
        "kube_api_fallback_names_pods_the_kubelet_dirs_do_not",
        other_uid,
        &other_id,
    ) else {
        return;
    };
    let answer = Arc::new(Mutex::new(Some(pod_list("shop", "cart-api-0", uid, &id))));
    let (api_port, api_seen) = fake_kube_api("k8s-t0ken", "node-t", answer);
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "k8s-t0ken\n").unwrap();
    // Empty kubelet directories: every name must come from the API.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();

    let mut inside = spin(&exe, 40);
    cg.add(inside.pid());
    let interval = 3.0;
    let started = Instant::now();
    let agent = Agent::start(&[
        "--kube-api-url",
        &format!("http://127.0.0.1:{api_port}"),
        "--kube-token-file",
        token_file.to_str().unwrap(),
        "--kube-api-interval",
        "3s",
        "--node-name",
        "node-t",
        "--pods-log-dir",
        empty.to_str().unwrap(),
        "--containers-log-dir",
        empty.to_str().unwrap(),
    ]);
    wait_metrics(&agent, 20, "first pod list", |m| {
        m["rprof_agent_kube_api_pods"] == 1.0
    });

    let port = agent.port;
    let ask = |q: String| std::thread::spawn(move || http_get(port, &q, &[]));
    let by_pod = ask("/debug/pprof/profile?pod=shop/cart-api-0&seconds=3".into());
    let by_id = ask(format!("/debug/pprof/profile?container={id}&seconds=3"));
    // Short-lived busy processes in the unlisted pod, during the profiles.
    let churn = Command::new("sh")
        .args([
            "-c",
            "sleep 0.3; for i in $(seq 40); do sh -c 'i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done'; done",
        ])
        .spawn()
        .unwrap();
    other_cg.add(churn.id());
    let (by_pod, by_id) = (
        by_pod.join().unwrap().profile(),
        by_id.join().unwrap().profile(),
    );
    let mut churn = churn;
    assert!(churn.wait().unwrap().success());
    let m = agent.metrics(&[]);
    let elapsed = started.elapsed().as_secs_f64();

    let want = [i64::from(inside.pid())].into();
    assert_eq!(pids(&by_pod), want, "pod=shop/cart-api-0 is the fixture");
    assert_eq!(pids(&by_id), want);
    assert!(total(&by_pod, 0) > 60, "{} samples", total(&by_pod, 0));
    assert_pod_labels(&by_pod, &id, "shop", "cart-api-0", "app");
    assert_pod_labels(&by_id, &id, "shop", "cart-api-0", "app");
    assert_eq!(
        agent
            .get("/debug/pprof/profile?pod=shop/nope&seconds=1")
            .status,
        404
    );

    // Misses asked for lists, at most one per interval; every list was
    // authorized and scoped to this node.
    let requests = m["rprof_agent_kube_api_requests_total"];
    let seen = api_seen.lock().unwrap().clone();
    eprintln!(
        "{requests} pod lists in {elapsed:.1} s with a {interval} s interval; processes seen {}",
        m["rprof_agent_processes_seen_total"]
    );
    assert!(
        requests >= 2.0,
        "misses asked for a new list:\n{}",
        agent.log()
    );
    assert!(
        requests <= 2.0 + elapsed / interval,
        "{requests} lists in {elapsed:.1} s: the interval was not kept"
    );
    assert_eq!(
        m["rprof_agent_kube_api_failures_total"],
        0.0,
        "{}",
        agent.log()
    );
    assert!(seen.len() as f64 >= requests);
    for r in &seen {
        assert_eq!((r.status, r.path.as_str()), (200, "/api/v1/pods"), "{r:?}");
        assert_eq!(r.authorization, "Bearer k8s-t0ken");
        assert_eq!(r.query["resourceVersion"], "0");
    }
    inside.child.kill().unwrap();
    inside.wait();
    drop(other_cg);
    drop(cg);
    agent.stop();
}

#[test]
fn kube_api_down_is_not_fatal_and_labels_come_when_it_answers() {
    let _lock = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let exe = spin_binary(dir.path());
    let uid = "3a4b5c6d-7e8f-4091-a2b3-c4d5e6f70812";
    let id = test_container_id(21);
    let Some(cg) = TestCgroup::create(
        "kube_api_down_is_not_fatal_and_labels_come_when_it_answers",
        uid,
        &id,
    ) else {
        return;
    };
    let answer: Arc<Mutex<Option<String>>> = Arc::default();
    let (api_port, _) = fake_kube_api("t", "node-d", answer.clone());
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "t").unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let mut inside = spin(&exe, 60);
    cg.add(inside.pid());
    let agent = Agent::start(&[
        "--kube-api-url",
        &format!("http://127.0.0.1:{api_port}"),
        "--kube-token-file",
        token_file.to_str().unwrap(),
        "--kube-api-interval",
        "1s",
        "--node-name",
        "node-d",
        "--pods-log-dir",
        empty.to_str().unwrap(),
        "--containers-log-dir",
        empty.to_str().unwrap(),
    ]);

    // The API answers 503: retried, counted, logged once; profiling goes on
    // with the labels the cgroup gives.
    wait_metrics(&agent, 30, "two failed lists", |m| {
        m["rprof_agent_kube_api_failures_total"] >= 2.0
    });
    let p = agent
        .get(&format!("/debug/pprof/profile?container={id}&seconds=2"))
        .profile();
    assert_eq!(pids(&p), [i64::from(inside.pid())].into());
    assert!(total(&p, 0) > 60, "{} samples", total(&p, 0));
    for s in &p.sample {
        assert_eq!(str_label(&p, s, "container_id"), Some(id.as_str()));
        assert_eq!(str_label(&p, s, "pod"), None);
        assert_eq!(str_label(&p, s, "namespace"), None);
    }
    assert_eq!(
        agent
            .get("/debug/pprof/profile?pod=pay/ledger-1&seconds=1")
            .status,
        404
    );
    assert_eq!(agent.get("/healthz").status, 200);
    let log = agent.log();
    assert_eq!(
        log.matches("cannot list the pods of node node-d").count(),
        1,
        "one message for the outage:\n{log}"
    );
    assert!(log.contains("HTTP 503"), "{log}");

    // It comes back: the same process gets its names, without a restart.
    *answer.lock().unwrap() = Some(pod_list("pay", "ledger-1", uid, &id));
    wait_metrics(&agent, 30, "a list after the outage", |m| {
        m["rprof_agent_kube_api_pods"] == 1.0
    });
    let p = agent
        .get("/debug/pprof/profile?pod=pay/ledger-1&seconds=2")
        .profile();
    assert_eq!(pids(&p), [i64::from(inside.pid())].into());
    assert_pod_labels(&p, &id, "pay", "ledger-1", "app");
    assert!(agent.log().contains("the Kubernetes API answers again"));
    inside.child.kill().unwrap();
    inside.wait();
    drop(cg);
    agent.stop();
}

/// A minimal HTTP/1.1 POST of a form.
fn http_post_form(port: u16, path: &str, body: &str) -> Resp {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connecting to the agent");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    parse_response(&raw)
}

#[test]
fn ui_lists_processes_shows_their_window_and_needs_the_token() {
    let _lock = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "ui-s3cret\n").unwrap();
    let exe = spin_binary(dir.path());
    let target = spin(&exe, 30);
    let agent = Agent::start(&["--token-file", token_file.to_str().unwrap()]);
    let auth = [("Authorization", "Bearer ui-s3cret")];
    let pid = target.pid();
    // Let the window fill with the target's samples.
    std::thread::sleep(Duration::from_secs(3));

    // No token: 401 everywhere, a login form for pages, JSON for the API.
    for path in [
        "/ui/".to_string(),
        format!("/ui/view?pid={pid}&seconds=5"),
        format!("/ui/api/meta?pid={pid}&seconds=5"),
        format!("/ui/api/top?pid={pid}&seconds=5"),
        "/ui/app.js".to_string(),
    ] {
        let r = agent.get(&path);
        assert_eq!(r.status, 401, "{path}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        assert!(!r.text().contains("hot_inner"), "{path}");
        let r = agent.get_with(&path, &[("Authorization", "Bearer wrong")]);
        assert_eq!(r.status, 401, "{path} with a wrong token");
    }
    assert!(agent.get("/ui/").text().contains("name=\"token\""));

    // With the token: the list has the target, linked to its view.
    let list = agent.get_with("/ui/", &auth);
    assert_eq!(list.status, 200);
    let link = format!("/ui/view?pid={pid}&amp;seconds=30");
    assert!(list.text().contains(&link), "{}", list.text());
    let page = agent.get_with(&format!("/ui/view?pid={pid}&seconds=5"), &auth);
    assert_eq!(page.status, 200);
    assert!(page.text().contains("app.js"));
    // The API cuts the last seconds from the window: hot_inner dominates.
    let top = agent.get_with(&format!("/ui/api/top?pid={pid}&seconds=3"), &auth);
    assert_eq!(top.status, 200, "{}", top.text());
    let top: serde_json::Value = serde_json::from_slice(&top.body).unwrap();
    assert_eq!(top["rows"][0]["name"], "hot_inner", "{top}");
    let share: f64 = top["rows"][0]["flat_pct"]
        .as_str()
        .unwrap()
        .trim_end_matches('%')
        .parse()
        .unwrap();
    assert!(share > 80.0, "{top}");
    // Bad parameters: 400; a pid that is not running: 404.
    for q in [
        "pid=abc",
        "pid=1&seconds=0",
        "pid=1&seconds=301",
        "seconds=5",
    ] {
        let r = agent.get_with(&format!("/ui/api/meta?{q}"), &auth);
        assert_eq!(r.status, 400, "{q}: {}", r.text());
    }
    let r = agent.get_with("/ui/api/meta?pid=2147483647", &auth);
    assert_eq!(r.status, 404, "{}", r.text());

    // The login form: a wrong token is refused; the right one sets a
    // cookie (the token's digest, not the token) that opens the UI.
    let r = http_post_form(agent.port, "/ui/login", "token=nope");
    assert_eq!(r.status, 401);
    assert!(r.header("set-cookie").is_none());
    let r = http_post_form(agent.port, "/ui/login", "token=ui-s3cret");
    assert_eq!(r.status, 303, "{}", r.text());
    let cookie = r.header("set-cookie").unwrap().to_string();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    assert!(!cookie.contains("ui-s3cret"), "{cookie}");
    let value = cookie.split(';').next().unwrap().to_string();
    let r = agent.get_with("/ui/", &[("Cookie", &value)]);
    assert_eq!(r.status, 200);
    // The cookie opens the UI only, not the pprof endpoints.
    let r = agent.get_with("/debug/pprof/", &[("Cookie", &value)]);
    assert_eq!(r.status, 401);
    agent.stop();
}

#[test]
fn ui_in_a_browser_logs_in_and_shows_a_process() {
    let c = browser::Chrome::start();
    let _lock = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "ui-s3cret\n").unwrap();
    let exe = spin_binary(dir.path());
    let target = spin(&exe, 30);
    let agent = Agent::start(&["--token-file", token_file.to_str().unwrap()]);
    std::thread::sleep(Duration::from_secs(3));
    let base = format!("http://127.0.0.1:{}", agent.port);

    // The login form, filled in and sent as a person would.
    c.tab.navigate_to(&format!("{base}/ui/")).unwrap();
    c.tab.wait_for_element("#token").unwrap().click().unwrap();
    c.tab
        .type_str("ui-s3cret")
        .unwrap()
        .press_key("Enter")
        .unwrap();
    let row = format!("tr[data-pid='{}'] a", target.pid());
    let link = c
        .tab
        .wait_for_element(&row)
        .expect("the target in the list");
    link.click().unwrap();
    c.tab.wait_until_navigated().unwrap();
    c.wait_ready();
    let q = c.query();
    assert!(q.contains(&format!("pid={}", target.pid())), "{q}");
    let frames = c.frames("flame");
    let hot = frames
        .iter()
        .find(|f| f.name == "hot_inner")
        .expect("hot_inner in the flame graph");
    let root = frames.iter().find(|f| f.depth == 0).unwrap();
    assert!(hot.w > 0.8 * root.w, "{hot:?} vs {root:?}");
    let first = c.eval("document.querySelector('#top tbody a.fn').textContent");
    assert_eq!(first, "hot_inner");
    agent.stop();
}
