//! Case 8: the browser UI (`report --http`) on a large system-wide profile:
//! a synthetic one of a million samples (`profiler/examples/
//! synthetic_profile.rs`: 300 processes, 2,400 threads, 8 to 48 frames, a
//! tenth of the samples on stacks seen nowhere else). Each step is what
//! the page asks the server for when a person does something; we time the
//! answer (wall, and the server's CPU) and weigh it. Then the browser side:
//! headless Chromium loading the landing page and screenshotting it, the
//! whole run timed, for this profile and for a small one.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result};

use super::agent::{cpu_seconds, get};
use super::{sh, Env};

/// Samples in the synthetic profile.
const SAMPLES: usize = 1_000_000;

struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `rprof-bpf report --http 127.0.0.1:0 FILE`; returns it when it
/// prints its URL (after loading and checking the file).
fn start(env: &Env, file: &Path) -> Result<Server> {
    let mut child = Command::new(&env.rprof)
        .args(["report", "--http", "127.0.0.1:0"])
        .arg(file)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting rprof-bpf report --http")?;
    let out = child.stdout.take().context("stdout")?;
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line)?;
    let port = line
        .split("http://127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("no URL in {line:?}"))?;
    Ok(Server { child, port })
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Wall seconds of a Chromium run that loads `url` and screenshots it
/// (`--virtual-time-budget` lets the page's requests finish first).
fn chromium(env: &Env, url: &str) -> Result<f64> {
    let profile = env.out.join("chromium-profile");
    let _ = std::fs::remove_dir_all(&profile);
    let t = Instant::now();
    let out = Command::new("/usr/bin/chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--window-size=1400,1000",
            "--virtual-time-budget=60000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", env.out.join("ui.png").display()))
        .arg(url)
        .output()
        .context("running chromium")?;
    anyhow::ensure!(out.status.success(), "chromium failed");
    Ok(t.elapsed().as_secs_f64())
}

pub(super) fn ui(env: &Env, md: &mut String) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    sh(Command::new(&cargo)
        .args([
            "build",
            "--release",
            "-p",
            "rprof-bpf",
            "--example",
            "synthetic_profile",
        ])
        .current_dir(&env.root))?;
    let file = env.out.join("ui-1m.pb.gz");
    sh(
        Command::new(env.root.join("target/release/examples/synthetic_profile"))
            .arg(&file)
            .arg(SAMPLES.to_string()),
    )?;
    let size = std::fs::metadata(&file)?.len();

    let t = Instant::now();
    let server = start(env, &file)?;
    let startup = t.elapsed().as_secs_f64();
    let pid = server.child.id();
    let rss_loaded = rss_mib(pid);
    let steps: &[(&str, &str)] = &[
        ("open the page: profile info", "api/meta"),
        (
            "open the page: top table (computes the view)",
            "api/top?snap=1",
        ),
        (
            "open the page: flame graph (builds the call tree)",
            "api/flame?snap=1&w=1378",
        ),
        ("flame graph again (cached)", "api/flame?snap=1&w=1378"),
        ("zoom into a frame", "api/flame?snap=1&w=1378&z=ZOOM"),
        ("search", "api/flame?snap=1&w=1378&search=pkg3%5C.Func"),
        ("sort the top table by cum", "api/top?snap=1&sort=cum"),
        (
            "switch the sample type: top table",
            "api/top?snap=1&si=samples",
        ),
        (
            "switch the sample type: flame graph",
            "api/flame?snap=1&si=samples&w=1378",
        ),
        ("focus on a function", "api/top?snap=1&focus=Func1%24"),
        (
            "tag filter: 10 of 300 processes",
            "api/top?snap=1&tf=pid%3D1000:1009",
        ),
        (
            "callers/callees of a function",
            "api/peek?snap=1&fn=svc1/pkg1.Func1&w=1378",
        ),
    ];
    let mut rows = String::new();
    let mut zoom = String::new();
    for (what, path) in steps {
        let path = path.replace("ZOOM", &zoom);
        let cpu0 = cpu_seconds(pid)?;
        let t = Instant::now();
        let body = get(server.port, &format!("/{path}"))?;
        if zoom.is_empty() && path.starts_with("api/flame") {
            // Two levels down the widest path: names come in preorder.
            let text = String::from_utf8_lossy(&body);
            let names: Vec<&str> = text
                .split("\"names\":[\"")
                .nth(1)
                .and_then(|r| r.split("\"]").next())
                .map(|r| r.split("\",\"").collect())
                .unwrap_or_default();
            zoom = names
                .iter()
                .skip(1)
                .take(2)
                .copied()
                .collect::<Vec<_>>()
                .join("&z=");
        }
        let wall = t.elapsed().as_secs_f64();
        let cpu = cpu_seconds(pid)? - cpu0;
        writeln!(
            rows,
            "| {what} | `{path}` | {:.0} ms | {:.0} ms | {:.1} KiB |",
            wall * 1e3,
            cpu * 1e3,
            body.len() as f64 / 1024.0
        )?;
    }
    let rss_end = rss_mib(pid);
    let big = chromium(env, &format!("http://127.0.0.1:{}/", server.port))?;
    drop(server);
    let small_file = env.root.join("tests/fixtures/report/go-cpu.pb.gz");
    let small = start(env, &small_file)?;
    let small_secs = chromium(env, &format!("http://127.0.0.1:{}/", small.port))?;
    drop(small);

    writeln!(md, "## 8. Browser UI on a 1M-sample profile\n")?;
    writeln!(
        md,
        "`rprof-bpf report --http` on a synthetic system-wide CPU profile of {SAMPLES} samples \
         (300 processes, 2,400 threads, stacks of 8 to 48 frames over 20,000 functions, a tenth \
         of the samples on stacks seen nowhere else; {:.1} MB gzipped; written by \
         `profiler/examples/synthetic_profile.rs`). Loading and checking it before serving: \
         **{startup:.1} s**, {rss_loaded:.0} MiB resident ({rss_end:.0} MiB after the steps \
         below, with their views cached). Each step is the request the page makes; the answer \
         is what the browser gets (only the frames at least half a pixel wide at 1378 px).\n",
        size as f64 / 1e6
    )?;
    writeln!(md, "| step | request | wall | server CPU | answer |")?;
    writeln!(md, "| --- | --- | --- | --- | --- |")?;
    md.push_str(&rows);
    writeln!(
        md,
        "\nBrowser: headless Chromium started, loaded the landing page (top table and flame \
         graph) and screenshotted it in **{big:.1} s** for this profile and {small_secs:.1} s \
         for a 244-sample one (`tests/fixtures/report/go-cpu.pb.gz`), start-up included.\n"
    )?;
    Ok(())
}
