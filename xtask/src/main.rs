//! `cargo xtask`: project chores that are not part of the profiler.
//!
//! - `cargo xtask bpf`: rebuild `profiler-ebpf/bpf/profile.bpf.o` with clang-19.
//! - `cargo xtask test`: install test dependencies, then run every test
//!   and a short run of each fuzz target (what `.ci/run` calls).
//! - `cargo xtask fuzz [--seconds N] [--replay] [TARGET...]`: the fuzz
//!   targets in `fuzz/` (see `fuzz.rs`).
//! - `cargo xtask bench [--quick]`: run the benchmarks, write BENCHMARKS.md
//!   (`--agent-only [--agent-seconds N]`: only the node agent's cost, printed;
//!   `--offcpu-only`: only the off-CPU storm).

mod bench;
mod deps;
mod fuzz;

// The compiler invocation is shared with profiler-ebpf's freshness test by
// including its source, not by depending on the crate: that crate embeds the
// object this command must be able to rebuild when it is missing.
#[path = "../../profiler-ebpf/src/build.rs"]
#[allow(dead_code)]
mod bpf_build;

use anyhow::{bail, Context, Result};
use std::process::Command;

fn main() {
    if let Err(e) = run() {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("bpf") => bpf(),
        Some("deps") => deps::install(),
        Some("test") => test(),
        Some("bench") => bench::run(&args[1..]),
        Some("fuzz") => fuzz::run(&args[1..]),
        _ => bail!(
            "usage: cargo xtask <bpf|deps|test|bench [--quick] [--agent-only] [--ui-only] [--offcpu-only] [--engine-only] [--accuracy-only] [--big-tables-only] [--agent-seconds N]|fuzz [--seconds N] [--replay] [TARGET...]>"
        ),
    }
}

/// Recompiles the BPF object with the one command the freshness test uses,
/// into a temporary file first so a compile error keeps the old object.
fn bpf() -> Result<()> {
    let out = bpf_build::committed_object();
    let tmp = out.with_extension("o.tmp");
    let status = bpf_build::clang_command(&tmp)
        .status()
        .with_context(|| format!("running {}", bpf_build::CLANG))?;
    if !status.success() {
        bail!("{} failed", bpf_build::CLANG);
    }
    std::fs::rename(&tmp, &out).with_context(|| format!("writing {}", out.display()))?;
    println!("wrote {}", out.display());
    Ok(())
}

/// Installs dependencies, checks formatting and lints, runs all tests, then
/// replays the fuzz corpora and fuzzes each target briefly (each target
/// counts as one test in the closing line).
fn test() -> Result<()> {
    deps::install()?;
    let root = deps::workspace_root();
    let go_bin = root.join(".venv-go/bin");
    let path = format!(
        "{}:{}",
        go_bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let steps: [&[&str]; 3] = [
        &["fmt", "--all", "--check"],
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        // --no-fail-fast: one failing test binary must not hide what the
        // others would say.
        &[
            "test",
            "--workspace",
            "--no-fail-fast",
            "--",
            "--test-threads=1",
        ],
    ];
    let (mut passed, mut failed) = (0u64, 0u64);
    let mut skipped = Skipped::default();
    for step in steps {
        println!("xtask: cargo {}", step.join(" "));
        let mut child = Command::new(&cargo)
            .args(step)
            .current_dir(&root)
            .env("PATH", &path)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("running cargo")?;
        // Pass the output through, counting test results on the way.
        if let Some(out) = child.stdout.take() {
            for line in std::io::BufRead::lines(std::io::BufReader::new(out)).map_while(Result::ok)
            {
                println!("{line}");
                skipped.see(&line);
                if let Some(rest) = line.strip_prefix("test result: ") {
                    let count = |word: &str| -> u64 {
                        rest.split(';')
                            .find_map(|part| part.trim().strip_suffix(word))
                            .and_then(|n| n.trim().rsplit(' ').next()?.parse().ok())
                            .unwrap_or(0)
                    };
                    passed += count(" passed");
                    failed += count(" failed");
                }
            }
        }
        let status = child.wait().context("waiting for cargo")?;
        if !status.success() {
            skipped.print_closing_line(passed, failed);
            bail!("cargo {} failed", step.join(" "));
        }
    }
    if let Err(e) = fuzz::smoke() {
        skipped.print_closing_line(passed, failed + 1);
        return Err(e);
    }
    passed += fuzz::TARGETS.len() as u64;
    // One closing line for whoever reads the log last.
    skipped.print_closing_line(passed, failed);
    Ok(())
}

/// Tests that could not (wholly) run on this machine: each says so in a
/// `SKIPPED: TEST: REASON` line of its own (tests/harness `skipped`), which
/// its test binary writes past libtest's output capture.
#[derive(Default)]
struct Skipped {
    tests: std::collections::BTreeSet<String>,
}

impl Skipped {
    fn see(&mut self, line: &str) {
        if let Some(rest) = line.strip_prefix("SKIPPED: ") {
            let test = rest.split_once(": ").map_or(rest, |(t, _)| t);
            self.tests.insert(test.to_owned());
        }
    }

    /// Names the skipped tests, then prints `N passed, N failed, N skipped`
    /// as the last line. libtest counted a skipped test as passed; here it
    /// counts as skipped only.
    fn print_closing_line(&self, passed: u64, failed: u64) {
        for t in &self.tests {
            println!("xtask: skipped: {t}");
        }
        let skipped = self.tests.len() as u64;
        println!(
            "{} passed, {failed} failed, {skipped} skipped",
            passed.saturating_sub(skipped)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skipped_lines_are_counted_once_per_test() {
        let mut s = Skipped::default();
        for line in [
            "test cycles_event_or_clear_fallback ... ",
            "SKIPPED: cycles_event_or_clear_fallback: no cycles PMU",
            "ok",
            "SKIPPED: cycles_event_or_clear_fallback: again",
            "SKIPPED: other: no cgroup2",
            "note: SKIPPED: not at the start of a line",
        ] {
            s.see(line);
        }
        assert_eq!(
            s.tests.iter().map(String::as_str).collect::<Vec<_>>(),
            ["cycles_event_or_clear_fallback", "other"]
        );
    }
}
