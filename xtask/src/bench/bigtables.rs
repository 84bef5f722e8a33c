//! Case 11: big unwind tables. A system-wide capture while `clang++-19 -O2`
//! compiles one file after another: each clang maps 47 MiB of unwind
//! tables (libclang-cpp, libLLVM, libz3), which the old fixed 8 MiB table
//! could not hold. How many of clang's samples reach `_start`, with the
//! default budget, with the old size as a budget, with frame pointers
//! only, and with `perf record -g` on the same workload.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use super::{bpf_cost_us, measure, number_before, unwind_tables, Env};

/// Length of each capture.
const SECS: u64 = 20;

/// `clang++-19 -O2 -c SRC` over and over on a thread, until dropped.
struct CompileLoop {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CompileLoop {
    fn start(clang: &Path, src: &Path, obj: &Path) -> CompileLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (clang, src, obj): (PathBuf, PathBuf, PathBuf) = (clang.into(), src.into(), obj.into());
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let _ = Command::new(&clang)
                    .args(["-O2", "-c"])
                    .arg(&src)
                    .arg("-o")
                    .arg(&obj)
                    .status();
            }
        });
        CompileLoop {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for CompileLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A `--traces` time ("10ms", "1.20s") in ms.
fn millis(v: &str) -> Option<f64> {
    let (num, mult) = if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix("us").or_else(|| v.strip_suffix("µs")) {
        (n, 1e-3)
    } else if let Some(n) = v.strip_suffix("ns") {
        (n, 1e-6)
    } else {
        (v.strip_suffix('s')?, 1e3)
    };
    Some(num.parse::<f64>().ok()? * mult)
}

/// Of the samples of processes named clang*, in `rprof-bpf report
/// --traces` output: their time (ms) and the share whose outermost frame
/// is `_start`.
fn clang_roots(traces: &str) -> (f64, f64) {
    let (mut all, mut rooted) = (0.0, 0.0);
    for block in traces.split("-----------+") {
        let mut clang = false;
        let mut frames: Vec<&str> = Vec::new();
        for line in block.lines().skip(1) {
            let t = line.trim();
            // Labels ("process:  bash") come before the frames.
            let label =
                frames.is_empty() && t.split_once(':').is_some_and(|(k, _)| !k.contains(' '));
            if let Some(p) = t.strip_prefix("process:") {
                clang = p.trim().starts_with("clang");
            } else if !t.is_empty() && !label {
                frames.push(t);
            }
        }
        let Some(first) = frames.first() else {
            continue;
        };
        let Some(ms) = first.split_whitespace().next().and_then(millis) else {
            continue;
        };
        if !clang {
            continue;
        }
        all += ms;
        if frames
            .last()
            .is_some_and(|f| f.split_whitespace().last() == Some("_start"))
        {
            rooted += ms;
        }
    }
    (all, if all > 0.0 { rooted / all } else { f64::NAN })
}

/// Of clang's samples in `perf script` output: how many, the share whose
/// outermost frame is `_start`, and the share with an `[unknown]` frame.
fn perf_clang(script: &str) -> (usize, f64, f64) {
    let (mut n, mut rooted, mut unknown) = (0, 0, 0);
    for sample in script.split("\n\n") {
        let mut lines = sample.lines().filter(|l| !l.trim().is_empty());
        let Some(header) = lines.next() else { continue };
        if !header.trim_start().starts_with("clang") {
            continue;
        }
        let frames: Vec<&str> = lines.collect();
        n += 1;
        if frames.iter().any(|f| f.contains("[unknown]")) {
            unknown += 1;
        }
        if frames
            .last()
            .and_then(|f| f.split_whitespace().nth(1))
            .is_some_and(|s| s == "_start" || s.starts_with("_start+"))
        {
            rooted += 1;
        }
    }
    let share = |k: usize| if n > 0 { k as f64 / n as f64 } else { f64::NAN };
    (n, share(rooted), share(unknown))
}

pub(super) fn big_tables(env: &Env, md: &mut String) -> Result<()> {
    eprintln!("bench: big unwind tables (clang)");
    writeln!(md, "## 11. Big unwind tables: clang compiling\n")?;
    let clang = Path::new("/usr/bin/clang++-19");
    if !clang.exists() {
        writeln!(md, "SKIPPED: clang++-19 is not installed.\n")?;
        return Ok(());
    }
    let src = env.root.join("tests/fixtures/cxx/bigcompile.cpp");
    let _compiles = CompileLoop::start(clang, &src, &env.out.join("bigcompile.o"));
    std::thread::sleep(Duration::from_secs(2));
    writeln!(md, "A system-wide capture of {SECS} s at 100 Hz while `clang++-19 -O2` compiles `tests/fixtures/cxx/bigcompile.cpp` over and over (a few seconds of CPU each). A clang process maps 47 MiB of unwind tables: libclang-cpp 1.35M rows, libLLVM 1.17M, libz3 0.39M, the C and C++ runtimes 70k. Root reached: share of clang's samples whose outermost frame is `_start`; the captures start cold, so building the tables (the first seconds) is included. Other processes on the machine are captured too and count in the tables.\n")?;
    writeln!(md, "| profiler | clang samples | clang root reached | stacks truncated at a garbage address (all processes) | BPF per run | unwind tables |\n| --- | --- | --- | --- | --- | --- |")?;
    let runs: [(&str, &[&str]); 3] = [
        ("rprof-bpf, default budget", &[]),
        (
            "rprof-bpf `--unwind-memory 8MiB` (the old fixed size)",
            &["--unwind-memory", "8MiB"],
        ),
        ("rprof-bpf `--unwind fp`", &["--unwind", "fp"]),
    ];
    for (name, extra) in runs {
        let out = env.out.join("bigtables.pb.gz");
        let (_, err) = measure(
            env.rprof()
                .args(["--seconds", &SECS.to_string(), "-o"])
                .arg(&out)
                .args(extra),
        )?;
        let traces = env
            .rprof()
            .args(["report", "--traces"])
            .arg(&out)
            .output()?;
        let (ms, share) = clang_roots(&String::from_utf8_lossy(&traces.stdout));
        let cut = number_before(&err, " stacks truncated").unwrap_or(0.0);
        let tables = unwind_tables(&err);
        writeln!(
            md,
            "| {name} | {:.0} | {:.1}% | {cut:.0} | {:.2} µs | {tables} |",
            ms / 10.0,
            share * 100.0,
            bpf_cost_us(&err).unwrap_or(f64::NAN)
        )?;
    }
    let data = env.out.join("bigtables.perf.data");
    let st = Command::new("perf")
        .args(["record", "-q", "-a", "-g", "-F", "100", "-o"])
        .arg(&data)
        .args(["--", "sleep", &SECS.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running perf record")?;
    if st.success() {
        let script = Command::new("perf")
            .args(["script", "-i"])
            .arg(&data)
            .stderr(Stdio::null())
            .output()
            .context("running perf script")?;
        let (n, root, unknown) = perf_clang(&String::from_utf8_lossy(&script.stdout));
        writeln!(
            md,
            "| `perf record -a -g` | {n} | {:.1}% | ({:.1}% of clang's samples have an `[unknown]` frame) | - | - |",
            root * 100.0,
            unknown * 100.0
        )?;
    }
    writeln!(md)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_traces_and_perf_script() {
        let traces = "File: x\n-----------+-------\n    thread:  clang++-19\n   process:  clang++-19\n       pid:  7\n      20ms   llvm::foo\n             main\n             _start\n-----------+-------\n   process:  clang++-19\n      10ms   llvm::bar\n-----------+-------\n   process:  bash\n      1.5s   x\n             _start\n";
        let (ms, share) = clang_roots(traces);
        assert_eq!(ms, 30.0);
        assert!((share - 2.0 / 3.0).abs() < 1e-9);
        let script = "clang++-19 12 [000] 1.0: 1 cpu-clock:\n\t    55 foo+0x1 (/x)\n\t    66 _start+0x25 (/x)\n\nclang++-19 12 [000] 1.1: 1 cpu-clock:\n\t    55 [unknown] ([unknown])\n\nbash 3 [000] 1.2: 1 cpu-clock:\n\t    1 _start+0x1 (/bin/bash)\n";
        let (n, root, unknown) = perf_clang(script);
        assert_eq!(n, 2);
        assert_eq!((root, unknown), (0.5, 0.5));
    }
}
