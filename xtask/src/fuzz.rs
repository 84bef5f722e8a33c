//! `cargo xtask fuzz`: the libFuzzer targets in `fuzz/` (cargo-fuzz).
//!
//! - `cargo xtask fuzz [--seconds N] [TARGET...]`: fuzz each target for N
//!   seconds (default 60), one after the other, on one core, growing
//!   `fuzz/corpus/<target>/`.
//! - `cargo xtask fuzz --replay [TARGET...]`: run every saved input once
//!   (grown corpus, seeds, generated seeds, crash regressions).
//!
//! Inputs live in `fuzz/seeds/<target>/` (small real inputs, committed),
//! `fuzz/generated/<target>/` (real inputs too large to commit, rebuilt here:
//! Go binaries for `gopclntab`), `fuzz/corpus/<target>/` (what libFuzzer
//! adds, not committed) and `fuzz/regressions/<target>/` (every crash found,
//! committed; `cargo test` replays them too, see `profiler/src/fuzzing.rs`).
//!
//! The machine has stable Rust only: cargo-fuzz runs on it with
//! `RUSTC_BOOTSTRAP=1`, which lets stable rustc take the `-Zsanitizer`
//! flag; the AddressSanitizer runtime ships with the stable toolchain.
//! Builds are release builds with debug assertions, so an arithmetic
//! overflow is a finding like a panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::deps::workspace_root;

/// The targets, as in `fuzz/Cargo.toml` (and `rprof_bpf::fuzzing::TARGETS`).
pub const TARGETS: [&str; 6] = [
    "gopclntab",
    "eh_frame",
    "pprof",
    "proc_maps",
    "cgroup",
    "http_query",
];

/// Seconds each target gets in `cargo xtask test`.
pub const SMOKE_SECONDS: u64 = 30;

/// libFuzzer options for every run: a hang is an input that takes over 10 s
/// (the real parsers answer in milliseconds), 2 GiB is an out-of-memory.
const LIBFUZZER_LIMITS: [&str; 2] = ["-timeout=10", "-rss_limit_mb=2048"];

/// Options for one target (later flags override [`LIBFUZZER_LIMITS`]).
/// libFuzzer caps inputs at the largest seed, and at 1 MiB at most unless
/// told: the Go binaries are larger. Its corpus of ~1 MiB inputs, which
/// libFuzzer holds in memory, passes 1 GiB in ten minutes, so the process
/// limit is raised and single allocations are capped instead.
fn target_options(target: &str) -> &'static [&'static str] {
    match target {
        "gopclntab" => &[
            "-max_len=2097152",
            "-rss_limit_mb=8192",
            "-malloc_limit_mb=2048",
        ],
        _ => &[],
    }
}

/// What the command line asked for.
struct Args {
    seconds: u64,
    replay: bool,
    targets: Vec<&'static str>,
}

fn parse_args(args: &[String]) -> Result<Args> {
    let mut out = Args {
        seconds: 60,
        replay: false,
        targets: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => {
                let v = it.next().context("--seconds needs a number")?;
                out.seconds = v
                    .parse()
                    .ok()
                    .filter(|&s| s > 0)
                    .with_context(|| format!("--seconds {v}: not a positive number"))?;
            }
            "--replay" => out.replay = true,
            name => match TARGETS.iter().find(|t| **t == name) {
                Some(t) => out.targets.push(t),
                None => bail!(
                    "unknown fuzz target or option {name:?} (targets: {})",
                    TARGETS.join(", ")
                ),
            },
        }
    }
    if out.targets.is_empty() {
        out.targets = TARGETS.to_vec();
    }
    Ok(out)
}

/// `cargo xtask fuzz ...`.
pub fn run(args: &[String]) -> Result<()> {
    let args = parse_args(args)?;
    prepare()?;
    if args.replay {
        return replay(&args.targets);
    }
    let mut summary = Vec::new();
    for t in &args.targets {
        summary.push(fuzz(t, args.seconds)?);
    }
    println!("xtask fuzz: {} s per target", args.seconds);
    for line in &summary {
        println!("  {line}");
    }
    Ok(())
}

/// What `cargo xtask test` runs: replay everything saved, then a short
/// fuzzing run of each target.
pub fn smoke() -> Result<()> {
    prepare()?;
    replay(&TARGETS)?;
    for t in TARGETS {
        let line = fuzz(t, SMOKE_SECONDS)?;
        println!("xtask fuzz: {line}");
    }
    Ok(())
}

fn fuzz_dir() -> PathBuf {
    workspace_root().join("fuzz")
}

/// Generates the large seeds and builds every target once.
fn prepare() -> Result<()> {
    generate_go_seeds()?;
    println!("xtask: cargo fuzz build");
    let status = cargo_fuzz()
        .args(["build", "-O", "--debug-assertions"])
        .status()
        .context("running cargo fuzz (install it with `cargo xtask deps`)")?;
    if !status.success() {
        bail!("cargo fuzz build failed");
    }
    Ok(())
}

/// `cargo fuzz` from the workspace root, on stable Rust.
fn cargo_fuzz() -> Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("fuzz")
        .current_dir(workspace_root())
        .env("RUSTC_BOOTSTRAP", "1");
    cmd
}

/// The input directories of `target`, the writable corpus first (libFuzzer
/// adds new inputs to the first directory only).
fn input_dirs(target: &str) -> Result<Vec<PathBuf>> {
    let root = fuzz_dir();
    let dirs: Vec<PathBuf> = ["corpus", "seeds", "generated", "regressions"]
        .iter()
        .map(|kind| root.join(kind).join(target))
        .collect();
    for d in &dirs {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    Ok(dirs)
}

/// Runs every saved input of each target once; fails on the first crash.
fn replay(targets: &[&str]) -> Result<()> {
    for t in targets {
        println!("xtask: replaying the saved inputs of {t}");
        let out = libfuzzer(t, &["-runs=0", "-print_final_stats=1"])?;
        println!("xtask fuzz: {t} replay: {}", out.summary());
    }
    Ok(())
}

/// Fuzzes `target` for `seconds` on one core; returns a summary line.
fn fuzz(target: &str, seconds: u64) -> Result<String> {
    println!("xtask: fuzzing {target} for {seconds} s");
    let time = format!("-max_total_time={seconds}");
    let out = libfuzzer(target, &[time.as_str(), "-print_final_stats=1"])?;
    Ok(format!("{target}: {}", out.summary()))
}

/// The numbers libFuzzer printed last.
#[derive(Default)]
struct Stats {
    execs: Option<u64>,
    /// Where libFuzzer wrote a crashing (or hanging, or too hungry) input.
    artifact: Option<PathBuf>,
    /// The last status line, e.g. `#123 DONE cov: 1 ft: 2 corp: 3/4b ...`.
    last: String,
}

impl Stats {
    fn summary(&self) -> String {
        let runs = self.execs.map_or("?".into(), |n| n.to_string());
        format!("{runs} runs; {}", self.last)
    }
}

/// Runs the libFuzzer binary of `target` over its input directories with
/// `extra` options. cargo-fuzz has libFuzzer write crashing inputs to
/// `fuzz/artifacts/<target>/`; such an input is copied to `fuzz/regressions/<target>/`
/// (to be committed with the fix) and the run fails.
fn libfuzzer(target: &str, extra: &[&str]) -> Result<Stats> {
    let dirs = input_dirs(target)?;
    let mut child = cargo_fuzz()
        .args(["run", "-O", "--debug-assertions", target])
        .args(&dirs)
        .arg("--")
        .args(LIBFUZZER_LIMITS)
        .args(target_options(target))
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .context("running cargo fuzz")?;
    let mut stats = Stats::default();
    if let Some(err) = child.stderr.take() {
        for line in std::io::BufRead::lines(std::io::BufReader::new(err)).map_while(Result::ok) {
            note(&mut stats, &line);
            eprintln!("{line}");
        }
    }
    let status = child.wait().context("waiting for cargo fuzz")?;
    if status.success() {
        return Ok(stats);
    }
    let saved = match &stats.artifact {
        Some(found) => format!(
            "input saved as {}: fix the bug and commit it",
            save(target, found)?
        ),
        None => "no input saved".to_owned(),
    };
    bail!("fuzz target {target} failed ({status}); {saved}")
}

/// Copies a crashing input to `fuzz/regressions/<target>/`, keeping
/// libFuzzer's name (a hash of the content).
fn save(target: &str, found: &Path) -> Result<String> {
    let name = found.file_name().context("artifact without a file name")?;
    let to = fuzz_dir().join("regressions").join(target).join(name);
    std::fs::copy(found, &to).with_context(|| format!("copying {}", found.display()))?;
    Ok(to.display().to_string())
}

/// Keeps libFuzzer's execution count and last status line.
fn note(stats: &mut Stats, line: &str) {
    if let Some(n) = line
        .strip_prefix("stat::number_of_executed_units:")
        .and_then(|n| n.trim().parse().ok())
    {
        stats.execs = Some(n);
    }
    if let Some((_, path)) = line.split_once("Test unit written to ") {
        stats.artifact = Some(PathBuf::from(path.trim()));
    }
    if line.starts_with('#') && line.contains(" cov: ") {
        stats.last = line.to_owned();
    }
}

/// A Go program with nothing but the runtime: the smallest real
/// `.gopclntab` the toolchains make (about 1 MiB of binary, too large to
/// commit).
const GO_MAIN: &str = "package main\n\nfunc main() {}\n";

/// Builds `fuzz/generated/gopclntab/`: stripped Go 1.27 (executable and
/// PIE) and Go 1.19 binaries, and one with its section headers removed so
/// the table must be found by scanning. Skipped when already there.
fn generate_go_seeds() -> Result<()> {
    let out = fuzz_dir().join("generated/gopclntab");
    let root = workspace_root();
    let go127 = root.join(".venv-go/bin/go");
    let go119 = PathBuf::from("/usr/lib/go-1.19/bin/go");
    let builds: [(&str, &Path, &[&str]); 3] = [
        ("go1.27-exe-stripped", &go127, &["-ldflags=-s -w"]),
        (
            "go1.27-pie-stripped",
            &go127,
            &["-buildmode=pie", "-ldflags=-s -w"],
        ),
        ("go1.19-exe-stripped", &go119, &["-ldflags=-s -w"]),
    ];
    let no_sections = out.join("go1.27-no-section-headers");
    if builds.iter().all(|(n, ..)| out.join(n).exists()) && no_sections.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(&out)?;
    let src = tempfile_dir()?;
    std::fs::write(src.join("main.go"), GO_MAIN)?;
    std::fs::write(src.join("go.mod"), "module fuzzseed\n\ngo 1.19\n")?;
    for (name, go, flags) in builds {
        println!("xtask: building the {name} fuzz seed");
        let status = Command::new(go)
            .arg("build")
            .args(flags)
            .arg("-o")
            .arg(out.join(name))
            .arg(".")
            .current_dir(&src)
            .env("GOTOOLCHAIN", "local")
            .env("GOPROXY", "off")
            .env("GOCACHE", root.join("target/go-cache"))
            .status()
            .with_context(|| {
                format!(
                    "running {} (install it with `cargo xtask deps`)",
                    go.display()
                )
            })?;
        if !status.success() {
            bail!("building the {name} fuzz seed failed");
        }
    }
    let mut bytes = std::fs::read(out.join(builds[0].0))?;
    strip_section_headers(&mut bytes)?;
    std::fs::write(&no_sections, bytes)?;
    std::fs::remove_dir_all(&src)?;
    Ok(())
}

/// Zeroes `e_shoff`, `e_shnum` and `e_shstrndx` of a 64-bit little-endian
/// ELF header, as some packers and stripping tools leave binaries.
fn strip_section_headers(elf: &mut [u8]) -> Result<()> {
    if elf.len() < 64 || !elf.starts_with(b"\x7fELF\x02\x01") {
        bail!("not a 64-bit little-endian ELF file");
    }
    elf[0x28..0x30].fill(0); // e_shoff
    elf[0x3c..0x40].fill(0); // e_shnum, e_shstrndx
    Ok(())
}

/// A fresh directory under `target/` for the Go build.
fn tempfile_dir() -> Result<PathBuf> {
    let dir = workspace_root()
        .join("target")
        .join(format!("fuzz-seed-src-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
