//! Case 7: the node agent's own cost, as a DaemonSet pays it: CPU share and
//! resident memory of `rprof-bpf agent` over a steady run, pull only and
//! pushing to a local receiver. Both CPUs are kept busy by the spin
//! fixture; whatever else runs on the machine is profiled (and, when
//! pushing, symbolized) too, and is reported as the processes the agent saw.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{Env, Load};

/// What one run measured.
struct Run {
    cpu: f64,
    hwm_mib: f64,
    rss_mib: f64,
    anon_mib: f64,
    seen: f64,
    resets: f64,
    pushes: u64,
}

/// Runs the agent pull-only and pushing, `secs` of steady state each after
/// a 5 s warm-up, with `/metrics` scraped every 15 s and one 10 s pull.
pub(super) fn agent(env: &Env, spin: &Path, secs: u64, md: &mut String) -> Result<()> {
    // As in the image: debug info stripped.
    let bin = env.out.join("rprof-bpf-stripped");
    super::sh(
        Command::new("objcopy")
            .arg("--strip-debug")
            .arg(&env.rprof)
            .arg(&bin),
    )?;
    writeln!(md, "## 7. Node agent\n")?;
    writeln!(
        md,
        "`rprof-bpf agent` at 100 Hz with {} spin processes keeping every CPU busy, {secs} s of steady state after a 5 s warm-up, `/metrics` scraped every 15 s, one 10 s pull; push: every 15 s (default window) to a local receiver. Share: agent CPU over sampled CPU time (seconds x CPUs). Other processes on the machine are profiled too: \"processes seen\" counts them.\n",
        env.ncpu
    )?;
    writeln!(md, "Unwinding: `.eh_frame` tables (the default) or frame pointers (`--unwind fp`). Churn: a shell starting `/bin/true` in a loop for the whole run.\n")?;
    writeln!(md, "| mode | agent CPU | share | peak RSS (VmHWM) | RSS at the end (anonymous) | processes seen | symbolizer resets |\n| --- | --- | --- | --- | --- | --- | --- |")?;
    for (mode, unwind, push, churn) in [
        ("pull only, tables", "auto", false, false),
        ("pull only, frame pointers", "fp", false, false),
        ("push, tables", "auto", true, false),
        ("pull only, tables, churn", "auto", false, true),
    ] {
        eprintln!("bench: agent, {mode}");
        let r = run(&bin, spin, env.ncpu, secs, push, unwind, churn)?;
        writeln!(
            md,
            "| {} | {:.2} s | {:.3} % | {:.1} MiB | {:.1} MiB ({:.1}) | {:.0} | {:.0} |",
            if push {
                format!("{mode} ({} profiles)", r.pushes)
            } else {
                mode.to_owned()
            },
            r.cpu,
            100.0 * r.cpu / (secs as f64 * env.ncpu as f64),
            r.hwm_mib,
            r.rss_mib,
            r.anon_mib,
            r.seen,
            r.resets,
        )?;
    }
    writeln!(md)?;
    Ok(())
}

fn run(
    bin: &Path,
    spin: &Path,
    ncpu: usize,
    secs: u64,
    push: bool,
    unwind: &str,
    churn: bool,
) -> Result<Run> {
    let load = Load::start(spin, ncpu)?;
    let (receiver, pushes) = receiver()?;
    let mut cmd = Command::new(bin);
    cmd.args(["agent", "--listen", "127.0.0.1:0", "--unwind", unwind]);
    if push {
        cmd.arg("--push-url").arg(format!("http://{receiver}"));
    }
    let agent = Agent::start(cmd)?;
    let mut churner = if churn {
        Some(
            Command::new("sh")
                .args(["-c", "while :; do /bin/true; done"])
                .spawn()
                .context("starting the churn")?,
        )
    } else {
        None
    };
    std::thread::sleep(Duration::from_secs(5));
    let cpu0 = cpu_seconds(agent.pid())?;
    let t0 = Instant::now();
    let mut next_scrape = Duration::ZERO;
    let mut pull = None;
    while t0.elapsed() < Duration::from_secs(secs) {
        if t0.elapsed() >= next_scrape {
            get(agent.port, "/metrics")?;
            next_scrape += Duration::from_secs(15);
        }
        if pull.is_none() && t0.elapsed() >= Duration::from_secs(30.min(secs / 3)) {
            let (port, pid) = (agent.port, load.0[0].id());
            pull = Some(std::thread::spawn(move || {
                get(port, &format!("/debug/pprof/profile?pid={pid}&seconds=10"))
            }));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let cpu = cpu_seconds(agent.pid())? - cpu0;
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid()))?;
    let kib = |k: &str| -> f64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(f64::NAN)
            / 1024.0
    };
    let metrics = String::from_utf8_lossy(&get(agent.port, "/metrics")?).into_owned();
    let metric = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(f64::NAN)
    };
    if let Some(p) = pull {
        let body = p
            .join()
            .map_err(|_| anyhow::anyhow!("the pull panicked"))??;
        if body.is_empty() {
            bail!("the 10 s pull returned nothing");
        }
    }
    let r = Run {
        cpu,
        hwm_mib: kib("VmHWM:"),
        rss_mib: kib("VmRSS:"),
        anon_mib: kib("RssAnon:"),
        seen: metric("rprof_agent_processes_seen_total"),
        resets: metric("rprof_agent_symbolizer_resets_total"),
        pushes: pushes.load(Ordering::Relaxed),
    };
    if let Some(c) = &mut churner {
        let _ = c.kill();
        let _ = c.wait();
    }
    agent.stop()?;
    drop(load);
    Ok(r)
}

/// The agent, SIGKILLed on drop if still running.
struct Agent {
    child: Child,
    port: u16,
}

impl Agent {
    /// Starts it and waits for the line that says where it listens.
    fn start(mut cmd: Command) -> Result<Agent> {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the agent")?;
        let stderr = child.stderr.take().context("agent stderr")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
                if let Some(rest) = line.split("serving http://127.0.0.1:").nth(1) {
                    let port = rest.split('/').next().and_then(|p| p.parse::<u16>().ok());
                    let _ = tx.send(port);
                }
            }
        });
        let mut agent = Agent { child, port: 0 };
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Some(port)) => agent.port = port,
            _ => bail!("the agent did not start"),
        }
        Ok(agent)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM and wait: a clean stop.
    fn stop(mut self) -> Result<()> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let st = self.child.wait()?;
        if !st.success() {
            bail!("the agent exited with {st}");
        }
        Ok(())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Pyroscope stand-in that accepts every `POST` and counts them.
fn receiver() -> Result<(String, Arc<AtomicU64>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?.to_string();
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            if answer(conn).is_ok() {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    Ok((addr, count))
}

/// Reads one request with its body and answers 200.
fn answer(mut conn: TcpStream) -> Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut r = BufReader::new(conn.try_clone()?);
    let mut len = 0usize;
    loop {
        let mut l = String::new();
        if r.read_line(&mut l)? == 0 {
            bail!("closed");
        }
        let l = l.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse()?;
            }
        }
    }
    std::io::copy(&mut r.by_ref().take(len as u64), &mut std::io::sink())?;
    conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
    Ok(())
}

/// `GET path` on the agent; the body.
pub(super) fn get(port: u16, path: &str) -> Result<Vec<u8>> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no HTTP headers")?;
    if !raw.starts_with(b"HTTP/1.1 200") {
        bail!("GET {path}: {}", String::from_utf8_lossy(&raw[..split]));
    }
    Ok(raw[split + 4..].to_vec())
}

/// User + system CPU seconds of a process.
pub(super) fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("/proc/PID/stat")?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 =
        f.get(11).context("utime")?.parse::<f64>()? + f.get(12).context("stime")?.parse::<f64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}
