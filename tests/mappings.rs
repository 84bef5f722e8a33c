//! Every process named, from the mappings of the moment each sample was
//! taken: short-lived processes, `exec` between binaries at the same
//! addresses, a library unloaded and another loaded in its place, a binary
//! deleted under a running process. The mappings come from the kernel's
//! own process events (perf's MMAP2/COMM/FORK/EXIT records), not from
//! `/proc` snapshots that a process can outrun.

mod harness;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use harness::*;
use rprof_bpf::pprof::Profile;

/// Samples whose `process` label is `name`, and those among them whose
/// stack holds `function`.
fn named(p: &Profile, name: &str, function: &str) -> (i64, i64) {
    let (mut all, mut hit) = (0, 0);
    for s in &p.sample {
        if str_label(p, s, "process") != Some(name) {
            continue;
        }
        all += s.value[0];
        if stack_names(p, s).iter().any(|n| n == function) {
            hit += s.value[0];
        }
    }
    (all, hit)
}

/// Samples per innermost function name, of process `name`.
fn leaves(p: &Profile, name: &str) -> BTreeMap<String, i64> {
    let mut m = BTreeMap::new();
    for s in &p.sample {
        if str_label(p, s, "process") != Some(name) {
            continue;
        }
        let leaf = stack_names(p, s).into_iter().next().unwrap_or_default();
        *m.entry(leaf).or_insert(0) += s.value[0];
    }
    m
}

/// A system-wide capture of `seconds` while `work` runs; waits for both.
fn capture_while(seconds: &str, out: &Path, extra: &[&str], work: impl FnOnce()) -> Profile {
    let mut capture = rprof()
        .args(["--seconds", seconds, "-q", "-o"])
        .arg(out)
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_profiling(&mut capture);
    work();
    assert_ok(&capture.wait_with_output().unwrap());
    load(out)
}

/// Waits until a capture says it is sampling; its stderr is consumed up
/// to that line.
fn wait_profiling(capture: &mut std::process::Child) {
    let mut err = capture.stderr.take().unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !String::from_utf8_lossy(&line).contains("Profiling") {
        let n = std::io::Read::read(&mut err, &mut byte).unwrap();
        assert!(n > 0, "capture ended early");
        if byte[0] == b'\n' && !String::from_utf8_lossy(&line).contains("Profiling") {
            line.clear();
        } else {
            line.push(byte[0]);
        }
    }
    capture.stderr = Some(err);
}

/// A C program that computes 30 ms and exits, run again and again during
/// a system-wide capture: its hot function is named in most of its
/// samples (the rest is the dynamic loader and libc starting up). Before
/// process events, only 5.9% were: the process was gone before its
/// `/proc/PID/maps` could be read. `perf record -a -g` names 86% here.
#[test]
fn short_lived_processes_are_named() {
    let _lock = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("shortlived");
    build_c(
        "shortlived.c",
        &exe,
        &["-O1", "-g", "-fno-omit-frame-pointer"],
    );
    let out = dir.path().join("short.pb.gz");
    let p = capture_while("6", &out, &["-F", "1000", "--user-only"], || {
        for _ in 0..80 {
            let st = Command::new(&exe).arg("30").status().unwrap();
            assert!(st.success());
        }
    });
    let (all, hit) = named(&p, "shortlived", "short_hot");
    let share = hit as f64 / all.max(1) as f64;
    eprintln!(
        "short-lived: short_hot named in {hit} of {all} samples ({:.1}%)",
        100.0 * share
    );
    assert!(all >= 200, "{all} samples of the short-lived processes");
    // 80% is 86% (what perf names) less six binomial sigmas at 200 samples.
    assert!(share >= 0.80, "{:.3} of samples named short_hot", share);
}

/// `alpha` computes for a while and `exec`s `bravo`, built from the same
/// source with its function renamed, both static and non-PIE: every
/// address of one (libc included) is the same in the other, so their stacks
/// are the same numbers, and only the mappings of the moment tell them
/// apart. Each gets its share of the samples.
#[test]
fn exec_between_binaries_at_the_same_addresses_names_each_from_its_own() {
    let _lock = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let flags = ["-O1", "-g", "-fno-omit-frame-pointer", "-no-pie", "-static"];
    let alpha = dir.path().join("alpha");
    let bravo = dir.path().join("bravo");
    build_c(
        "execpair.c",
        &alpha,
        &[&flags[..], &["-DWORK=alpha_work"]].concat(),
    );
    build_c(
        "execpair.c",
        &bravo,
        &[&flags[..], &["-DWORK=bravo_work"]].concat(),
    );
    assert_eq!(
        symbol_address(&alpha, "alpha_work"),
        symbol_address(&bravo, "bravo_work"),
        "the test needs both functions at one address"
    );
    let mut cmd = Command::new(&alpha);
    cmd.arg("1.5").arg(&bravo).arg("1.5").stdin(Stdio::piped());
    let mut t = Target::start(cmd);
    let out = dir.path().join("exec.pb.gz");
    let mut rec = rprof()
        .args(["--pid", &t.pid().to_string(), "--seconds", "6", "-q", "-o"])
        .arg(&out)
        .args(["-F", "500", "--user-only"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_profiling(&mut rec);
    // Both programs run only once the capture is on: equal shares.
    std::io::Write::write_all(t.child.stdin.as_mut().unwrap(), b"go\n").unwrap();
    t.wait();
    assert_ok(&rec.wait_with_output().unwrap());
    let p = load(&out);
    let count = |f: &str| -> i64 {
        p.sample
            .iter()
            .filter(|s| stack_names(&p, s).iter().any(|n| n == f))
            .map(|s| s.value[0])
            .sum()
    };
    let (a, b) = (count("alpha_work"), count("bravo_work"));
    let share = a as f64 / (a + b).max(1) as f64;
    eprintln!(
        "exec: alpha_work {a}, bravo_work {b} samples ({:.1}% alpha)",
        100.0 * share
    );
    assert!(a + b >= 200, "{} samples", a + b);
    // Equal running times; 10 points is the bar.
    assert!((share - 0.5).abs() <= 0.10, "alpha_work share {share:.3}");
}

/// A library is unloaded and another of the same layout is loaded where
/// it was: each sample is named from the one mapped at its time.
#[test]
fn a_library_reloaded_at_the_same_address_names_each_sample_from_its_own() {
    let _lock = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let lib = |name: &str, hot: &str| {
        let p = dir.path().join(name);
        build_c(
            "reload_lib.c",
            &p,
            &[
                "-O1",
                "-g",
                "-fno-omit-frame-pointer",
                "-shared",
                "-fPIC",
                hot,
            ],
        );
        p
    };
    let (a, b) = (
        lib("liba.so", "-DLIB_HOT=lib_a_hot"),
        lib("libb.so", "-DLIB_HOT=lib_b_hot"),
    );
    let exe = dir.path().join("reload_main");
    build_c(
        "reload_main.c",
        &exe,
        &["-O1", "-g", "-fno-omit-frame-pointer", "-ldl"],
    );
    let mut child = Command::new(&exe)
        .arg(&a)
        .arg(&b)
        .arg("1.5")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let out = dir.path().join("reload.pb.gz");
    let mut rec = rprof()
        .args([
            "--pid",
            &child.id().to_string(),
            "--seconds",
            "6",
            "-q",
            "-o",
        ])
        .arg(&out)
        .args(["-F", "500", "--user-only"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_profiling(&mut rec);
    // Both libraries run only once the capture is on: equal shares.
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"go\n").unwrap();
    let mut addrs = Vec::new();
    for l in stdout.lines() {
        addrs.push(l.unwrap());
    }
    assert!(child.wait().unwrap().success());
    assert_ok(&rec.wait_with_output().unwrap());
    assert_eq!(addrs.len(), 2, "{addrs:?}");
    assert_eq!(
        addrs[0], addrs[1],
        "the test needs both libraries at one address"
    );
    let p = load(&out);
    let l = leaves(&p, "reload_main");
    let (na, nb) = (
        l.get("lib_a_hot").copied().unwrap_or(0),
        l.get("lib_b_hot").copied().unwrap_or(0),
    );
    let share = na as f64 / (na + nb).max(1) as f64;
    eprintln!(
        "reload: lib_a_hot {na}, lib_b_hot {nb} ({:.1}% a): {l:?}",
        100.0 * share
    );
    assert!(na + nb >= 200, "{} samples in the libraries", na + nb);
    assert!((share - 0.5).abs() <= 0.10, "lib_a_hot share {share:.3}");
}

/// A short-lived process whose binary is deleted, and replaced by another
/// program at the same path, right after it starts: its samples are named
/// from the file it really ran (opened while it lived) or left unnamed,
/// never named from the file now at that path.
#[test]
fn a_deleted_and_replaced_binary_is_never_misnamed() {
    let _lock = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let flags = ["-O1", "-g", "-fno-omit-frame-pointer"];
    let real = dir.path().join("real");
    let trap = dir.path().join("trap");
    build_c("shortlived.c", &real, &flags);
    build_c(
        "shortlived.c",
        &trap,
        &[&flags[..], &["-Dshort_hot=trap_hot"]].concat(),
    );
    let victim = dir.path().join("victim");
    let out = dir.path().join("deleted.pb.gz");
    let p = capture_while("5", &out, &["-F", "1000", "--user-only"], || {
        for i in 0..30 {
            std::fs::copy(&real, &victim).unwrap();
            let mut c = Command::new(&victim)
                .arg(if i % 2 == 0 { "30" } else { "300" })
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(5));
            std::fs::remove_file(&victim).unwrap();
            std::fs::copy(&trap, &victim).unwrap();
            assert!(c.wait().unwrap().success());
            std::fs::remove_file(&victim).unwrap();
        }
    });
    let (all, real_named) = named(&p, "victim", "short_hot");
    let (_, trapped) = named(&p, "victim", "trap_hot");
    eprintln!("deleted: {all} samples, {real_named} named short_hot, {trapped} named trap_hot");
    assert!(all >= 100, "{all} samples of the victims");
    assert_eq!(
        trapped, 0,
        "samples named from the file that replaced the binary"
    );
    assert!(
        real_named > 0,
        "the binary was opened while it ran, at least once"
    );
}

/// A system-wide capture of shell churn (pipelines of short-lived
/// processes): no user location falls outside every mapping. Before
/// process events, `bash`, `tr` and `head` had unnamed frames in 90% of
/// their samples.
#[test]
fn shell_churn_leaves_no_user_frame_outside_every_mapping() {
    let _lock = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    // Copies with names of their own, to tell this churn from whatever
    // else the machine runs.
    let tool = |src: &str, name: &str| {
        let p = dir.path().join(name);
        std::fs::copy(src, &p).unwrap();
        p
    };
    let sh = tool("/bin/dash", "churnsh");
    let tr = tool("/usr/bin/tr", "churntr");
    let head = tool("/usr/bin/head", "churnhead");
    let script = format!(
        "i=0; while [ $i -lt 400 ]; do i=$((i+1)); echo $i-abcdef | {} a-z A-Z | {} -c 4 > /dev/null; done",
        tr.display(),
        head.display()
    );
    let out = dir.path().join("churn.pb.gz");
    let p = capture_while("6", &out, &["-F", "1000", "--user-only"], || {
        let st = Command::new(&sh).args(["-c", &script]).status().unwrap();
        assert!(st.success());
    });
    let ours = ["churnsh", "churntr", "churnhead"];
    let (mut frames, mut unmapped, mut samples) = (0i64, 0i64, 0i64);
    for s in &p.sample {
        if !str_label(&p, s, "process").is_some_and(|n| ours.contains(&n)) {
            continue;
        }
        samples += s.value[0];
        for id in &s.location_id {
            let loc = p.location.iter().find(|l| l.id == *id).unwrap();
            frames += s.value[0];
            if loc.mapping_id == 0 {
                unmapped += s.value[0];
            }
        }
    }
    eprintln!(
        "shell churn: {samples} samples, {frames} user frames, {unmapped} outside every mapping"
    );
    assert!(samples >= 100, "{samples} samples of the churn");
    assert_eq!(unmapped, 0, "user frames outside every mapping");
}

/// The address of `symbol` in an ELF file's symbol table.
fn symbol_address(exe: &Path, symbol: &str) -> u64 {
    use object::{Object, ObjectSymbol};
    let data = std::fs::read(exe).unwrap();
    let file = object::File::parse(&*data).unwrap();
    file.symbols()
        .find(|s| s.name() == Ok(symbol))
        .map(|s| s.address())
        .unwrap_or_else(|| panic!("{symbol} not in {}", exe.display()))
}
