//! Section 8: the cost of off-CPU profiling under a context-switch storm.
//!
//! `perf bench sched pipe` ping-pongs a token between two processes
//! through pipes: every operation is two voluntary context switches and
//! four syscalls, the worst case for anything on the scheduler's or the
//! syscalls' hot path. We time a fixed number of operations with nothing
//! attached, with `rprof-bpf --event off-cpu` system-wide, and with
//! libbpf-tools' `offcputime` system-wide, in turns, and report each
//! profiler's slowdown of the storm (medians over the rounds).

use std::fmt::Write as _;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::{median, verdict, Env};

const OFFCPUTIME: &str = "/usr/sbin/offcputime";
/// Round trips per storm: about 2 s here.
const LOOPS: &str = "100000";

/// A profiler running in the background; SIGINT and reaped on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        let _ = self.0.wait();
    }
}

/// Seconds the storm takes (`perf bench`'s "Total time").
fn storm() -> Result<f64> {
    let out = Command::new("perf")
        .args(["bench", "sched", "pipe", "-l", LOOPS])
        .output()
        .context("running perf bench sched pipe")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Total time:"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no total time in perf bench's output:\n{text}"))
}

fn start(cmd: &mut Command) -> Result<Running> {
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    // Loaded and attached (both parse the kernel's BTF first).
    std::thread::sleep(Duration::from_secs(4));
    Ok(Running(child))
}

pub fn offcpu(env: &Env, rounds: usize, md: &mut String) -> Result<()> {
    if !std::path::Path::new(OFFCPUTIME).exists() {
        bail!("{OFFCPUTIME} is missing: run `cargo xtask deps`");
    }
    let out = env.out.join("offcpu.pb.gz");
    let (mut base, mut ours, mut peer) = (vec![], vec![], vec![]);
    for round in 0..rounds {
        eprintln!("bench: off-CPU storm round {}/{rounds}", round + 1);
        base.push(storm()?);
        {
            let _p = start(
                env.rprof()
                    .args(["--event", "off-cpu", "--seconds", "600", "-q", "-o"])
                    .arg(&out),
            )?;
            ours.push(storm()?);
        }
        {
            let _p = start(Command::new(OFFCPUTIME).arg("600"))?;
            peer.push(storm()?);
        }
    }
    let (b, o, p) = (median(base), median(ours), median(peer));
    let slow = |x: f64| 100.0 * (x / b - 1.0);
    writeln!(
        md,
        "## 12. Off-CPU under a context-switch storm\n\n`perf bench sched pipe -l {LOOPS}` (two processes ping-ponging through pipes: two context switches and four syscalls per round trip), alone, with `rprof-bpf --event off-cpu` system-wide, and with libbpf-tools' `offcputime` system-wide; {rounds} rounds in turns, medians.\n"
    )?;
    writeln!(
        md,
        "| | storm time | per round trip | slowdown |\n| --- | --- | --- | --- |"
    )?;
    let per = |x: f64| x * 1e6 / LOOPS.parse::<f64>().unwrap_or(1.0);
    writeln!(md, "| nothing attached | {b:.3} s | {:.2} µs | |", per(b))?;
    writeln!(
        md,
        "| rprof-bpf --event off-cpu | {o:.3} s | {:.2} µs | {:+.1}% |",
        per(o),
        slow(o)
    )?;
    writeln!(
        md,
        "| offcputime | {p:.3} s | {:.2} µs | {:+.1}% |\n",
        per(p),
        slow(p)
    )?;
    writeln!(
        md,
        "Goal: a slowdown no larger than offcputime's: **{}**.\n",
        verdict(o <= p)
    )?;
    Ok(())
}
