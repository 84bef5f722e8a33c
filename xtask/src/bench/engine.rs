//! Case 9: the engine's user-space cost per sample, without BPF (the
//! replay example), and case 10: short-lived processes named, against
//! `perf record -a -g` on the same workload.

use std::fmt::Write as _;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use super::Env;

/// Runs `examples/replay.rs` (release) and copies its figures.
pub(super) fn replay(env: &Env, quick: bool, md: &mut String) -> Result<()> {
    eprintln!("bench: engine replay");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    super::sh(
        Command::new(&cargo)
            .args([
                "build",
                "--release",
                "-p",
                "rprof-bpf",
                "--example",
                "replay",
            ])
            .current_dir(&env.root),
    )?;
    let exe = env.root.join("target/release/examples/replay");
    let seconds = if quick { "10" } else { "30" };
    let out = Command::new(&exe)
        .args(["1000", seconds])
        .output()
        .context("running the replay bench")?;
    if !out.status.success() {
        bail!("replay failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    writeln!(md, "## 9. Engine cost per sample (replay, no BPF)\n")?;
    writeln!(md, "`cargo run --release --example replay -- 1000 {seconds}`: 1,000 real processes (`sleep`), 24 stacks each of 16-40 user frames and up to 7 kernel frames, fed through ingest → store at a 64-CPU machine's 6,400 samples/s for {seconds} s of simulated time; the window store also resolves (symbolizes) what is new every simulated 15 s. Thread CPU time, so other load does not count. Goal: ≤ 1.5 µs per sample at steady state.\n")?;
    writeln!(md, "```")?;
    md.push_str(&String::from_utf8_lossy(&out.stdout));
    writeln!(md, "```\n")?;
    Ok(())
}

/// A 30 ms C program run again and again during a system-wide capture:
/// the share of its samples naming its hot function, ours and perf's.
pub(super) fn short_lived(env: &Env, md: &mut String) -> Result<()> {
    eprintln!("bench: short-lived processes");
    let exe = env.out.join("shortlived");
    super::sh(
        Command::new("gcc")
            .args(["-O1", "-g", "-fno-omit-frame-pointer"])
            .arg(env.root.join("tests/fixtures/c/shortlived.c"))
            .arg("-o")
            .arg(&exe),
    )?;
    let workload = || -> Result<()> {
        for _ in 0..100 {
            Command::new(&exe).arg("30").status()?;
        }
        Ok(())
    };
    // Ours.
    let out = env.out.join("shortlived.pb.gz");
    let mut capture = Command::new(&env.rprof)
        .args(["--seconds", "8", "-F", "1000", "--user-only", "-q", "-o"])
        .arg(&out)
        .stderr(Stdio::null())
        .spawn()?;
    std::thread::sleep(std::time::Duration::from_secs(2));
    workload()?;
    capture.wait()?;
    let report = Command::new(&env.rprof)
        .args(["report", "--traces"])
        .arg(&out)
        .output()?;
    let ours = named_share(&String::from_utf8_lossy(&report.stdout));
    // perf.
    let data = env.out.join("shortlived.perf.data");
    let mut perf = Command::new("perf")
        .args(["record", "-a", "-g", "-F", "1000", "-o"])
        .arg(&data)
        .args(["--", "sleep", "8"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    std::thread::sleep(std::time::Duration::from_secs(2));
    workload()?;
    perf.wait()?;
    let script = Command::new("perf")
        .args(["script", "-i"])
        .arg(&data)
        .stderr(Stdio::null())
        .output()?;
    let theirs = perf_named_share(&String::from_utf8_lossy(&script.stdout));
    writeln!(md, "## 10. Short-lived processes\n")?;
    writeln!(md, "A C program computing 30 ms in `short_hot` and exiting, run 100 times during an 8 s system-wide capture at 1000 Hz: the share of its samples whose stack names `short_hot` (the rest is the dynamic loader and libc starting up).\n")?;
    writeln!(
        md,
        "| | samples of the process | named `short_hot` |\n| --- | --- | --- |"
    )?;
    writeln!(md, "| rprof-bpf | {} | {:.1}% |", ours.0, 100.0 * ours.1)?;
    writeln!(
        md,
        "| perf record -a -g + perf script | {} | {:.1}% |\n",
        theirs.0,
        100.0 * theirs.1
    )?;
    Ok(())
}

/// From `report --traces`: (samples of process `shortlived`, share with
/// `short_hot`), counting each trace's value (ms at 1000 Hz).
fn named_share(traces: &str) -> (u64, f64) {
    let (mut all, mut hit) = (0u64, 0u64);
    for block in traces.split("-----------+") {
        if !block.contains("process:  shortlived") {
            continue;
        }
        let value = block
            .lines()
            .find_map(|l| {
                let t = l.trim_start();
                let (v, _) = t.split_once("ms")?;
                v.trim().parse::<u64>().ok()
            })
            .unwrap_or(0);
        all += value;
        if block.contains("short_hot") {
            hit += value;
        }
    }
    (all, hit as f64 / all.max(1) as f64)
}

/// From `perf script`: (samples of `shortlived`, share with `short_hot`).
fn perf_named_share(script: &str) -> (u64, f64) {
    let (mut all, mut hit) = (0u64, 0u64);
    for event in script.split("\n\n") {
        let Some(first) = event.lines().find(|l| !l.trim().is_empty()) else {
            continue;
        };
        if !first.trim_start().starts_with("shortlived") {
            continue;
        }
        all += 1;
        if event.contains("short_hot") {
            hit += 1;
        }
    }
    (all, hit as f64 / all.max(1) as f64)
}
