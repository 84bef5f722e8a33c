//! Helpers shared by the Go runtime profile tests (goheap.rs,
//! goroutine.rs): the `goruntime` fixture built per toolchain, started with
//! its loopback pprof server, and profiles compared stack by stack.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::*;
use rprof_bpf::pprof::Profile;

/// One build of a fixture.
pub struct Build {
    pub name: String,
    pub go: PathBuf,
    pub exe: PathBuf,
}

/// Builds `fixture` with Go 1.27 (plain and stripped) and Go 1.19
/// (stripped) into `dir`.
pub fn builds(fixture: &str, dir: &Path) -> Vec<Build> {
    let (new, old) = (go127(), go119());
    let mut out = Vec::new();
    for (name, go, args) in [
        ("go1.27", &new, &[][..]),
        ("go1.27-stripped", &new, &["-ldflags=-s -w"][..]),
        ("go1.19-stripped", &old, &["-ldflags=-s -w"][..]),
    ] {
        let exe = dir.join(format!("{fixture}-{name}"));
        build_go(go, fixture, &exe, args);
        out.push(Build {
            name: name.to_owned(),
            go: go.clone(),
            exe,
        });
    }
    out
}

/// The running `goruntime` fixture and the address of its pprof server.
pub struct Fixture {
    pub target: Target,
    pub addr: String,
}

impl Fixture {
    pub fn start(exe: &Path, dir: &Path, args: &[&str]) -> Fixture {
        let addrfile = dir.join(format!(
            "{}.addr",
            exe.file_name().unwrap().to_string_lossy()
        ));
        let _ = std::fs::remove_file(&addrfile);
        let mut cmd = Command::new(exe);
        cmd.arg("-addrfile").arg(&addrfile).args(args);
        let target = Target::start(cmd);
        let addr = std::fs::read_to_string(&addrfile).expect("the fixture's address file");
        Fixture { target, addr }
    }

    pub fn pid(&self) -> u32 {
        self.target.pid()
    }

    /// GET `path` from the fixture; the body.
    pub fn get(&self, path: &str) -> Vec<u8> {
        http_get(&self.addr, path)
    }

    /// Go's own profile at `path` (debug=0).
    pub fn go_profile(&self, path: &str) -> Profile {
        rprof_bpf::pprof::decode(&self.get(path)).expect("decoding Go's own profile")
    }
}

/// A minimal HTTP/1.0 GET; panics on anything but 200.
pub fn http_get(addr: &str, path: &str) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).expect("connecting to the fixture");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let at = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP response");
    let head = String::from_utf8_lossy(&buf[..at]).to_string();
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "GET {path}: {head}"
    );
    buf[at + 4..].to_vec()
}

/// Runs `rprof-bpf KIND --pid P -o OUT EXTRA...`.
pub fn run_go_profile(kind: &str, pid: u32, out: &Path, extra: &[&str]) -> std::process::Output {
    rprof()
        .arg(kind)
        .arg("--pid")
        .arg(pid.to_string())
        .arg("-o")
        .arg(out)
        .args(extra)
        .output()
        .expect("running rprof-bpf")
}

/// A sample's stack as function names (leaf first) plus its string labels.
pub type Key = (Vec<String>, Vec<(String, String)>);

/// Values summed by stack and labels, dropping samples whose values are
/// all zero (buckets created after the last published GC cycle: they come
/// and go with every request to the process).
pub fn by_stack(p: &Profile) -> BTreeMap<Key, Vec<i64>> {
    let mut out: BTreeMap<Key, Vec<i64>> = BTreeMap::new();
    for s in &p.sample {
        if s.value.iter().all(|&v| v == 0) {
            continue;
        }
        let mut labels: Vec<(String, String)> = s
            .label
            .iter()
            .filter(|l| l.str != 0)
            .map(|l| (p.str(l.key).to_owned(), p.str(l.str).to_owned()))
            .collect();
        labels.sort();
        let e = out
            .entry((stack_names(p, s), labels))
            .or_insert_with(|| vec![0; s.value.len()]);
        for (a, v) in e.iter_mut().zip(&s.value) {
            *a += v;
        }
    }
    out
}

/// The rows of `go tool pprof -top` (after its header), for comparing two
/// profiles' tables.
pub fn top_rows(go: &Path, file: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["-top"];
    args.extend_from_slice(extra);
    let f = file.to_str().unwrap();
    args.push(f);
    let out = go_pprof(go, &args);
    assert!(
        out.status.success(),
        "go tool pprof: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.lines()
        .skip_while(|l| !l.trim_start().starts_with("flat"))
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

/// Writes Go's profile bytes to a file for go tool pprof.
pub fn save(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// `State` and `TracerPid` from /proc/PID/status.
pub fn proc_state(pid: u32) -> (String, u32) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .map(|l| l[k.len()..].trim().to_owned())
            .unwrap_or_default()
    };
    let state = field("State:");
    let tracer = field("TracerPid:").parse().unwrap_or(u32::MAX);
    (state, tracer)
}

/// Waits up to `limit` for `cond`.
pub fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}
