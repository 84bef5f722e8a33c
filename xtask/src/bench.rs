//! `cargo xtask bench [--quick]`: overhead against `perf`, cost per sample,
//! accuracy against Go's own profiler, symbolization speed, unwinding and
//! the node agent's cost. Writes `BENCHMARKS.md`.
//!
//! `cargo xtask bench --agent-only [--agent-seconds N]` runs only the agent
//! case and prints its table (BENCHMARKS.md is left alone); `--offcpu-only`
//! likewise for the off-CPU storm (section 12), `--big-tables-only` for the
//! big unwind tables case, `--accuracy-only` for the accuracy case (section
//! 3), `--engine-only` for the replay and short-lived cases (9, 10), and
//! `--ui-only` for the browser UI (8).
//!
//! The machine is noisy, so comparisons run their candidates in turns within
//! one run, and report medians over the rounds and ratios.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::deps::workspace_root;

mod agent;
mod bigtables;
mod engine;
mod offcpu;
mod ui;

/// What one measured command cost.
#[derive(Clone, Copy, Debug, Default)]
struct Cost {
    /// User + system CPU seconds of the command and its children.
    cpu: f64,
    /// Peak resident set, MiB.
    rss_mib: f64,
    wall: f64,
}

/// Runs `cmd` to completion and measures it with wait4(2).
fn measure(cmd: &mut Command) -> Result<(Cost, String)> {
    let t0 = Instant::now();
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    let pid = child.id() as i32;
    let mut stderr = child.stderr.expect("piped stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid, and wait4 writes into it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child with valid pointers.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    if r != pid {
        bail!("wait4 failed for {:?}", cmd.get_program());
    }
    let err = reader.join().unwrap_or_default();
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("{:?} failed:\n{err}", cmd.get_program());
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok((
        Cost {
            cpu: secs(ru.ru_utime) + secs(ru.ru_stime),
            rss_mib: ru.ru_maxrss as f64 / 1024.0,
            wall: t0.elapsed().as_secs_f64(),
        },
        err,
    ))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

/// Busy processes, killed on drop.
struct Load(Vec<std::process::Child>);

impl Load {
    fn start(exe: &Path, n: usize) -> Result<Load> {
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(
                Command::new(exe)
                    .arg("100000")
                    .stdout(Stdio::null())
                    .spawn()?,
            );
        }
        std::thread::sleep(Duration::from_millis(300));
        Ok(Load(v))
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Env {
    root: PathBuf,
    out: PathBuf,
    rprof: PathBuf,
    go: PathBuf,
    ncpu: usize,
}

impl Env {
    fn rprof(&self) -> Command {
        Command::new(&self.rprof)
    }

    fn go(&self) -> Command {
        let mut c = Command::new(&self.go);
        c.env("GOTOOLCHAIN", "local")
            .env("GOPROXY", "off")
            .env("GOFLAGS", "-mod=mod")
            .env("CGO_ENABLED", "0")
            .env("GOCACHE", self.root.join("target/go-cache"));
        c
    }
}

fn sh(cmd: &mut Command) -> Result<()> {
    let st = cmd
        .status()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !st.success() {
        bail!("{:?} failed", cmd.get_program());
    }
    Ok(())
}

/// Parses the number before `marker` in rprof-bpf's summary (e.g. "123
/// samples").
fn number_before(text: &str, marker: &str) -> Option<f64> {
    let i = text.find(marker)?;
    text[..i].split_whitespace().last()?.parse().ok()
}

/// What rprof-bpf's "unwind tables: ..." line says, or "-".
fn unwind_tables(stderr: &str) -> String {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("unwind tables: "))
        .unwrap_or("-")
        .to_owned()
}

/// Parses "BPF program cost 1.23 us per run".
fn bpf_cost_us(text: &str) -> Option<f64> {
    let i = text.find("BPF program cost ")? + "BPF program cost ".len();
    text[i..].split_whitespace().next()?.parse().ok()
}

pub fn run(args: &[String]) -> Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    let agent_only = args.iter().any(|a| a == "--agent-only");
    let ui_only = args.iter().any(|a| a == "--ui-only");
    let offcpu_only = args.iter().any(|a| a == "--offcpu-only");
    let engine_only = args.iter().any(|a| a == "--engine-only");
    let accuracy_only = args.iter().any(|a| a == "--accuracy-only");
    let agent_secs = match args.iter().position(|a| a == "--agent-seconds") {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|&v| v >= 20)
            .context("--agent-seconds takes a number of seconds, at least 20")?,
        None if quick => 30,
        None => 150,
    };
    crate::deps::install()?;
    let root = workspace_root();
    sh(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--release", "-p", "rprof-bpf"])
            .current_dir(&root),
    )?;
    let out = root.join("target/bench");
    std::fs::create_dir_all(&out)?;
    let env = Env {
        rprof: root.join("target/release/rprof-bpf"),
        go: root.join(".venv-go/bin/go"),
        ncpu: std::thread::available_parallelism().map_or(1, |n| n.get()),
        out,
        root,
    };
    let spin = env.out.join("spin");
    sh(Command::new("gcc")
        .args(["-O2", "-g", "-fno-omit-frame-pointer"])
        .arg(env.root.join("tests/fixtures/c/spin.c"))
        .arg("-o")
        .arg(&spin))?;
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")
        .context("enabling kernel.bpf_stats_enabled (needs root)")?;

    let mut md = String::new();
    header(&mut md, quick)?;
    if args.iter().any(|a| a == "--big-tables-only") {
        let done = bigtables::big_tables(&env, &mut md);
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0");
        done?;
        println!("{md}");
        return Ok(());
    }
    if ui_only {
        ui::ui(&env, &mut md)?;
        println!("{md}");
        return Ok(());
    }
    if engine_only {
        engine::replay(&env, quick, &mut md)?;
        engine::short_lived(&env, &mut md)?;
        println!("{md}");
        return Ok(());
    }
    if accuracy_only {
        accuracy(&env, if quick { 10 } else { 30 }, &mut md)?;
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0");
        println!("{md}");
        return Ok(());
    }
    if offcpu_only {
        offcpu::offcpu(&env, if quick { 2 } else { 5 }, &mut md)?;
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0");
        println!("{md}");
        return Ok(());
    }
    if agent_only {
        agent::agent(&env, &spin, agent_secs, &mut md)?;
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0");
        println!("{md}");
        return Ok(());
    }
    let rounds = if quick { 1 } else { 3 };
    overhead(&env, &spin, rounds, &mut md)?;
    per_sample(&env, &spin, rounds, if quick { 5 } else { 10 }, &mut md)?;
    accuracy(&env, if quick { 10 } else { 30 }, &mut md)?;
    symbolization(&env, quick, &mut md)?;
    unwinding(&env, &mut md)?;
    bigtables::big_tables(&env, &mut md)?;
    agent::agent(&env, &spin, agent_secs, &mut md)?;
    ui::ui(&env, &mut md)?;
    offcpu::offcpu(&env, if quick { 2 } else { 5 }, &mut md)?;
    engine::replay(&env, quick, &mut md)?;
    engine::short_lived(&env, &mut md)?;
    if !quick {
        go_table(&env, &mut md)?;
    }
    let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0");

    let path = env.root.join("BENCHMARKS.md");
    std::fs::write(&path, &md)?;
    println!("{md}");
    println!("wrote {}", path.display());
    Ok(())
}

fn header(md: &mut String, quick: bool) -> Result<()> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let date = String::from_utf8(
        Command::new("date")
            .arg("-u")
            .arg("+%Y-%m-%d %H:%M UTC")
            .output()?
            .stdout,
    )?;
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().map(str::to_owned))
        .unwrap_or_default();
    writeln!(md, "# rprof-bpf benchmarks\n")?;
    writeln!(
        md,
        "Written by `cargo xtask bench{}`; rerun it to refresh. Medians over rounds run in turns.\n",
        if quick { " --quick" } else { "" }
    )?;
    writeln!(md, "| machine | |\n| --- | --- |")?;
    writeln!(
        md,
        "| CPU | {} x {cpu} |",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    )?;
    writeln!(
        md,
        "| memory | {} |",
        mem.trim_start_matches("MemTotal:").trim()
    )?;
    writeln!(md, "| kernel | {} |", kernel.trim())?;
    writeln!(md, "| date | {} |\n", date.trim())?;
    Ok(())
}

/// Case 1: system-wide at 100 Hz, one busy process per CPU, 20 s.
fn overhead(env: &Env, spin: &Path, rounds: usize, md: &mut String) -> Result<()> {
    const SECS: u64 = 20;
    let _load = Load::start(spin, env.ncpu)?;
    let sampled = (env.ncpu as u64 * SECS) as f64;
    // rprof-bpf in both unwinding modes, and perf, in turns.
    let modes = ["auto", "fp"];
    let mut ours: Vec<(Vec<f64>, Vec<f64>, Vec<f64>)> = vec![Default::default(); modes.len()];
    let (mut p_cpu, mut p_rss, mut samples, mut lost) = (vec![], vec![], vec![], vec![]);
    for round in 0..rounds {
        eprintln!("bench: overhead round {}/{rounds}", round + 1);
        let out = env.out.join("sys.pb.gz");
        for (mode, acc) in modes.iter().zip(ours.iter_mut()) {
            let (c, err) = measure(
                env.rprof()
                    .args(["--unwind", mode, "--seconds", &SECS.to_string(), "-q", "-o"])
                    .arg(&out),
            )?;
            acc.0.push(c.cpu);
            acc.1.push(c.rss_mib);
            acc.2.push(bpf_cost_us(&err).unwrap_or(f64::NAN));
            if *mode == "auto" {
                samples.push(number_before(&err, " samples").unwrap_or(0.0));
                lost.push(number_before(&err, " lost").unwrap_or(f64::NAN));
            }
        }
        let data = env.out.join("perf.data");
        let (rec, _) = measure(
            Command::new("perf")
                .args(["record", "-F", "100", "-a", "-g", "-q", "-o"])
                .arg(&data)
                .args(["--", "sleep", &SECS.to_string()]),
        )?;
        let (rep, _) = measure(
            Command::new("perf")
                .args(["report", "--stdio", "-i"])
                .arg(&data),
        )?;
        p_cpu.push(rec.cpu + rep.cpu);
        p_rss.push(rec.rss_mib.max(rep.rss_mib));
    }
    let (pc, pr) = (median(p_cpu), median(p_rss));
    let m: Vec<(f64, f64, f64)> = ours
        .into_iter()
        .map(|(c, r, b)| (median(c), median(r), median(b)))
        .collect();
    let ((ac, ar, ab), (fc, fr, fb)) = (m[0], m[1]);
    writeln!(
        md,
        "## 1. Overhead: system-wide, 100 Hz, {} busy processes, {SECS} s\n",
        env.ncpu
    )?;
    writeln!(
        md,
        "`auto` is the default (`.eh_frame` tables where a binary has them, frame pointers elsewhere); `fp` is `--unwind fp`. CPU is user+sys from wait4(2), including loading, symbolizing and writing; perf's is `perf record` plus `perf report --stdio`.\n"
    )?;
    writeln!(
        md,
        "| | rprof-bpf auto | rprof-bpf fp | perf | auto / perf | fp / perf |\n| --- | --- | --- | --- | --- | --- |"
    )?;
    writeln!(
        md,
        "| profiler CPU | {ac:.3} s | {fc:.3} s | {pc:.3} s | {:.2} | {:.2} |",
        ac / pc,
        fc / pc
    )?;
    writeln!(
        md,
        "| share of sampled CPU time ({sampled:.0} s) | {:.3}% | {:.3}% | {:.3}% | | |",
        100.0 * ac / sampled,
        100.0 * fc / sampled,
        100.0 * pc / sampled
    )?;
    writeln!(
        md,
        "| peak RSS | {ar:.1} MiB | {fr:.1} MiB | {pr:.1} MiB | {:.2} | {:.2} |",
        ar / pr,
        fr / pr
    )?;
    writeln!(
        md,
        "| BPF program time per run | {ab:.2} µs | {fb:.2} µs | (in the kernel's perf code) | | |"
    )?;
    writeln!(
        md,
        "| samples / lost (auto) | {:.0} / {:.0} | | | | |\n",
        median(samples),
        median(lost)
    )?;
    let mb25 = 25.0 * 1e6 / (1024.0 * 1024.0);
    writeln!(
        md,
        "Goals: CPU ≤ 0.15% of sampled time and below perf's: **{}** (auto), **{}** (fp); BPF ≤ 1.5 µs per frame-pointer sample: **{}**; RSS ≤ 25 MB: **{}** (auto), **{}** (fp).\n",
        verdict(100.0 * ac / sampled <= 0.15 && ac < pc),
        verdict(100.0 * fc / sampled <= 0.15 && fc < pc),
        verdict(fb <= 1.5),
        verdict(ar <= mb25),
        verdict(fr <= mb25),
    )?;
    Ok(())
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "not met"
    }
}

/// Case 2: the same at 1000 Hz: cost per sample and lost samples.
fn per_sample(env: &Env, spin: &Path, rounds: usize, secs: u64, md: &mut String) -> Result<()> {
    let _load = Load::start(spin, env.ncpu)?;
    let (mut user, mut bpf, mut lost, mut samples) = (vec![], vec![], vec![], vec![]);
    for round in 0..rounds {
        eprintln!("bench: 1000 Hz round {}/{rounds}", round + 1);
        let out = env.out.join("k.pb.gz");
        let (c, err) = measure(
            env.rprof()
                .args(["-F", "1000", "--seconds", &secs.to_string(), "-q", "-o"])
                .arg(&out),
        )?;
        let n = number_before(&err, " samples").unwrap_or(f64::NAN);
        samples.push(n);
        user.push(c.cpu * 1e6 / n);
        bpf.push(bpf_cost_us(&err).unwrap_or(f64::NAN));
        lost.push(number_before(&err, " lost").unwrap_or(f64::NAN));
    }
    let l = median(lost);
    writeln!(
        md,
        "## 2. Steady state at 1000 Hz ({secs} s, {} busy processes)\n",
        env.ncpu
    )?;
    writeln!(md, "| user-space CPU per sample | BPF per sample | samples | lost |\n| --- | --- | --- | --- |")?;
    writeln!(
        md,
        "| {:.1} µs | {:.2} µs | {:.0} | {l:.0} |\n",
        median(user),
        median(bpf),
        median(samples)
    )?;
    writeln!(md, "Goal: 0 lost: **{}**.\n", verdict(l == 0.0))?;
    Ok(())
}

/// A function's flat and cum shares (percent).
type Share = (String, f64, f64);

/// Flat and cum shares by function from `rprof-bpf report` (with `extra`
/// report flags), and the samples in all (1 ms each at 1000 Hz: the
/// header's total in ms).
fn shares(env: &Env, file: &Path, extra: &[&str]) -> Result<(Vec<Share>, f64)> {
    let o = env
        .rprof()
        .args(["report", "--nodecount", "100"])
        .args(extra)
        .arg(file)
        .output()?;
    if !o.status.success() {
        bail!("report failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let total_ms = text
        .lines()
        .find_map(|l| l.split("Total samples = ").nth(1))
        .and_then(|t| t.split_whitespace().next())
        .and_then(|t| match t.strip_suffix("ms") {
            Some(ms) => ms.parse::<f64>().ok(),
            None => t.strip_suffix('s')?.parse::<f64>().ok().map(|s| s * 1e3),
        })
        .context("report printed no sample total")?;
    let rows = text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("flat"))
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let pct = |s: &str| s.trim_end_matches('%').parse::<f64>().ok();
            // pprof marks inlined functions "name (inline)".
            let name = f.get(5..)?.join(" ");
            let name = name.trim_end_matches(" (inline)").to_owned();
            Some((name, pct(f.get(1)?)?, pct(f.get(4)?)?))
        })
        .collect();
    Ok((rows, total_ms))
}

/// The fixture's functions that do its work, and their split by
/// construction (section 3).
const GO_WORK: [(&str, &str); 3] = [
    ("main.hot60", "60%"),
    ("main.warm30", "30%"),
    ("main.cool10", "10%"),
];

/// `own_ns` of each of [`GO_WORK`] from the fixture's `-truth` JSON: its
/// units of work times its fitted cost per unit.
fn truth_ns(path: &Path) -> Result<[f64; 3]> {
    let text = std::fs::read_to_string(path)?;
    let mut out = [0.0; 3];
    for (o, (name, _)) in out.iter_mut().zip(GO_WORK) {
        let field = text
            .split(&format!("\"{name}\""))
            .nth(1)
            .and_then(|t| t.split("\"own_ns\":").nth(1))
            .and_then(|t| t.split([',', '}']).next())
            .with_context(|| format!("no {name}.own_ns in {}", path.display()))?;
        *o = field.trim().parse()?;
    }
    Ok(out)
}

/// Case 3: a Go program with a known split, against the split it measures
/// itself and against its own runtime/pprof.
fn accuracy(env: &Env, secs: u64, md: &mut String) -> Result<()> {
    eprintln!("bench: accuracy against Go's own profile");
    let exe = env.out.join("goinline");
    sh(env
        .go()
        .args(["build", "-o"])
        .arg(&exe)
        .arg(".")
        .current_dir(env.root.join("tests/fixtures/goinline")))?;
    let go_prof = env.out.join("go-own.pb.gz");
    let truth = env.out.join("go-truth.json");
    let mut child = Command::new(&exe)
        .args([
            "-seconds",
            &(secs + 2).to_string(),
            // Go's profiler gets at most one sample per kernel tick per
            // thread whatever the rate asked: two threads, twice the samples.
            "-workers",
            "2",
            // Random rounds: a fixed round is a period a sampler can alias with.
            "-vary",
            "-truth",
        ])
        .arg(&truth)
        .args(["-cpurate", "1000", "-cpuprofile"])
        .arg(&go_prof)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(500));
    let ours = env.out.join("go-ours.pb.gz");
    let (_, _) = measure(
        env.rprof()
            .args([
                "--pid",
                &child.id().to_string(),
                "-F",
                "1000",
                "--user-only",
                "--seconds",
            ])
            .arg(secs.to_string())
            .args(["-q", "-o"])
            .arg(&ours),
    )?;
    child.wait()?;
    let truth = truth_ns(&truth)?;
    // Shares of the program's own work: relative to the samples under
    // main.loop. Outside it are the runtime's own threads and, in our
    // profile only, the cost of Go's profiler itself (its SIGPROF handler
    // at 1000 Hz), which Go's profile cannot sample.
    let own_work = |rows: Vec<Share>| -> (Vec<Share>, f64) {
        let main = rows
            .iter()
            .find(|r| r.0 == "main.loop")
            .map_or(100.0, |r| r.2);
        let scaled = rows
            .into_iter()
            .map(|(n, f, c)| (n, 100.0 * f / main, 100.0 * c / main))
            .collect();
        (scaled, main)
    };
    // Go's samples at runtime.asyncPreempt's entry say which function the
    // thread was in but not where in it: left out (see the text below).
    // (The report's total counts ignored samples too.)
    let (all, their_n) = shares(env, &go_prof, &[])?;
    let (_, their_main) = own_work(all);
    let (theirs, _) = shares(env, &go_prof, &["--ignore", "^runtime\\.asyncPreempt$"])?;
    let (theirs, placed_main) = own_work(theirs);
    let preempt = their_main - placed_main;
    let (mine, my_n) = shares(env, &ours, &[])?;
    let (mine, my_main) = own_work(mine);
    writeln!(
        md,
        "## 3. Accuracy against the truth and Go's own profiler\n"
    )?;
    writeln!(md, "The `goinline` fixture splits its work 60/30/10 between `main.hot60`, `main.warm30` (inlined) and `main.cool10`; all three call `main.mix`, which is always inlined. It runs the loop on two threads with the work of each round drawn at random (`-vary`: a fixed round is a period a sampler can alias with), times every call itself (`-truth`: the truth column is each function's units of work times its fitted cost per unit, as a share of the three) and writes its own runtime/pprof profile while rprof-bpf profiles it for {secs} s, user stacks only (a signal-based profiler cannot see kernel frames; the time the kernel spends delivering Go's own profiling signals would otherwise show up in ours only). Both ask for 1000 Hz; Go's profiler gets at most one sample per kernel tick per thread (CONFIG_HZ, often 250), so its side holds {their_n:.0} samples against our {my_n:.0} (at pprof's usual 100 Hz, sampling noise alone is about 2 points on a 30% share).\n")?;
    writeln!(md, "Percentages are of the samples under `main.loop` (the program's own work): {their_main:.2}% of Go's samples, {my_main:.2}% of ours. The rest of ours is mostly Go's profiler at work (its signal handler, 1000 times a second), which a profiler running inside the process cannot sample. Go's side leaves out the {preempt:.2}% of its samples at `runtime.asyncPreempt`'s entry: Go's profiling signal, when delivered right after its preemption signal (more often on a busy machine), finds the thread there, so such a sample tells the function the thread was in but not the instruction (Go 1.19 names the one before it).\n")?;
    writeln!(md, "| function | by construction | truth | Go flat% | rprof-bpf flat% | Go cum% | rprof-bpf cum% | rprof-bpf vs truth (pp) | largest difference from Go (pp) |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |")?;
    let mut worst: f64 = 0.0;
    let mut worst_truth: f64 = 0.0;
    let find = |rows: &[Share], name: &str| {
        rows.iter()
            .find(|r| r.0 == name)
            .map_or((0.0, 0.0), |r| (r.1, r.2))
    };
    // Our cum shares of the three functions' work, to set against the truth.
    let my_work: f64 = GO_WORK.iter().map(|(n, _)| find(&mine, n).1).sum();
    let truth_sum: f64 = truth.iter().sum();
    let rows = GO_WORK
        .iter()
        .zip(truth.map(|t| Some(100.0 * t / truth_sum)))
        .map(|(&(n, s), t)| (n, s, t))
        .chain([("main.mix", "(inlined leaf)", None)]);
    for (name, split, truth) in rows {
        let (gf, gc) = find(&theirs, name);
        let (of, oc) = find(&mine, name);
        let d = (gf - of).abs().max((gc - oc).abs());
        worst = worst.max(d);
        let (t, vs_truth) = match truth {
            Some(t) => {
                let v = 100.0 * oc / my_work.max(1e-9) - t;
                worst_truth = worst_truth.max(v.abs());
                (format!("{t:.2}%"), format!("{v:+.2}"))
            }
            None => ("–".into(), "–".into()),
        };
        writeln!(
            md,
            "| `{name}` | {split} | {t} | {gf:.2} | {of:.2} | {gc:.2} | {oc:.2} | {vs_truth} | {d:.2} |"
        )?;
    }
    writeln!(
        md,
        "\nGoal: every difference ≤ 2 percentage points: **{}** (largest {worst_truth:.2} pp from the truth, {worst:.2} pp from Go).\n",
        verdict(worst <= 2.0 && worst_truth <= 2.0)
    )?;
    Ok(())
}

/// Case 4: symbolizing profiles of large binaries, cold (page cache
/// dropped) and warm.
fn symbolization(env: &Env, quick: bool, md: &mut String) -> Result<()> {
    eprintln!("bench: symbolization");
    writeln!(md, "## 4. Symbolization\n")?;
    writeln!(md, "A raw (`--no-symbolize`) system-wide capture of a workload, then `rprof-bpf symbolize` on it; cold = page cache dropped first. `perf report` on a `perf record -g` of the same workload for comparison.\n")?;
    writeln!(md, "| workload | locations | rprof-bpf cold | rprof-bpf warm | peak RSS | perf report |\n| --- | --- | --- | --- | --- | --- |")?;
    // Go: the Go toolchain compiling the standard library (its `compile`
    // binary is the large Go binary).
    let goroot = String::from_utf8(env.go().args(["env", "GOROOT"]).output()?.stdout)?;
    let tools = PathBuf::from(goroot.trim()).join("pkg/tool");
    let go_work = || -> Command {
        let mut c = env.go();
        c.args(["build", "-a", "-o", "/dev/null", "std"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .env("GOCACHE", env.out.join("go-cache-bench"));
        c
    };
    let go_bin = PathBuf::from(goroot.trim()).join("bin");
    let go_raw = symbolize_case(
        env,
        "go",
        "Go toolchain (`go build -a std`)",
        go_work,
        &[tools.clone(), go_bin.clone()],
        md,
    )?;
    // C/Rust with full DWARF: our own debug build, symbolizing the Go raw
    // profile (blazesym and our code, unoptimized, are the workload).
    if !quick {
        sh(
            Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .args(["build", "-p", "rprof-bpf"])
                .current_dir(&env.root),
        )?;
    }
    let debug_bin = env.root.join("target/debug/rprof-bpf");
    if debug_bin.exists() {
        let dir = env.out.join("dwarf-bin");
        std::fs::create_dir_all(&dir)?;
        std::fs::copy(&debug_bin, dir.join("rprof-bpf"))?;
        let exe = dir.join("rprof-bpf");
        let scratch = env.out.join("scratch.pb.gz");
        let work = move || -> Command {
            let mut c = Command::new(&exe);
            c.arg("symbolize")
                .arg(&go_raw)
                .arg("-o")
                .arg(&scratch)
                .arg("--binary")
                .arg(&tools)
                .arg("--binary")
                .arg(&go_bin)
                .stderr(Stdio::null());
            c
        };
        symbolize_case(
            env,
            "dwarf",
            "Rust with full DWARF (`rprof-bpf` debug build)",
            work,
            &[dir],
            md,
        )?;
    }
    writeln!(md)?;
    Ok(())
}

/// Case 6: the `.eh_frame` unwinder against frame pointers, on binaries
/// built without them.
fn unwinding(env: &Env, md: &mut String) -> Result<()> {
    eprintln!("bench: unwinding");
    let qsort = env.out.join("qsort");
    sh(Command::new("gcc")
        .args(["-O2", "-g", "-fomit-frame-pointer"])
        .arg(env.root.join("tests/fixtures/c/qsort.c"))
        .arg("-o")
        .arg(&qsort))?;
    let target = env.root.join("target/fixtures-rust");
    sh(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--release", "--offline", "-q", "--manifest-path"])
            .arg(env.root.join("tests/fixtures/rustspin/Cargo.toml"))
            .env("CARGO_TARGET_DIR", &target),
    )?;
    let rust = target.join("release/rustspin");
    let cgo = env.out.join("gocgo");
    sh(Command::new(&env.go)
        .args(["build", "-o"])
        .arg(&cgo)
        .arg(".")
        .current_dir(env.root.join("tests/fixtures/gocgo"))
        .env("CGO_ENABLED", "1")
        .env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off")
        .env("GOCACHE", env.root.join("target/go-cache")))?;
    writeln!(md, "## 6. Unwinding without frame pointers\n")?;
    writeln!(md, "5 s per run at 100 Hz on one process. Root reached: the outermost frame is the thread's root (`_start`, or `runtime.goexit` for Go). BPF per run averages over both CPUs' runs: the idle CPU's runs exit at once, so the cost of a sample is about twice the figure.\n")?;
    writeln!(md, "| fixture | unwinding | root reached | median stack depth | BPF per run | tables |\n| --- | --- | --- | --- | --- | --- |")?;
    let cases: [(&str, &Path, &[&str], &str); 3] = [
        (
            "C, -O2 -fomit-frame-pointer, hot in a qsort callback",
            &qsort,
            &["20"],
            "_start;",
        ),
        ("Rust release, no frame pointers", &rust, &["20"], "_start;"),
        (
            "Go 1.27 → C (no frame pointers) → Go callback (cgo)",
            &cgo,
            &["-seconds", "20"],
            "runtime.goexit;",
        ),
    ];
    for (name, exe, args, root) in cases {
        for mode in ["fp", "auto"] {
            let mut child = Command::new(exe).args(args).stdout(Stdio::null()).spawn()?;
            std::thread::sleep(Duration::from_millis(300));
            let out = env.out.join("unwind.pb.gz");
            let (_, err) = measure(
                env.rprof()
                    .args([
                        "--pid",
                        &child.id().to_string(),
                        "--unwind",
                        mode,
                        "--seconds",
                        "5",
                        "-o",
                    ])
                    .arg(&out),
            )?;
            let _ = child.kill();
            let _ = child.wait();
            let folded = env
                .rprof()
                .args(["report", "--collapsed"])
                .arg(&out)
                .output()?;
            let text = String::from_utf8_lossy(&folded.stdout).into_owned();
            let (mut rooted, mut all, mut depths) = (0.0, 0.0, vec![]);
            for l in text.lines() {
                let Some((stack, v)) = l.rsplit_once(' ') else {
                    continue;
                };
                let v: f64 = v.parse().unwrap_or(0.0);
                all += v;
                if stack.starts_with(root) {
                    rooted += v;
                }
                depths.push(stack.split(';').count() as f64);
            }
            let tables = unwind_tables(&err);
            writeln!(
                md,
                "| {name} | {mode} | {:.1}% | {:.0} | {:.2} µs | {tables} |",
                100.0 * rooted / all.max(1.0),
                median(depths),
                bpf_cost_us(&err).unwrap_or(f64::NAN)
            )?;
        }
    }
    writeln!(md)?;
    Ok(())
}

/// Case 5 (full runs only: it compiles the test suite in release mode): the
/// `.gopclntab` reader on the largest Go binaries at hand, via its
/// measurement test.
fn go_table(env: &Env, md: &mut String) -> Result<()> {
    eprintln!("bench: Go symbol table reader");
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "test",
            "--release",
            "-p",
            "rprof-bpf",
            "--lib",
            "symbolize::go::tests::perf",
            "--",
        ])
        .args(["--ignored", "--nocapture", "--test-threads=1"])
        .current_dir(&env.root)
        .env(
            "PATH",
            format!(
                "{}:{}",
                env.root.join(".venv-go/bin").display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .output()?;
    let text = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| {
            !l.starts_with("running")
                && !l.contains("Finished")
                && !l.contains("Running")
                && !l.contains("Compiling")
        })
        .filter(|l| l.starts_with(' ') || l.contains(".go") || l.contains("/"))
        .collect();
    writeln!(md, "## 5. The `.gopclntab` reader\n")?;
    writeln!(md, "Opening (no decoding up front) and lookups on the toolchains' own large Go binaries, release build (`symbolize::go::tests::perf`):\n")?;
    writeln!(md, "```\n{}\n```\n", lines.join("\n"))?;
    writeln!(md, "Goals: ≥ 1M PCs/s warm; < 200 ms to open and index a 100 MB binary (opening does not grow with size when section headers are present).\n")?;
    Ok(())
}

/// Captures `work` raw, symbolizes it cold and warm, compares with perf.
/// Returns the raw profile's path.
fn symbolize_case(
    env: &Env,
    slug: &str,
    name: &str,
    work: impl Fn() -> Command,
    binary_dirs: &[PathBuf],
    md: &mut String,
) -> Result<PathBuf> {
    let raw = env.out.join(format!("raw-{slug}.pb.gz"));
    // Capture raw while the workload runs (repeated until 5 s are covered).
    let mut capture = env
        .rprof()
        .args(["--seconds", "5", "-q", "--no-symbolize", "-o"])
        .arg(&raw)
        .stderr(Stdio::null())
        .spawn()?;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(5) {
        let _ = work().status()?;
    }
    capture.wait()?;
    let sym = env.out.join("sym.pb.gz");
    let symbolize = || -> Result<(Cost, String)> {
        let mut c = env.rprof();
        c.arg("symbolize").arg(&raw).arg("-o").arg(&sym);
        for d in binary_dirs {
            c.arg("--binary").arg(d);
        }
        measure(&mut c)
    };
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
    let (cold, summary) = symbolize()?;
    let (warm, _) = symbolize()?;
    let located = summary
        .lines()
        .last()
        .and_then(|l| l.split(" locations").next())
        .and_then(|l| l.rsplit(' ').next())
        .unwrap_or("?")
        .to_owned();
    // perf on the same workload.
    let data = env.out.join("perf-sym.data");
    let mut rec = Command::new("perf")
        .args(["record", "-F", "100", "-a", "-g", "-q", "-o"])
        .arg(&data)
        .args(["--", "sleep", "5"])
        .stderr(Stdio::null())
        .spawn()?;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(5) {
        let _ = work().status()?;
    }
    rec.wait()?;
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
    let (perf, _) = measure(
        Command::new("perf")
            .args(["report", "--stdio", "-i"])
            .arg(&data),
    )?;
    writeln!(
        md,
        "| {name} | {located} | {:.2} s wall, {:.2} s CPU | {:.2} s wall, {:.2} s CPU | {:.1} MiB | {:.2} s wall, {:.2} s CPU, {:.1} MiB |",
        cold.wall, cold.cpu, warm.wall, warm.cpu, cold.rss_mib.max(warm.rss_mib), perf.wall, perf.cpu, perf.rss_mib
    )?;
    Ok(raw)
}
