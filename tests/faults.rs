//! Fault tests: processes that exec, lose their binary, live in another
//! mount namespace; a ring buffer that overflows; a full disk; concurrent
//! captures; signals at any moment. The bar: no panic, no lost capture, no
//! corrupt file.

mod harness;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use harness::*;

fn spin(dir: &Path) -> std::path::PathBuf {
    let exe = dir.join("spin");
    build_c("spin.c", &exe, &["-O2", "-g", "-fno-omit-frame-pointer"]);
    exe
}

#[test]
fn exec_mid_capture_names_both_images() {
    let _lock = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let spin = spin(dir.path());
    let exe = dir.path().join("exec_then");
    build_c(
        "exec_then.c",
        &exe,
        &["-O2", "-g", "-fno-omit-frame-pointer"],
    );
    let mut cmd = Command::new(&exe);
    cmd.arg("1").arg(&spin).arg("2");
    let t = Target::start(cmd);
    let out = dir.path().join("exec.pb.gz");
    let o = record_pid(t.pid(), "3", &out, &[]);
    assert_ok(&o);
    let p = load(&out);
    let before = cum_share(&p, "before_exec");
    let after = cum_share(&p, "hot_inner");
    assert!(
        before > 0.15 && after > 0.3,
        "before_exec {before:.2}, hot_inner {after:.2}"
    );
    // One pid throughout.
    let pids: std::collections::BTreeSet<i64> = p
        .sample
        .iter()
        .filter_map(|s| num_label(&p, s, "pid"))
        .collect();
    assert_eq!(pids.len(), 1);
}

#[test]
fn deleted_binary_is_still_named() {
    let _lock = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let exe = spin(dir.path());
    let mut cmd = Command::new(&exe);
    cmd.arg("4");
    let t = Target::start(cmd);
    std::fs::remove_file(&exe).unwrap();
    let out = dir.path().join("deleted.pb.gz");
    assert_ok(&record_pid(t.pid(), "1", &out, &[]));
    let p = load(&out);
    assert!(
        flat_share(&p, "hot_inner") > 0.9,
        "{}",
        flat_share(&p, "hot_inner")
    );
}

#[test]
fn other_mount_namespace_is_named() {
    let _lock = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let exe = spin(dir.path());
    // Inside a private mount namespace, a tmpfs hides where the binary
    // runs from: the host sees an empty directory there.
    let hidden = dir.path().join("hidden");
    std::fs::create_dir(&hidden).unwrap();
    let script = format!(
        "mount -t tmpfs none {h} && cp {e} {h}/spin-ns && exec {h}/spin-ns 4",
        h = hidden.display(),
        e = exe.display()
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "--propagation", "private", "sh", "-c", &script]);
    let t = Target::start(cmd);
    assert!(
        !hidden.join("spin-ns").exists(),
        "the host cannot see the binary"
    );
    let out = dir.path().join("ns.pb.gz");
    assert_ok(&record_pid(t.pid(), "1", &out, &[]));
    let p = load(&out);
    assert!(
        flat_share(&p, "hot_inner") > 0.9,
        "{}",
        flat_share(&p, "hot_inner")
    );
    let m = &p.mapping[0];
    assert!(p.str(m.filename).ends_with("/hidden/spin-ns"));
    assert!(m.has_functions);
}

#[test]
fn ring_buffer_overflow_is_counted_and_reported() {
    let _lock = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let exe = spin(dir.path());
    let _a = Target::spawn(&exe, &["5"]);
    let _b = Target::spawn(&exe, &["5"]);
    let out = dir.path().join("overflow.pb.gz");
    // A 4 KiB ring holds one record; 10 kHz on every CPU overflows it.
    let o = record(&[
        "-F",
        "10000",
        "--ring-size",
        "4",
        "--seconds",
        "1",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_ok(&o);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("samples were lost"), "{stderr}");
    let p = load(&out);
    let comment: Vec<&str> = p.comment.iter().map(|&i| p.str(i)).collect();
    let lost: u64 = comment
        .iter()
        .find_map(|c| c.split("lost_samples=").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("lost_samples in the comment");
    assert!(lost > 1000, "{lost} lost at 10 kHz into a 4 KiB ring");
    assert!(total(&p, 0) > 0);
}

#[test]
fn full_filesystem_gives_clear_error_and_leaves_nothing_behind() {
    let _lock = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let exe = spin(dir.path());
    let t = Target::spawn(&exe, &["4"]);
    let tiny = dir.path().join("tiny");
    std::fs::create_dir(&tiny).unwrap();
    assert!(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4k", "none"])
        .arg(&tiny)
        .status()
        .unwrap()
        .success());
    let _ = std::fs::write(tiny.join("filler"), vec![0u8; 64 * 1024]);
    let out = tiny.join("cpu.svg");
    let o = record_pid(t.pid(), "1", &out, &[]);
    let listing: Vec<String> = std::fs::read_dir(&tiny)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let _ = Command::new("umount").arg(&tiny).status();
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("cannot write") && e.contains("cpu.svg"), "{e}");
    assert!(!e.contains("panicked"));
    assert_eq!(listing, ["filler"], "no output and no temp file left");
}

#[test]
fn two_captures_at_once_both_complete() {
    let _lock = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let exe = spin(dir.path());
    // Killed on drop, long after the captures.
    let t = Target::spawn(&exe, &["60"]);
    // What each capture must hold: 100 Hz over the CPU time the target got
    // during its time range (a busy machine gives it less than a core).
    let trackers: Vec<CpuTracker> = (0..2).map(|_| CpuTracker::start(t.pid())).collect();
    let outs: Vec<_> = (0..2)
        .map(|i| dir.path().join(format!("c{i}.pb.gz")))
        .collect();
    let children: Vec<_> = outs
        .iter()
        .map(|o| {
            rprof()
                .args([
                    "--pid",
                    &t.pid().to_string(),
                    "--seconds",
                    "2",
                    "-q",
                    "-o",
                    o.to_str().unwrap(),
                ])
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let counts: Vec<(i64, f64)> = children
        .into_iter()
        .zip(&outs)
        .zip(trackers)
        .map(|((c, o), tracker)| {
            assert_ok(&c.wait_with_output().unwrap());
            let p = load(o);
            assert!(flat_share(&p, "hot_inner") > 0.9);
            let cpu = tracker.cpu_between(p.time_nanos, p.time_nanos + p.duration_nanos);
            (total(&p, 0), 100.0 * cpu)
        })
        .collect();
    assert!(
        counts
            .iter()
            .all(|&(n, want)| n > 0 && (n as f64 - want).abs() <= 0.1 * want + 3.0),
        "(samples, expected) per capture: {counts:?}"
    );
}

/// Stray temporary files in `dir`.
fn temp_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".tmp")
        })
        .count()
}

/// SIGINT and SIGTERM at random moments. Before the capture says it is
/// profiling, a signal may find no handler yet (the default action kills
/// it: no file, never a partial one). Once it has said so, a signal must
/// stop it cleanly: exit 0, a whole profile, and the reason on stderr.
/// Half the rounds signal at a random time after the start (mostly while
/// loading), half at a random time after the "Profiling" line, so both
/// cases are met whatever the machine's speed.
#[test]
fn signals_at_any_moment_never_leave_a_corrupt_file() {
    let _lock = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let exe = spin(dir.path());
    let t = Target::spawn(&exe, &["60"]);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let (mut clean, mut killed) = (0, 0);
    for round in 0..8 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let (sig, name) = if round % 2 == 0 {
            (libc::SIGTERM, "SIGTERM")
        } else {
            (libc::SIGINT, "SIGINT")
        };
        let out = dir.path().join(format!("s{round}.pb.gz"));
        let pid = t.pid().to_string();
        let mut capture = Running::start(&[
            "--pid",
            &pid,
            "--seconds",
            "20",
            "-q",
            "-o",
            out.to_str().unwrap(),
        ]);
        if round < 4 {
            std::thread::sleep(Duration::from_millis(x % 1500));
        } else {
            capture.wait_profiling();
            std::thread::sleep(Duration::from_millis(x % 500));
        }
        let sent = capture.signal(sig);
        let (status, stderr, profiling) = capture.finish();
        if profiling.is_some_and(|p| p < sent) {
            // The handler was in place.
            assert!(
                status.success(),
                "round {round}: {name} after start: {status}\n{stderr}"
            );
            assert!(
                stderr.contains(&format!("{name}: stopping after")),
                "round {round}: {stderr}"
            );
            let p = load(&out);
            assert!(!p.sample_type.is_empty(), "round {round}: a valid profile");
            clean += 1;
        } else if out.exists() {
            // Sent before the line was read, but the handler was already there.
            assert!(status.success(), "round {round}: {status}\n{stderr}");
            assert!(!load(&out).sample_type.is_empty(), "round {round}");
            clean += 1;
        } else {
            assert_eq!(
                std::os::unix::process::ExitStatusExt::signal(&status),
                Some(sig),
                "round {round}: no file, so {name} must have killed it before its handler: {status}\n{stderr}"
            );
            killed += 1;
        }
        assert_eq!(
            temp_files(dir.path()),
            0,
            "round {round}: no temp files left"
        );
    }
    eprintln!("{clean} clean stops, {killed} killed while loading");
    assert!(
        clean >= 4,
        "the rounds after the Profiling line stop cleanly"
    );
}

/// SIGTERM (what a supervisor, `timeout` or `kill` sends) mid-capture: the
/// capture stops at once, exits 0 and writes what it captured.
#[test]
fn sigterm_stops_early_and_writes_the_profile() {
    let _lock = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let exe = spin(dir.path());
    let t = Target::spawn(&exe, &["60"]);
    let out = dir.path().join("term.pb.gz");
    let p = stop_with_signal(
        t.pid(),
        &out,
        Duration::from_secs(2),
        libc::SIGTERM,
        "SIGTERM",
    );
    // What was captured until the signal: a busy machine gives few samples.
    assert!(total(&p, 0) >= 5, "{} samples in about 2 s", total(&p, 0));
    let hot = cum_share(&p, "hot_inner");
    assert!(hot > 0.8, "{hot}");
    assert_eq!(temp_files(dir.path()), 0);
}

/// Starts `exe ARGS` with the next pid the kernel hands out forced to
/// `pid` (through `ns_last_pid`); `None` if another process took it first.
fn spawn_with_pid(exe: &Path, args: &[&str], pid: u32) -> Option<Target> {
    std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).unwrap();
    let t = Target::spawn(exe, args);
    (t.pid() == pid).then_some(t)
}

/// A pid dies and a new process gets the same pid during one system-wide
/// capture: the two must come out as two processes, each named from its
/// own binary, never merged. Both binaries are non-PIE and built from the
/// same source (with renamed functions), so their code sits at the same
/// addresses: reading one's samples with the other's mappings would name
/// every frame wrongly.
#[test]
fn reused_pid_is_never_merged() {
    let _lock = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("reuse_first");
    let second = dir.path().join("reuse_second");
    let flags = ["-O2", "-g", "-fno-omit-frame-pointer", "-no-pie"];
    build_c("spin.c", &first, &flags);
    let renamed = [
        "-Dhot_inner=second_hot_inner",
        "-Dcompute=second_compute",
        "-Dwork=second_work",
    ];
    build_c("spin.c", &second, &[&flags[..], &renamed[..]].concat());

    let out = dir.path().join("reuse.pb.gz");
    let mut capture = Running::start(&[
        "--seconds",
        "8",
        "--user-only",
        "-q",
        "-o",
        out.to_str().unwrap(),
    ]);
    // The capture is attached once it says it is profiling.
    capture.wait_profiling();

    let mut reused = None;
    for _ in 0..5 {
        let mut a = Target::spawn(&first, &["2"]);
        let pid = a.pid();
        a.wait();
        if let Some(mut b) = spawn_with_pid(&second, &["2"], pid) {
            b.wait();
            reused = Some(pid);
            break;
        }
    }
    let pid = reused.expect("could not get the same pid twice in 5 tries");
    let (status, stderr, _) = capture.finish();
    assert!(status.success(), "capture failed: {status}\n{stderr}");

    let p = load(&out);
    let (mut first_n, mut second_n) = (0, 0);
    for s in &p.sample {
        if num_label(&p, s, "pid") != Some(i64::from(pid)) {
            continue;
        }
        let names = stack_names(&p, s);
        let process = str_label(&p, s, "process").unwrap_or("");
        let has = |f: &str| names.iter().any(|n| n == f);
        match process {
            "reuse_first" => {
                assert!(!has("second_hot_inner"), "first has {names:?}");
                if has("hot_inner") && has("work") {
                    first_n += s.value[0];
                }
            }
            "reuse_second" => {
                assert!(!has("hot_inner") && !has("work"), "second has {names:?}");
                if has("second_hot_inner") && has("second_work") {
                    second_n += s.value[0];
                }
            }
            other => panic!("pid {pid} sample from process {other:?}: {names:?}"),
        }
    }
    eprintln!("pid {pid}: {first_n} samples of the first process, {second_n} of the second");
    // Each ran 2 s (200 samples on an idle CPU); allow for a busy machine.
    assert!(first_n >= 40, "first process: {first_n} samples");
    assert!(second_n >= 40, "second process: {second_n} samples");
}

/// The ELF address of a function of the (unstripped) binary at `path`.
fn symbol_address(path: &Path, name: &str) -> u64 {
    use object::{Object, ObjectSymbol};
    let data = std::fs::read(path).unwrap();
    let file = object::File::parse(&*data).unwrap();
    let address = file
        .symbols()
        .find(|s| s.name() == Ok(name))
        .map(|s| s.address());
    address.unwrap_or_else(|| panic!("no symbol {name}"))
}

#[test]
fn a_symbolizer_panic_costs_only_that_binary_its_names() {
    use rprof_bpf::symbolize::{SymbolFile, Symbolizer};
    let dir = tempfile::tempdir().unwrap();
    let hostile = hostile_spin(dir.path());
    let good = spin(dir.path());

    // The symbolizer: no panic out of it, no names for that binary, ever,
    // and the next binary is named as usual.
    let mut sym = Symbolizer::new(false);
    let file = SymbolFile::open(&hostile).unwrap();
    let at = symbol_address(&hostile, "hot_inner") + 4;
    for _ in 0..2 {
        assert_eq!(sym.symbolize_file(&file, &[at]), vec![vec![]]);
    }
    assert!(sym.is_unsymbolizable(&hostile));
    let file = SymbolFile::open(&good).unwrap();
    let named = sym.symbolize_file(&file, &[symbol_address(&good, "hot_inner") + 4]);
    assert_eq!(
        named[0].last().map(|f| f.function.as_str()),
        Some("hot_inner")
    );
    assert!(!sym.is_unsymbolizable(&good));

    // The recorder: a whole profile with that binary's frames unnamed, and
    // one warning saying why instead of a panic message.
    let _lock = capture_lock();
    let t = Target::spawn(&hostile, &["30"]);
    let out = dir.path().join("hostile.pb.gz");
    let o = record_pid(t.pid(), "2", &out, &[]);
    assert_ok(&o);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!stderr.contains("panicked at"), "{stderr}");
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("the symbolizer panicked"))
        .collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(warnings[0].contains("hostile-spin"), "{stderr}");
    let p = load(&out);
    assert!(total(&p, 0) >= 5, "{} samples", total(&p, 0));
    assert_eq!(flat_share(&p, "hot_inner"), 0.0);
}
