//! End-to-end capture tests: the real BPF program on real processes.

mod harness;

use std::process::Command;
use std::time::{Duration, Instant};

use harness::*;

/// Profiles `pid` for `seconds` into `out`, returning the profile, stderr,
/// and the CPU seconds the target used during the profile's time range.
fn profile_pid(
    pid: u32,
    seconds: u32,
    out: &std::path::Path,
    extra: &[&str],
) -> (rprof_bpf::pprof::Profile, String, f64) {
    let tracker = CpuTracker::start(pid);
    let secs = seconds.to_string();
    let pid_s = pid.to_string();
    let mut args = vec!["--pid", &pid_s, "--seconds", &secs, "-o"];
    let out_s = out.to_str().unwrap();
    args.push(out_s);
    args.extend_from_slice(extra);
    let o = record(&args);
    assert_ok(&o);
    let p = load(out);
    let cpu = tracker.cpu_between(p.time_nanos, p.time_nanos + p.duration_nanos);
    (p, String::from_utf8_lossy(&o.stderr).into_owned(), cpu)
}

/// Samples must be within 10% of frequency x CPU-seconds of the target.
fn assert_sample_count(got: i64, cpu_seconds: f64, hz: f64) {
    let expected = hz * cpu_seconds;
    let got = got as f64;
    assert!(
        (got - expected).abs() <= 0.10 * expected,
        "{got} samples, expected {expected:.0} (= {hz} Hz x {cpu_seconds:.2} CPU-seconds)"
    );
}

#[test]
fn go_fixture_hot_function_callers_and_go_pprof() {
    let go = go127();
    let _lock = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("gohot");
    build_go(&go, "gohot", &exe, &[]);
    let go_prof = dir.path().join("go.pb.gz");
    let mut cmd = Command::new(&exe);
    // Runs well past the capture, so its CPU use is steady throughout.
    cmd.args(["-seconds", "9", "-cpuprofile", go_prof.to_str().unwrap()]);
    let mut target = Target::start(cmd);
    std::thread::sleep(Duration::from_millis(300));

    let out = dir.path().join("cpu.pb.gz");
    let (p, stderr, cpu) = profile_pid(target.pid(), 4, &out, &[]);
    assert!(stderr.contains("samples, 0 lost"), "{stderr}");

    // Header conventions.
    let st: Vec<(&str, &str)> = p
        .sample_type
        .iter()
        .map(|t| (p.str(t.r#type), p.str(t.unit)))
        .collect();
    assert_eq!(st, [("samples", "count"), ("cpu", "nanoseconds")]);
    assert_eq!(p.period, 10_000_000);
    assert!(p.duration_nanos > 3_500_000_000 && p.time_nanos > 0);
    assert_eq!(
        p.str(p.mapping[0].filename),
        exe.to_str().unwrap(),
        "main executable first"
    );
    assert!(p.mapping[0].has_functions);
    assert!(
        !p.str(p.mapping[0].build_id).is_empty(),
        "Go build ID recorded"
    );
    assert_eq!(total(&p, 1), total(&p, 0) * 10_000_000);

    assert_sample_count(total(&p, 0), cpu, 100.0);

    // The hot function, and its callers up to main.main.
    let hot = flat_share(&p, "main.hotLoop");
    assert!(hot > 0.6, "main.hotLoop flat share {hot:.3}");
    let full = p.sample.iter().filter(|s| {
        let n = stack_names(&p, s);
        n.first().map(String::as_str) == Some("main.hotLoop")
            && n.windows(4)
                .any(|w| w == ["main.hotLoop", "main.outer", "main.run", "main.main"])
    });
    let full: i64 = full.map(|s| s.value[0]).sum();
    let hot_samples = (hot * total(&p, 0) as f64).round() as i64;
    assert!(
        full as f64 >= 0.95 * hot_samples as f64,
        "{full} of {hot_samples} hot samples have the full chain"
    );

    // Every sample carries pid/tid/thread/process labels.
    for s in &p.sample {
        assert_eq!(num_label(&p, s, "pid"), Some(i64::from(target.pid())));
        assert!(num_label(&p, s, "tid").is_some());
        assert_eq!(str_label(&p, s, "process"), Some("gohot"));
        assert!(str_label(&p, s, "thread").is_some());
    }

    // Agreement with Go's own profile of the same run.
    target.wait();
    let theirs = load(&go_prof);
    let go_hot = flat_share(&theirs, "main.hotLoop");
    assert!(
        (hot - go_hot).abs() < 0.05,
        "hotLoop: ours {hot:.3}, Go's {go_hot:.3}"
    );

    // go tool pprof accepts the file and puts the hot function on top.
    let o = go_pprof(&go, &["-top", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    let first_row = text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("flat"))
        .nth(1)
        .unwrap_or("");
    assert!(
        first_row.ends_with("main.hotLoop"),
        "go tool pprof -top:\n{text}"
    );
}

#[test]
fn c_fixture_frame_pointers_full_chain() {
    let _lock = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("spin");
    build_c("spin.c", &exe, &["-O2", "-g", "-fno-omit-frame-pointer"]);
    let mut cmd = Command::new(&exe);
    cmd.arg("6");
    let target = Target::start(cmd);
    let out = dir.path().join("cpu.pb.gz");
    let (p, _, cpu) = profile_pid(target.pid(), 3, &out, &[]);
    assert_sample_count(total(&p, 0), cpu, 100.0);

    let hot = flat_share(&p, "hot_inner");
    assert!(hot > 0.9, "hot_inner flat share {hot:.3}");
    let chain = cum_share(&p, "main");
    assert!(chain > 0.9, "main on {chain:.3} of stacks");
    let s = p.sample.iter().max_by_key(|s| s.value[0]).unwrap();
    let names = stack_names(&p, s);
    assert_eq!(
        &names[..4],
        ["hot_inner", "compute", "work", "main"],
        "{names:?}"
    );
    // DWARF gives file and line.
    let f = p
        .function
        .iter()
        .find(|f| p.str(f.name) == "hot_inner")
        .unwrap();
    assert!(p.str(f.filename).ends_with("spin.c"));
}

#[test]
fn kernel_frames_and_user_only() {
    let go = go127();
    let _lock = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("spin");
    build_c("spin.c", &exe, &["-O2", "-g", "-fno-omit-frame-pointer"]);
    let mut cmd = Command::new(&exe);
    cmd.args(["8", "sys"]);
    let target = Target::start(cmd);

    let out = dir.path().join("k.pb.gz");
    let (p, _, _) = profile_pid(target.pid(), 2, &out, &[]);
    let kmap = p
        .mapping
        .iter()
        .find(|m| p.str(m.filename) == "[kernel.kallsyms]")
        .expect("a kernel mapping");
    assert!(!p.str(kmap.build_id).is_empty(), "kernel build ID");
    // write(2) to /dev/null: the kernel side must show the syscall path.
    assert!(
        cum_share(&p, "ksys_write") > 0.1,
        "ksys_write cum {:.3}",
        cum_share(&p, "ksys_write")
    );
    // Kernel frames sit on top of the user frames that made the call.
    assert!(p.sample.iter().any(|s| {
        let n = stack_names(&p, s);
        let k = n.iter().position(|x| x == "ksys_write");
        let w = n.iter().position(|x| x == "work");
        matches!((k, w), (Some(k), Some(w)) if k < w)
    }));
    let o = go_pprof(&go, &["-top", out.to_str().unwrap()]);
    assert!(o.status.success());

    let out = dir.path().join("u.pb.gz");
    let (p, _, _) = profile_pid(target.pid(), 1, &out, &["--user-only"]);
    assert!(total(&p, 0) > 50);
    assert!(p
        .mapping
        .iter()
        .all(|m| p.str(m.filename) != "[kernel.kallsyms]"));
    assert_eq!(cum_share(&p, "ksys_write"), 0.0);
}

#[test]
fn sigint_mid_capture_writes_valid_profile() {
    let go = go127();
    let _lock = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("spin");
    build_c("spin.c", &exe, &["-O2", "-fno-omit-frame-pointer"]);
    // Killed on drop, long after the capture.
    let target = Target::spawn(&exe, &["60"]);
    let out = dir.path().join("cpu.pb.gz");
    let tracker = CpuTracker::start(target.pid());
    // Two seconds of sampling, however long loading took.
    let p = stop_with_signal(
        target.pid(),
        &out,
        Duration::from_secs(2),
        libc::SIGINT,
        "SIGINT",
    );
    let cpu = tracker.cpu_between(p.time_nanos, p.time_nanos + p.duration_nanos);
    assert_sample_count(total(&p, 0), cpu, 100.0);
    assert!(go_pprof(&go, &["-top", out.to_str().unwrap()])
        .status
        .success());
}

#[test]
fn target_exit_mid_capture_keeps_what_was_captured() {
    let _lock = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("spin");
    build_c("spin.c", &exe, &["-O2", "-g", "-fno-omit-frame-pointer"]);
    let mut cmd = Command::new(&exe);
    cmd.arg("1");
    let target = Target::start(cmd);
    let tracker = CpuTracker::start(target.pid());
    let out = dir.path().join("cpu.pb.gz");
    let t0 = Instant::now();
    let o = record(&[
        "--pid",
        &target.pid().to_string(),
        "--seconds",
        "5",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_ok(&o);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("exited"), "{stderr}");
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "stopped when the target exited"
    );
    let p = load(&out);
    // As many samples as the CPU time it had while profiled (less than its
    // 1 s of running on a busy machine).
    let cpu = tracker.cpu_between(p.time_nanos, p.time_nanos + p.duration_nanos);
    assert_sample_count(total(&p, 0), cpu, 100.0);
    assert!(
        flat_share(&p, "hot_inner") > 0.8,
        "named after the process exited"
    );
}

#[test]
fn several_pids_and_no_symbolize() {
    let go = go127();
    let _lock = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("spin");
    build_c("spin.c", &exe, &["-O2", "-g", "-fno-omit-frame-pointer"]);
    let mut cmd = Command::new(&exe);
    cmd.arg("6");
    let a = Target::start(cmd);
    let mut cmd = Command::new(&exe);
    cmd.arg("6");
    let b = Target::start(cmd);
    let out = dir.path().join("raw.pb.gz");
    let pids = format!("{},{}", a.pid(), b.pid());
    let o = record(&[
        "--pid",
        &pids,
        "--seconds",
        "2",
        "--no-symbolize",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_ok(&o);
    let p = load(&out);
    let seen: std::collections::BTreeSet<i64> = p
        .sample
        .iter()
        .filter_map(|s| num_label(&p, s, "pid"))
        .collect();
    assert_eq!(seen, [a.pid() as i64, b.pid() as i64].into_iter().collect());
    // Raw: no functions, but mappings with file names and build IDs.
    assert!(p.function.is_empty());
    assert!(p.location.iter().all(|l| l.line.is_empty()));
    let m = p
        .mapping
        .iter()
        .find(|m| p.str(m.filename) == exe.to_str().unwrap())
        .unwrap();
    assert!(!p.str(m.build_id).is_empty());
    assert!(!m.has_functions);
    // go tool pprof loads it, and names frames itself from the binary.
    let o = go_pprof(&go, &["-top", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("hot_inner"));
}

#[test]
fn system_wide_sees_every_process() {
    let _lock = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("spin");
    build_c("spin.c", &exe, &["-O2", "-g", "-fno-omit-frame-pointer"]);
    let spinners: Vec<Target> = (0..2)
        .map(|_| {
            let mut cmd = Command::new(&exe);
            cmd.arg("6");
            Target::start(cmd)
        })
        .collect();
    let trackers: Vec<CpuTracker> = spinners
        .iter()
        .map(|t| CpuTracker::start(t.pid()))
        .collect();
    let out = dir.path().join("all.pb.gz");
    let o = record(&["--seconds", "2", "-o", out.to_str().unwrap(), "--quiet"]);
    assert_ok(&o);
    let p = load(&out);
    // No pid filter, yet each spinner is there with the samples its CPU
    // time calls for, and named.
    for (t, tracker) in spinners.iter().zip(trackers) {
        let ours: i64 = p
            .sample
            .iter()
            .filter(|s| num_label(&p, s, "pid") == Some(i64::from(t.pid())))
            .map(|s| s.value[0])
            .sum();
        let cpu = tracker.cpu_between(p.time_nanos, p.time_nanos + p.duration_nanos);
        assert_sample_count(ours, cpu, 100.0);
        // Named: the spinner's own samples, whatever else the machine ran.
        let hot: i64 = p
            .sample
            .iter()
            .filter(|s| num_label(&p, s, "pid") == Some(i64::from(t.pid())))
            .filter(|s| stack_names(&p, s).first().map(String::as_str) == Some("hot_inner"))
            .map(|s| s.value[0])
            .sum();
        assert!(
            hot as f64 > 0.8 * ours as f64,
            "{hot} of the spinner's {ours} samples in hot_inner"
        );
    }
}

/// Shell churn, the workload that showed user locations at address 0: many
/// short processes of a shell and libc built without frame pointers.
const SHELL_CHURN: &str = "for i in $(seq 3000); do /bin/true; sh -c 'i=0; while [ $i -lt 300 ]; do i=$((i+1)); done'; done";

#[test]
fn system_wide_capture_with_shell_churn_has_no_address_zero() {
    let _lock = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("churn.pb.gz");
    let mut capture = Running::start(&["--seconds", "4", "-q", "-o", out.to_str().unwrap()]);
    capture.wait_profiling();
    let mut churn = Command::new("sh")
        .args(["-c", SHELL_CHURN])
        .spawn()
        .unwrap();
    let (status, stderr, _) = capture.finish();
    let _ = churn.kill();
    let _ = churn.wait();
    assert!(status.success(), "{status}\n{stderr}");
    let p = load(&out);
    let shells = p
        .sample
        .iter()
        .filter(|s| str_label(&p, s, "process") == Some("sh"))
        .count();
    assert!(shells >= 20, "only {shells} samples of the shell churn");
    let zero: Vec<u64> = p
        .location
        .iter()
        .filter(|l| l.address == 0)
        .map(|l| l.id)
        .collect();
    assert!(
        zero.is_empty(),
        "{} of {} locations at address 0 (ids {:?})",
        zero.len(),
        p.location.len(),
        &zero[..zero.len().min(10)]
    );
}

#[test]
fn cycles_event_or_clear_fallback() {
    let _lock = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("spin");
    build_c("spin.c", &exe, &["-O2", "-g", "-fno-omit-frame-pointer"]);
    let mut cmd = Command::new(&exe);
    cmd.arg("4");
    let t = Target::start(cmd);
    let out = dir.path().join("cyc.pb.gz");
    let (p, stderr, _) = profile_pid(t.pid(), 2, &out, &["--event", "cycles"]);
    let pt = p.period_type.as_ref().unwrap();
    // A core PMU shows up as the `cpu` event source (none on most VMs).
    let has_pmu = std::path::Path::new("/sys/bus/event_source/devices/cpu").exists();
    let fell_back = stderr.contains("warning: the cycles event is unavailable");
    assert_eq!(
        fell_back, !has_pmu,
        "PMU present: {has_pmu}; stderr: {stderr}"
    );
    if fell_back {
        skipped(
            "cycles_event_or_clear_fallback",
            "no cycles PMU on this machine (no /sys/bus/event_source/devices/cpu): only the cpu-clock fallback was checked",
        );
        assert_eq!(p.str(pt.r#type), "cpu");
    } else {
        assert_eq!(p.str(pt.r#type), "cycles");
        assert_eq!(p.str(p.sample_type[1].r#type), "cycles");
        // Cycle weights are real counts, far above one per sample.
        assert!(total(&p, 1) > total(&p, 0) * 1000);
    }
    assert!(flat_share(&p, "hot_inner") > 0.8);
}
