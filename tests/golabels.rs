//! Go pprof labels in our CPU profiles: the `golabels` fixture runs two
//! functions under two label sets (`pprof.Do`) and one without, in builds
//! of Go 1.27 and 1.19, stripped and not (and a PIE), while it writes its
//! own runtime/pprof CPU profile of the same run. Our profile of it must
//! label every sample of a labelled function, and split the work between
//! the label sets as Go's own profile does. Through the agent,
//! `go tool pprof -tagfocus` must return only that label's work; a binary
//! of a Go version we know nothing of gets no labels (and one warning).

mod harness;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use harness::*;
use rprof_bpf::pprof::{Profile, Sample};

/// Sampling rate for both profilers (Go's own is capped at one sample per
/// kernel tick per thread, 250 Hz here; ours is not).
const HZ: &str = "1000";

/// Goroutines running the fixture's loop: each one adds a thread's worth
/// of Go's tick-capped samples.
const WORKERS: &str = "2";

/// How many standard deviations a share may differ from Go's. About 18
/// comparisons a run (3 shares in each of 5 builds, and pooled); a normal
/// deviate passes 4.5 sigma with probability 6.8e-6, so a sound profiler
/// fails a run by chance about once in 8,000 runs. At a run's sample
/// counts (5,000-14,000 of ours, 1,600-3,900 of Go's a build) that is
/// 3.3-6.4 points a build, 1.5-2.7 pooled.
const K: f64 = 4.5;

/// Variance of Go's shares in units of the binomial variance of its
/// sample count: tests/gosym.rs measured 0.82-0.95 binomial sigmas over 77
/// of Go's profiles of a loop like this fixture's (tick-capped sampling is
/// no noisier than binomial), so 1 is a safe upper value.
const GO_VARIANCE: f64 = 1.0;

/// Fewest samples of the fixture's loop a profile must hold for its
/// comparisons to mean anything (the bounds widen with fewer; they stay
/// valid).
const MIN_OURS: i64 = 500;
const MIN_GO: i64 = 100;

/// What a sample of the fixture's loop was doing, by its labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// `work=alpha`, alone.
    Alpha,
    /// `work=beta, tier=gold`.
    Beta,
    /// No label.
    None,
    /// Anything else: garbage.
    Other,
}

const CLASSES: [Class; 3] = [Class::Alpha, Class::Beta, Class::None];

/// The label keys a sample carries beyond our own process labels.
fn go_labels<'a>(p: &'a Profile, s: &Sample) -> Vec<(&'a str, &'a str)> {
    // The recorder's process labels, the node labels the agent adds, the
    // off-CPU state and the goroutine id (`--go-goid`).
    const OURS: [&str; 11] = [
        "goid",
        "thread_state",
        "pid",
        "tid",
        "thread",
        "process",
        "exe",
        "container_id",
        "namespace",
        "pod",
        "container",
    ];
    let mut v: Vec<(&str, &str)> = s
        .label
        .iter()
        .filter(|l| !OURS.contains(&p.str(l.key)))
        .map(|l| (p.str(l.key), p.str(l.str)))
        .collect();
    v.sort();
    v
}

fn class(p: &Profile, s: &Sample) -> Class {
    match go_labels(p, s)[..] {
        [] => Class::None,
        [("work", "alpha")] => Class::Alpha,
        [("tier", "gold"), ("work", "beta")] => Class::Beta,
        _ => Class::Other,
    }
}

/// The class a sample's function says it must have, if it is in one of
/// the fixture's three work functions.
fn expected(names: &[String]) -> Option<Class> {
    let has = |f: &str| names.iter().any(|n| n == f);
    if has("main.alpha") {
        Some(Class::Alpha)
    } else if has("main.beta") {
        Some(Class::Beta)
    } else if has("main.plain") {
        Some(Class::None)
    } else {
        None
    }
}

/// Samples of the fixture's loop (`main.worker` and its closures on the
/// stack) by class, and how many of them sit in a work function with the
/// wrong labels.
#[derive(Debug, Default)]
struct Split {
    total: i64,
    by_class: [i64; 3],
    other: i64,
    in_work: i64,
    wrong: Vec<String>,
}

impl Split {
    fn of(p: &Profile) -> Split {
        let mut sp = Split::default();
        for s in &p.sample {
            let names = stack_names(p, s);
            if !names.iter().any(|n| n.starts_with("main.worker")) {
                continue;
            }
            let n = s.value[0];
            let c = class(p, s);
            sp.total += n;
            match CLASSES.iter().position(|&x| x == c) {
                Some(i) => sp.by_class[i] += n,
                None => sp.other += n,
            }
            if let Some(want) = expected(&names) {
                sp.in_work += n;
                if c != want && sp.wrong.len() < 5 {
                    sp.wrong.push(format!(
                        "{n} samples in {want:?} work labelled {:?}: {}",
                        go_labels(p, s),
                        names.join(" < ")
                    ));
                }
            }
        }
        sp
    }

    fn share(&self, i: usize) -> f64 {
        self.by_class[i] as f64 / self.total.max(1) as f64
    }
}

struct Build {
    name: &'static str,
    go: PathBuf,
    args: &'static [&'static str],
}

fn builds() -> Vec<Build> {
    let (new, old) = (go127(), go119());
    let b = |name, go: &PathBuf, args| Build {
        name,
        go: go.clone(),
        args,
    };
    vec![
        b("go1.27", &new, &[]),
        b("go1.27-stripped", &new, &["-ldflags=-s -w"]),
        b(
            "go1.27-pie-stripped",
            &new,
            &["-buildmode=pie", "-ldflags=-s -w"],
        ),
        b("go1.19", &old, &[]),
        b("go1.19-stripped", &old, &["-ldflags=-s -w"]),
    ]
}

/// Runs the fixture (writing Go's own profile) and records it with ours:
/// (ours, Go's, our stderr).
fn profile_both(exe: &Path, dir: &Path, name: &str) -> (Profile, Profile, String) {
    let go_prof = dir.join(format!("{name}-go.pb.gz"));
    let mut cmd = Command::new(exe);
    cmd.args(["-seconds", "8", "-workers", WORKERS, "-ready"]);
    cmd.args(["-cpurate", HZ, "-cpuprofile"]).arg(&go_prof);
    let mut t = Target::start(cmd);
    let ours = dir.join(format!("{name}.pb.gz"));
    // Go's own profile sees only user code: compare like with like.
    let o = record_pid(t.pid(), "7", &ours, &["-F", HZ, "--user-only"]);
    assert_ok(&o);
    t.wait();
    (
        load(&ours),
        load(&go_prof),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn labels_on_every_sample_and_shares_as_go() {
    let _lock = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let mut report = String::new();
    let mut failures = Vec::new();
    // Per class, over the builds: (sum of diff/sigma^2, sum of 1/sigma^2).
    let mut pooled = [(0.0f64, 0.0f64); 3];
    for b in builds() {
        let exe = dir.path().join(b.name);
        build_go(&b.go, "golabels", &exe, b.args);
        let (ours, go, _) = profile_both(&exe, dir.path(), b.name);
        let (o, g) = (Split::of(&ours), Split::of(&go));
        report += &format!(
            "{:20} ours {} samples ({} in work functions), Go {} ({})\n",
            b.name, o.total, o.in_work, g.total, g.in_work
        );
        assert!(
            o.total >= MIN_OURS && g.total >= MIN_GO,
            "{}: too few samples of the loop (ours {}, Go {})",
            b.name,
            o.total,
            g.total
        );
        // Every sample in a labelled function carries exactly its labels;
        // none in the unlabelled one has any; nothing else appears.
        if !o.wrong.is_empty() || o.other > 0 {
            failures.push(format!(
                "{}: mislabelled samples ({} with unknown labels):\n  {}",
                b.name,
                o.other,
                o.wrong.join("\n  ")
            ));
        }
        for (i, c) in CLASSES.iter().enumerate() {
            let (so, sg) = (o.share(i), g.share(i));
            let var = |s: f64, n: i64| s * (1.0 - s) / n as f64;
            let sigma = (var(sg, o.total) + GO_VARIANCE * var(sg, g.total)).sqrt();
            let diff = so - sg;
            let line = format!(
                "{:20} {:6} ours {:6.2}%  Go {:6.2}%  diff {:+5.2} points  sigma {:.2}  bound {:.2}",
                b.name,
                format!("{c:?}"),
                100.0 * so,
                100.0 * sg,
                100.0 * diff,
                100.0 * sigma,
                100.0 * K * sigma
            );
            report += &line;
            report.push('\n');
            pooled[i].0 += diff / sigma.powi(2);
            pooled[i].1 += sigma.powi(-2);
            if diff.abs() > K * sigma {
                failures.push(line);
            }
        }
    }
    // A bias shared by the builds shows in their inverse-variance weighted
    // mean difference, whose sigma is smaller than any one build's.
    for (c, (sum, w)) in CLASSES.iter().zip(pooled) {
        let (mean, sigma) = (sum / w, w.sqrt().recip());
        let line = format!(
            "{:20} {:6} pooled diff {:+5.2} points  sigma {:.2}  bound {:.2}",
            "all builds",
            format!("{c:?}"),
            100.0 * mean,
            100.0 * sigma,
            100.0 * K * sigma
        );
        report += &line;
        report.push('\n');
        if mean.abs() > K * sigma {
            failures.push(line);
        }
    }
    println!("{report}");
    assert!(failures.is_empty(), "{}\n{report}", failures.join("\n"));
}

/// The agent, serving on a free loopback port.
struct Agent {
    child: Child,
    port: u16,
}

impl Agent {
    fn start() -> Agent {
        let mut child = rprof()
            .args(["agent", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the agent");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("serving http://127.0.0.1:").nth(1) {
                    let _ = tx.send(rest.split('/').next().unwrap().parse::<u16>().unwrap());
                }
            }
        });
        let Ok(port) = rx.recv_timeout(Duration::from_secs(30)) else {
            let _ = child.kill();
            panic!("the agent did not start");
        };
        Agent { child, port }
    }

    /// The body of a GET.
    fn get(&self, path: &str) -> Vec<u8> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        let at = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&all[..at]).into_owned();
        assert!(head.starts_with("HTTP/1.1 200"), "{path}: {head}");
        all[at..].to_vec()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `go tool pprof -traces` output as one block per sample: (its labels as
/// `key:value`, its function names).
fn traces(out: &str) -> Vec<(Vec<String>, Vec<String>)> {
    let mut blocks = Vec::new();
    for block in out.split("-----------+-------------------------------------------------------") {
        let mut labels = Vec::new();
        let mut frames = Vec::new();
        for line in block.lines().map(str::trim) {
            // A label line is `key:  value`; a frame line `[VALUE]  function`.
            let label = line.split_once(": ").filter(|(k, _)| {
                !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            });
            match label {
                Some((k, v)) => labels.push(format!("{k}:{}", v.trim())),
                None => {
                    if let Some(f) = line.split_whitespace().last().filter(|f| f.contains('.')) {
                        frames.push(f.to_owned());
                    }
                }
            }
        }
        if !frames.is_empty() {
            blocks.push((labels, frames));
        }
    }
    blocks
}

#[test]
fn tagfocus_through_the_agent_keeps_only_that_label() {
    let go = go127();
    let _lock = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("golabels");
    build_go(&go, "golabels", &exe, &["-ldflags=-s -w"]);
    let t = Target::spawn(&exe, &["-seconds", "30", "-workers", "1", "-ready"]);
    let agent = Agent::start();
    // The agent registers the process at its first sample: give it a tick.
    std::thread::sleep(Duration::from_secs(1));
    let path = format!("/debug/pprof/profile?pid={}&seconds=3", t.pid());
    let raw = dir.path().join("agent.pb.gz");
    std::fs::write(&raw, agent.get(&path)).unwrap();
    let p = load(&raw);
    let sp = Split::of(&p);
    println!("agent profile: {sp:?}");
    assert!(sp.by_class[0] > 50, "no work=alpha samples: {sp:?}");
    assert!(sp.wrong.is_empty() && sp.other == 0, "{sp:?}");

    let url = format!("http://127.0.0.1:{}{path}", agent.port);
    for (focus, want, not) in [
        ("work=alpha", "main.alpha", ["main.beta", "main.plain"]),
        ("tier=gold", "main.beta", ["main.alpha", "main.plain"]),
    ] {
        let out = go_command(&go)
            .env("PPROF_TMPDIR", dir.path())
            .args([
                "tool",
                "pprof",
                "-traces",
                &format!("-tagfocus={focus}"),
                &url,
            ])
            .output()
            .expect("running go tool pprof");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let blocks = traces(&text);
        let with = blocks
            .iter()
            .filter(|(_, f)| f.iter().any(|n| n == want))
            .count();
        println!(
            "-tagfocus={focus}: {} traces, {with} in {want}",
            blocks.len()
        );
        // Others carry the label too, in the labelled goroutine's own code
        // around the work (pprof.Do's closure, a preemption): fine; what
        // must not be there is the other work.
        assert!(with >= 1, "-tagfocus={focus}: no {want} traces:\n{text}");
        for (labels, frames) in &blocks {
            let want_label = focus.replace('=', ":");
            assert!(
                labels.contains(&want_label),
                "-tagfocus={focus} kept a trace without it: {labels:?} {frames:?}"
            );
            assert!(
                !frames.iter().any(|f| not.contains(&f.as_str())),
                "-tagfocus={focus} kept other work: {frames:?}"
            );
        }
    }
}

/// Replaces every `from` in a file by `to` (same length).
fn patch(path: &Path, from: &[u8], to: &[u8]) -> usize {
    assert_eq!(from.len(), to.len());
    let mut data = std::fs::read(path).unwrap();
    let mut n = 0;
    let mut i = 0;
    while let Some(at) = data[i..].windows(from.len()).position(|w| w == from) {
        data[i + at..i + at + to.len()].copy_from_slice(to);
        i += at + to.len();
        n += 1;
    }
    std::fs::write(path, data).unwrap();
    n
}

#[test]
fn an_unknown_go_version_gets_no_labels_and_one_warning() {
    let go = go127();
    let _lock = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("golabels-go1.99");
    build_go(&go, "golabels", &exe, &["-ldflags=-s -w"]);
    // The same code, claiming a release outside the layout table: stripped,
    // so no DWARF says what its structures are either.
    let version = String::from_utf8(
        go_command(&go)
            .args(["env", "GOVERSION"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let version = version.trim();
    let fake = version.replacen("go1.27", "go1.99", 1);
    assert_ne!(version, fake, "{version}");
    assert!(patch(&exe, version.as_bytes(), fake.as_bytes()) > 0);
    let (ours, _go, stderr) = profile_both(&exe, dir.path(), "go1.99");
    let sp = Split::of(&ours);
    println!("{sp:?}\n{stderr}");
    assert!(sp.in_work >= MIN_OURS, "the loop was not profiled: {sp:?}");
    assert_eq!(
        sp.by_class[2], sp.total,
        "samples of an unknown release carry labels: {sp:?}"
    );
    let warnings = stderr.matches("carry no Go labels").count();
    assert_eq!(warnings, 1, "one warning for the binary:\n{stderr}");
    assert!(
        stderr.contains("go1.99"),
        "the warning names the version:\n{stderr}"
    );
}

#[test]
fn a_chain_the_procid_check_rejects_gives_no_labels_and_is_counted() {
    let go = go127();
    let _lock = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("golabels");
    build_go(&go, "golabels", &exe, &[]);
    let mut t = Target::spawn(&exe, &["-seconds", "4", "-workers", "1", "-ready"]);
    let out = dir.path().join("skewed.pb.gz");
    // m.procid read 8 bytes off: what it finds there is not the thread's
    // id, so the BPF program must trust nothing past it.
    let o = record_pid_command(t.pid(), "3", &out, &["-F", HZ, "--user-only"])
        .env("RPROF_BPF_TEST_GO_PROCID_SKEW", "8")
        .output()
        .unwrap();
    assert_ok(&o);
    t.wait();
    let p = load(&out);
    let sp = Split::of(&p);
    println!("{sp:?}");
    assert!(sp.in_work >= MIN_OURS, "the loop was not profiled: {sp:?}");
    assert_eq!(
        sp.by_class[2], sp.total,
        "labels through a rejected chain: {sp:?}"
    );
    let comment = p
        .comment
        .iter()
        .map(|&i| p.str(i))
        .find(|c| c.starts_with("go_labels:"))
        .unwrap_or_else(|| panic!("no go_labels comment: {:?}", p.comment));
    let mismatched: i64 = comment
        .split("procid_mismatch=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    println!("{comment}");
    assert!(
        mismatched >= sp.in_work,
        "every sample of the loop counted as a procid mismatch: {comment}"
    );
}

#[test]
fn off_cpu_waits_carry_the_labels_of_the_goroutine_that_waits() {
    let _lock = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let mut report = String::new();
    for (name, go, args) in [
        ("go1.27-stripped", go127(), &["-ldflags=-s -w"][..]),
        ("go1.19", go119(), &[][..]),
    ] {
        let exe = dir.path().join(name);
        build_go(&go, "golabels", &exe, args);
        let args = ["-seconds", "5", "-workers", "1", "-sleeper", "-ready"];
        let mut t = Target::spawn(&exe, &args);
        let out = dir.path().join(format!("{name}-off.pb.gz"));
        let o = record_pid(t.pid(), "3", &out, &["--event", "off-cpu", "--user-only"]);
        assert_ok(&o);
        t.wait();
        let p = load(&out);
        // ns waited in main.sleeper's nanosleep, labelled and not; and the
        // work functions' samples (run-queue waits), labelled as on CPU.
        let (mut sleep_ns, mut unlabelled_ns, mut wrong) = (0i64, 0i64, Vec::new());
        let mut scheduler_ns = 0i64;
        for s in &p.sample {
            let names = stack_names(&p, s);
            let labels = go_labels(&p, s);
            if names.iter().any(|n| n == "runtime.mcall") {
                // The thread left the goroutine for the scheduler (its
                // system call returned with no P free: exitsyscall0): it
                // runs g0, m.curg is nil, and no labels are right, even
                // though the frame walk continues into the goroutine's
                // frames below mcall.
                if !labels.is_empty() {
                    wrong.push(format!("scheduler with {labels:?} {names:?}"));
                }
                scheduler_ns += s.value[1];
            } else if names.iter().any(|n| n == "main.sleeper") {
                match labels[..] {
                    [("work", "sleep")] => sleep_ns += s.value[1],
                    [] => {
                        unlabelled_ns += s.value[1];
                        println!("{name}: unlabelled wait {:?} {names:?}", s.value);
                    }
                    _ => wrong.push(format!("{labels:?} {names:?}")),
                }
            } else if let Some(want) = expected(&names) {
                if class(&p, s) != want {
                    wrong.push(format!(
                        "{labels:?} {:?} {:?} {names:?}",
                        str_label(&p, s, "thread_state"),
                        s.value
                    ));
                }
            }
        }
        report += &format!(
            "{name}: main.sleeper waited {:.2} s labelled work=sleep, {:.3} s unlabelled; threads in the scheduler {:.2} s, unlabelled\n",
            sleep_ns as f64 / 1e9,
            unlabelled_ns as f64 / 1e9,
            scheduler_ns as f64 / 1e9
        );
        let comments: Vec<&str> = p.comment.iter().map(|&i| p.str(i)).collect();
        assert!(
            wrong.is_empty(),
            "{name}: mislabelled waits: {wrong:#?}\n{comments:#?}"
        );
        // It waits in nanosleep most of the time, over a 3 s capture.
        assert!(
            sleep_ns > 1_000_000_000,
            "{name}: {:.2} s of labelled waiting in 3 s",
            sleep_ns as f64 / 1e9
        );
        assert_eq!(unlabelled_ns, 0, "{name}: unlabelled waits of main.sleeper");
    }
    println!("{report}");
}

#[test]
fn go_goid_adds_the_goroutine_id() {
    let go = go127();
    let _lock = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("golabels");
    build_go(&go, "golabels", &exe, &["-ldflags=-s -w"]);
    let mut t = Target::spawn(&exe, &["-seconds", "4", "-workers", "2", "-ready"]);
    let out = dir.path().join("goid.pb.gz");
    let o = record_pid(t.pid(), "3", &out, &["-F", HZ, "--user-only", "--go-goid"]);
    assert_ok(&o);
    t.wait();
    let p = load(&out);
    // Each worker goroutine has its own id, the same on all its samples;
    // the labels are still there beside it.
    let mut goids = std::collections::BTreeMap::new();
    let mut without = 0;
    for s in &p.sample {
        let names = stack_names(&p, s);
        if expected(&names).is_none() {
            continue;
        }
        match num_label(&p, s, "goid") {
            Some(id) => *goids.entry(id).or_insert(0i64) += s.value[0],
            None => without += s.value[0],
        }
        assert_eq!(
            Some(class(&p, s)),
            expected(&names),
            "{:?}",
            go_labels(&p, s)
        );
    }
    println!("samples of the loop by goid: {goids:?}, without: {without}");
    assert_eq!(without, 0, "samples of the loop without a goid");
    assert_eq!(goids.len(), 2, "two worker goroutines: {goids:?}");
    assert!(goids.values().all(|&n| n >= 100), "{goids:?}");
}
