//! Off-CPU and wall profiles of a fixture whose waits are known
//! (`tests/fixtures/c/offcpu.c`): a "napper" thread computing 20 ms then
//! sleeping 30 ms in a loop, a "waiter" blocked in `read()` for the whole
//! capture. The napper logs every phase (CLOCK_REALTIME), so the truth for
//! the profile's exact time range is added up from the log.
//!
//! Tolerances come from the sampling: on-CPU time is `n` samples of one
//! period P each, and a wait shorter than P is kept with probability d/P
//! and weight P, whose variance is at most P*d, so the summed short waits
//! (k kept records of weight P, about k*P of time) have a variance of at
//! most k*P^2. A share is held to 4.5 sigma of that, plus
//! [`SYSTEMATIC_POINTS`] for what no sampling explains.

mod harness;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use harness::*;
use rprof_bpf::pprof::Profile;

const SECONDS: u64 = 5;
/// What the fixture's clock counts as a phase and the profile does not
/// see as one: the time on CPU around each wait (the syscall's entry and
/// exit, the clock reads) and preemptions between a wait and the fixture's
/// timestamps, which are run-queue waits under other frames; and the
/// profile's time range, read a few ms apart from the capture's own.
/// Measured: 0.3 to 1.5 points on a busy machine (load 8 on 2 CPUs).
const SYSTEMATIC_POINTS: f64 = 2.0;
/// The sampling period at the default 100 Hz.
const PERIOD_NS: f64 = 10_000_000.0;

fn build_fixture(dir: &Path) -> PathBuf {
    let exe = dir.join("offcpu");
    build_c(
        "offcpu.c",
        &exe,
        &["-O2", "-g", "-fno-omit-frame-pointer", "-pthread"],
    );
    exe
}

/// The fixture, writing its phase log to `truth`.
fn start(dir: &Path) -> (Target, PathBuf) {
    let exe = build_fixture(dir);
    let truth = dir.join("truth.txt");
    let t = Target::spawn(&exe, &[truth.to_str().unwrap()]);
    (t, truth)
}

/// ns of compute and sleep phases that overlap `[from, to)` (unix ns).
fn truth_in(path: &Path, from: i64, to: i64) -> (f64, f64) {
    let text = std::fs::read_to_string(path).unwrap();
    let (mut c, mut s) = (0.0, 0.0);
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Ok(a), Ok(b)) = (f[1].parse::<i64>(), f[2].parse::<i64>()) else {
            continue;
        };
        let overlap = (b.min(to) - a.max(from)).max(0) as f64;
        match f[0] {
            "C" => c += overlap,
            _ => s += overlap,
        }
    }
    (c, s)
}

/// One sample's facts.
struct Row {
    thread: String,
    state: String,
    names: Vec<String>,
    samples: i64,
    ns: i64,
}

fn rows(p: &Profile) -> Vec<Row> {
    p.sample
        .iter()
        .map(|s| Row {
            thread: str_label(p, s, "thread").unwrap_or("").to_owned(),
            state: str_label(p, s, "thread_state").unwrap_or("").to_owned(),
            names: stack_names(p, s),
            samples: s.value[0],
            ns: s.value[1],
        })
        .collect()
}

/// Summed ns, and the records of weight exactly P (the sampled short
/// waits), of the rows that `pick` selects.
fn sum(rows: &[Row], pick: impl Fn(&Row) -> bool) -> (f64, i64) {
    let mut ns = 0.0;
    let mut short = 0;
    for r in rows.iter().filter(|r| pick(r)) {
        ns += r.ns as f64;
        if r.state != "on_cpu" && r.ns == PERIOD_NS as i64 * r.samples {
            short += r.samples;
        }
    }
    (ns, short)
}

fn has(r: &Row, f: &str) -> bool {
    r.names.iter().any(|n| n == f)
}

/// In the napper's sleep: its kernel stack is in clock_nanosleep (the
/// user stack says nap_sleep too, unless the process's unwind tables are
/// not loaded yet: libc's wrapper has no frame pointer).
fn sleeping(r: &Row) -> bool {
    has(r, "__x64_sys_clock_nanosleep")
}

/// The bound, in points of the capture, for an estimate made of `n`
/// on-CPU samples and `k` sampled short waits.
fn bound_points(n: i64, k: i64, duration: f64) -> f64 {
    let sigma = ((n + k) as f64).sqrt() * PERIOD_NS;
    100.0 * 4.5 * sigma / duration + SYSTEMATIC_POINTS
}

fn record(pid: u32, event: &str, out: &Path) -> Profile {
    let o = record_pid(pid, &SECONDS.to_string(), out, &["--event", event]);
    assert_ok(&o);
    load(out)
}

#[test]
fn wall_profile_splits_the_napper_and_counts_the_waiter() {
    let _l = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let (t, truth) = start(dir.path());
    let out = dir.path().join("wall.pb.gz");
    let p = record(t.pid(), "wall", &out);
    assert_eq!(p.str(p.sample_type[1].r#type), "time");
    assert_eq!(p.str(p.sample_type[1].unit), "nanoseconds");
    let period = p.period_type.as_ref().unwrap();
    assert_eq!(
        (p.str(period.r#type), p.str(period.unit)),
        ("wallclock", "nanoseconds")
    );
    let (from, dur) = (p.time_nanos, p.duration_nanos as f64);
    let (c_true, s_true) = truth_in(&truth, from, from + p.duration_nanos);
    let rows = rows(&p);
    let napper = |r: &Row| r.thread == "napper";
    let (nap_total, k_all) = sum(&rows, napper);
    let (compute, k_c) = sum(&rows, |r| napper(r) && has(r, "nap_compute"));
    // The whole sleep phase: the wait, and the run-queue wait after the
    // wakeup if the thread is preempted before its timestamp.
    let (sleep, k_s) = sum(&rows, |r| napper(r) && r.state != "on_cpu" && sleeping(r));
    let on: i64 = rows
        .iter()
        .filter(|r| napper(r) && r.state == "on_cpu")
        .map(|r| r.samples)
        .sum();
    let states: Vec<&str> = rows
        .iter()
        .filter(|r| napper(r))
        .map(|r| r.state.as_str())
        .collect();
    assert!(states.contains(&"on_cpu") && states.contains(&"off_cpu"));
    let pct = |x: f64| 100.0 * x / dur;
    let cases = [
        ("napper total / capture", pct(nap_total), 100.0, on, k_all),
        ("compute / capture", pct(compute), pct(c_true), on, k_c),
        ("sleep / capture", pct(sleep), pct(s_true), 0, k_s),
        (
            "waits / capture",
            pct(nap_total - on as f64 * PERIOD_NS),
            pct(s_true) + pct(c_true) - pct(on as f64 * PERIOD_NS),
            on,
            k_all,
        ),
    ];
    for (what, ours, want, n, k) in cases {
        let tol = bound_points(n, k, dur);
        eprintln!(
            "wall: {what}: {ours:.2}% against {want:.2}% (bound {tol:.2} points: {n} on-CPU samples, {k} sampled waits)"
        );
        assert!(
            (ours - want).abs() <= tol,
            "{what}: {ours:.2}% against {want:.2}%, bound {tol:.2}"
        );
    }
    // The bar: 40/60 within 5 points, against the construction.
    assert!(
        (pct(compute) / pct(nap_total) * 100.0 - 40.0).abs() <= 5.0 + bound_points(on, k_c, dur)
    );
    // The waiter never ran: the sweep at the end counts it all.
    let (waiter, _) = sum(&rows, |r| r.thread == "waiter");
    eprintln!("wall: waiter {:.2}% of the capture", pct(waiter));
    assert!(
        (pct(waiter) - 100.0).abs() <= 1.0,
        "waiter {:.2}%",
        pct(waiter)
    );
    assert!(rows.iter().any(|r| r.thread == "waiter"
        && has(r, "waiter")
        && r.names.iter().any(|n| n.contains("read"))));
}

#[test]
fn off_cpu_profile_has_the_sleep_and_no_compute() {
    let _l = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let (t, truth) = start(dir.path());
    let out = dir.path().join("off.pb.gz");
    let p = record(t.pid(), "off-cpu", &out);
    assert_eq!(p.str(p.sample_type[1].r#type), "off_cpu");
    let (from, dur) = (p.time_nanos, p.duration_nanos as f64);
    let (_, s_true) = truth_in(&truth, from, from + p.duration_nanos);
    let rows = rows(&p);
    assert!(rows.iter().all(|r| r.state != "on_cpu"));
    let napper = |r: &Row| r.thread == "napper";
    // The sleep phase: the wait itself, and a preemption right after it.
    let (sleep, k) = sum(&rows, |r| napper(r) && sleeping(r));
    let (voluntary_compute, _) = sum(&rows, |r| {
        napper(r) && r.state == "off_cpu" && has(r, "nap_compute")
    });
    let (preempted, kp) = sum(&rows, |r| napper(r) && r.state == "runqueue");
    let pct = |x: f64| 100.0 * x / dur;
    let tol = bound_points(0, k, dur);
    eprintln!(
        "off-cpu: sleep {:.2}% against {:.2}% (bound {tol:.2}); compute asleep {:.2}%; preempted {:.2}% ({kp} sampled)",
        pct(sleep),
        pct(s_true),
        pct(voluntary_compute),
        pct(preempted)
    );
    assert!((pct(sleep) - pct(s_true)).abs() <= tol);
    assert!(
        (pct(s_true) - 60.0).abs() < 10.0,
        "the fixture slept {:.1}%",
        pct(s_true)
    );
    assert_eq!(voluntary_compute, 0.0, "nap_compute never sleeps");
    // The user stack is the blocking call's, unwound at its syscall exit.
    assert!(rows.iter().any(|r| napper(r)
        && r.names
            .windows(2)
            .any(|w| w[0] == "nap_sleep" && w[1] == "napper")));
}

/// offcputime's stacks, by (thread, key), in ns: its default output is
/// one block per stack (kernel frames, user frames, "-  comm (tid)", then
/// microseconds).
fn offcputime_totals(text: &str) -> HashMap<(String, String), f64> {
    let mut out = HashMap::new();
    let mut frames: Vec<String> = Vec::new();
    let mut thread = None;
    for line in text.lines().map(str::trim) {
        if line.is_empty() {
            frames.clear();
            thread = None;
        } else if let Some(rest) = line.strip_prefix("- ") {
            let name = rest.trim().rsplit_once(" (").map_or(rest, |(n, _)| n);
            thread = Some(name.trim().to_owned());
        } else if let (Some(t), Ok(us)) = (&thread, line.parse::<f64>()) {
            *out.entry((t.clone(), key(&frames))).or_default() += us * 1000.0;
            frames.clear();
            thread = None;
        } else {
            frames.push(line.to_owned());
        }
    }
    out
}

/// What two tools' kernel stacks of one wait share: the syscall it
/// blocked in, else "preempted" (their innermost frames differ: offcputime
/// walks at the switch-out, we read the task's saved stack).
fn key(frames: &[String]) -> String {
    frames
        .iter()
        .find_map(|f| f.strip_prefix("__x64_sys_").map(str::to_owned))
        .unwrap_or_else(|| "preempted".into())
}

#[test]
fn per_stack_totals_agree_with_offcputime() {
    let _l = capture_lock();
    let tool = harness::require(
        PathBuf::from("/usr/sbin/offcputime"),
        "offcputime (libbpf-tools)",
    );
    let dir = tempfile::tempdir().unwrap();
    let (t, _) = start(dir.path());
    let out = dir.path().join("off.pb.gz");
    let peer = Command::new(tool)
        .args(["-p", &t.pid().to_string(), &SECONDS.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let p = record(t.pid(), "off-cpu", &out);
    let theirs =
        offcputime_totals(&String::from_utf8(peer.wait_with_output().unwrap().stdout).unwrap());
    let mut ours: HashMap<(String, String), (f64, i64)> = HashMap::new();
    for r in rows(&p) {
        let e = ours.entry((r.thread.clone(), key(&r.names))).or_default();
        e.0 += r.ns as f64;
        if r.ns == PERIOD_NS as i64 * r.samples {
            e.1 += r.samples;
        }
    }
    // Threads that woke: offcputime only counts a wait that ends.
    let napper_total: f64 = theirs
        .iter()
        .filter(|((t, _), _)| t == "napper")
        .map(|(_, v)| v)
        .sum();
    assert!(napper_total > 1e9, "offcputime saw the napper: {theirs:?}");
    let mut compared = 0;
    for ((thread, k), &their) in &theirs {
        if thread != "napper" || their < 0.1 * napper_total {
            continue;
        }
        let (our, short) = ours
            .get(&(thread.clone(), k.clone()))
            .copied()
            .unwrap_or_default();
        // 5%, or the sampling noise of our short waits where larger.
        let tol = (0.05 * their).max(4.5 * (short as f64).sqrt() * PERIOD_NS);
        eprintln!(
            "offcputime: {thread} {k}: ours {:.1} ms, offcputime {:.1} ms ({:+.2}%, bound {:.1} ms)",
            our / 1e6,
            their / 1e6,
            100.0 * (our - their) / their,
            tol / 1e6
        );
        assert!(
            (our - their).abs() <= tol,
            "{thread} {k}: {our} against {their}"
        );
        compared += 1;
    }
    assert!(compared >= 1);
    // The thread blocked all along: ours has it, offcputime cannot.
    let waiter = ours
        .iter()
        .filter(|((t, _), _)| t == "waiter")
        .map(|(_, v)| v.0)
        .sum::<f64>();
    eprintln!(
        "offcputime: waiter ours {:.0} ms, offcputime {:?}",
        waiter / 1e6,
        theirs.iter().find(|((t, _), _)| t == "waiter")
    );
    assert!(waiter > 0.9 * p.duration_nanos as f64);
}

#[test]
fn agent_serves_off_cpu_and_wall_from_its_capture() {
    let _l = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let (t, truth) = start(dir.path());
    let port = 17000 + (std::process::id() % 1000) as u16;
    let listen = format!("127.0.0.1:{port}");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _agent = Kill(
        rprof()
            .args(["agent", "--listen", &listen, "--off-cpu", "--retain", "60s"])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let get = |q: &str| -> (u16, Vec<u8>) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&listen).unwrap();
        write!(
            s,
            "GET /debug/pprof/profile?{q} HTTP/1.0\r\nHost: x\r\n\r\n"
        )
        .unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).unwrap();
        let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let status = String::from_utf8_lossy(&buf[9..12]).parse().unwrap();
        (status, buf[head_end + 4..].to_vec())
    };
    // Up when it accepts connections.
    let mut up = false;
    for _ in 0..100 {
        if std::net::TcpStream::connect(&listen).is_ok() {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(up, "the agent did not start");
    let (code, _) = get(&format!("pid={}&seconds=1&event=sideways", t.pid()));
    assert_eq!(code, 400);
    // A first profile while the agent meets the fixture and loads its
    // unwind tables (behind every other process's on a busy machine).
    let (code, _) = get(&format!("pid={}&seconds=3", t.pid()));
    assert_eq!(code, 200);
    let (code, body) = get(&format!("pid={}&seconds={SECONDS}&event=wall", t.pid()));
    assert_eq!(code, 200);
    let path = dir.path().join("agent-wall.pb.gz");
    std::fs::write(&path, body).unwrap();
    let p = load(&path);
    assert_eq!(p.str(p.sample_type[1].r#type), "time");
    let (from, dur) = (p.time_nanos, p.duration_nanos as f64);
    let (_, s_true) = truth_in(&truth, from, from + p.duration_nanos);
    let rows = rows(&p);
    let (sleep, k) = sum(&rows, |r| {
        r.thread == "napper" && r.state != "on_cpu" && sleeping(r)
    });
    let (waiter, _) = sum(&rows, |r| r.thread == "waiter");
    let pct = |x: f64| 100.0 * x / dur;
    // Sweeps run every second, at the capture loop's 200 ms ticks (which a
    // busy machine delays): a wait still going at the end counts up to the
    // last one, up to 1.5 s short.
    let late = 100.0 * 1.5e9 / dur;
    let tol = bound_points(0, k, dur) + late;
    eprintln!(
        "agent: napper sleep {:.2}% against {:.2}% (bound {tol:.2}); waiter {:.2}%",
        pct(sleep),
        pct(s_true),
        pct(waiter)
    );
    assert!((pct(sleep) - pct(s_true)).abs() <= tol);
    assert!(pct(waiter) >= 100.0 - late - 1.0 && pct(waiter) <= 101.0);
    let states: std::collections::HashSet<&str> = rows.iter().map(|r| r.state.as_str()).collect();
    assert!(
        states.contains("on_cpu") && states.contains("off_cpu"),
        "{states:?}"
    );
    // The CPU profile of the same capture has no waits.
    let (code, body) = get(&format!("pid={}&seconds=1", t.pid()));
    assert_eq!(code, 200);
    std::fs::write(&path, body).unwrap();
    let p = load(&path);
    assert_eq!(p.str(p.sample_type[1].r#type), "cpu");
    assert!(p
        .sample
        .iter()
        .all(|s| str_label(&p, s, "thread_state").is_none()));
}
