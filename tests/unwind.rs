//! The `.eh_frame` unwinder end to end: binaries without frame pointers,
//! profiled for real, must give stacks that reach the thread's root.

mod harness;

use std::path::Path;
use std::process::Command;

use harness::*;
use rprof_bpf::pprof::Profile;

/// Functions where a complete user stack ends.
const ROOTS: &[&str] = &[
    "_start",
    "__clone3",
    "clone3",
    "__clone",
    "clone",
    "runtime.goexit",
];

/// Share of samples whose outermost user frame is a thread root.
fn root_share(p: &Profile) -> f64 {
    let reached: i64 = p
        .sample
        .iter()
        .filter(|s| {
            stack_names(p, s)
                .last()
                .is_some_and(|n| ROOTS.contains(&n.as_str()))
        })
        .map(|s| s.value[0])
        .sum();
    reached as f64 / total(p, 0).max(1) as f64
}

/// Share of samples whose stack contains `chain` (leaf-first, consecutive
/// after removing inlined duplicates is not needed: these are physical).
fn chain_share(p: &Profile, chain: &[&str]) -> f64 {
    let hit: i64 = p
        .sample
        .iter()
        .filter(|s| {
            let n = stack_names(p, s);
            n.windows(chain.len())
                .any(|w| w.iter().zip(chain).all(|(a, b)| a == b))
        })
        .map(|s| s.value[0])
        .sum();
    hit as f64 / total(p, 0).max(1) as f64
}

fn profile(exe: &Path, args: &[&str], seconds: &str, extra: &[&str], out: &Path) -> Profile {
    let t = Target::spawn(exe, args);
    assert_ok(&record_pid(t.pid(), seconds, out, extra));
    load(out)
}

#[test]
fn qsort_callback_without_frame_pointers_reaches_root() {
    let _lock = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("qsort");
    build_c("qsort.c", &exe, &["-O2", "-g", "-fomit-frame-pointer"]);
    let out = dir.path().join("dwarf.pb.gz");
    let p = profile(&exe, &["6"], "3", &[], &out);
    let root = root_share(&p);
    eprintln!(
        "qsort: {:.1}% of {} samples reach the root with tables",
        root * 100.0,
        total(&p, 0)
    );
    assert!(root >= 0.98, "{:.3} reach the root", root);
    // The callback, through libc's qsort, up to main and _start.
    assert!(cum_share(&p, "compare_keys") > 0.5);
    let full = chain_share(&p, &["sort_rounds", "main"]);
    assert!(full >= 0.98, "sort_rounds -> main on {full:.3}");
    assert!(p.sample.iter().any(|s| {
        let n = stack_names(&p, s);
        n.first().map(String::as_str) == Some("compare_keys")
            && n.last().map(String::as_str) == Some("_start")
    }));

    // With frame pointers only, the same binary loses its stacks: the
    // unwinder is what makes the difference.
    let out = dir.path().join("fp.pb.gz");
    let p = profile(&exe, &["4"], "2", &["--unwind", "fp"], &out);
    let fp_root = root_share(&p);
    eprintln!(
        "qsort: {:.1}% reach the root with frame pointers",
        fp_root * 100.0
    );
    assert!(fp_root < 0.5, "{fp_root}");
}

#[test]
fn rust_release_binary_reaches_root() {
    let _lock = capture_lock();
    let target = root().join("target/fixtures-rust");
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "--offline", "-q", "--manifest-path"])
        .arg(fixtures().join("rustspin/Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("RUSTFLAGS")
        .status()
        .unwrap();
    assert!(status.success());
    let exe = target.join("release/rustspin");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rust.pb.gz");
    let p = profile(&exe, &["6"], "3", &[], &out);
    let root = root_share(&p);
    eprintln!(
        "rustspin: {:.1}% of {} samples reach the root",
        root * 100.0,
        total(&p, 0)
    );
    assert!(root >= 0.98, "{root:.3}");
    let chain = chain_share(
        &p,
        &[
            "rustspin::hot",
            "rustspin::layer",
            "rustspin::drive",
            "rustspin::main",
        ],
    );
    assert!(chain >= 0.9, "hot -> layer -> drive -> main on {chain:.3}");
}

#[test]
fn library_loaded_mid_capture_unwinds() {
    let _lock = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("libdl_fixture.so");
    build_c(
        "dlopen_lib.c",
        &lib,
        &["-O2", "-g", "-fomit-frame-pointer", "-shared", "-fPIC"],
    );
    let exe = dir.path().join("dlopen_main");
    build_c(
        "dlopen_main.c",
        &exe,
        &["-O2", "-g", "-fomit-frame-pointer"],
    );
    let out = dir.path().join("dl.pb.gz");
    // The library is opened 1 s into the capture.
    let p = profile(&exe, &[lib.to_str().unwrap(), "3"], "3", &[], &out);
    let in_lib: Vec<&rprof_bpf::pprof::Sample> = p
        .sample
        .iter()
        .filter(|s| stack_names(&p, s).first().map(String::as_str) == Some("lib_hot"))
        .collect();
    let n: i64 = in_lib.iter().map(|s| s.value[0]).sum();
    assert!(n > 100, "{n} samples in the library");
    let whole: i64 = in_lib
        .iter()
        .filter(|s| {
            let names = stack_names(&p, s);
            names.iter().any(|x| x == "lib_run")
                && names.last().map(String::as_str) == Some("_start")
        })
        .map(|s| s.value[0])
        .sum();
    // Samples before the maps were re-read (at most a refresh interval's
    // worth) may stop in the new library.
    assert!(
        whole as f64 >= 0.9 * n as f64,
        "{whole} of {n} library samples unwound to _start"
    );
}

#[test]
fn strict_dwarf_mode_stops_where_no_table_covers() {
    let go = go127();
    let _lock = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("gohot");
    build_go(&go, "gohot", &exe, &[]);
    // Go code has no .eh_frame: auto falls back to frame pointers and gets
    // whole stacks; dwarf stops at once.
    let out = dir.path().join("auto.pb.gz");
    let p = profile(&exe, &["-seconds", "5"], "2", &[], &out);
    assert!(root_share(&p) >= 0.98, "auto: {}", root_share(&p));
    assert!(chain_share(&p, &["main.hotLoop", "main.outer", "main.run", "main.main"]) > 0.6);
    let out = dir.path().join("dwarf.pb.gz");
    let p = profile(&exe, &["-seconds", "4"], "1", &["--unwind", "dwarf"], &out);
    assert!(root_share(&p) < 0.1, "dwarf: {}", root_share(&p));
}

/// Share of the samples containing `leaf` whose stack holds `chain` in
/// order (leaf-first, other frames allowed between) and ends at a root.
fn ordered_share(p: &Profile, leaf: &str, chain: &[&str]) -> (f64, i64) {
    let (mut with_leaf, mut whole) = (0, 0);
    for s in &p.sample {
        let names = stack_names(p, s);
        if !names.iter().any(|n| n == leaf) {
            continue;
        }
        with_leaf += s.value[0];
        let mut rest = names.iter();
        let in_order = chain.iter().all(|c| rest.any(|n| n == c));
        let rooted = names.last().is_some_and(|n| ROOTS.contains(&n.as_str()));
        if in_order && rooted {
            whole += s.value[0];
        }
    }
    (whole as f64 / with_leaf.max(1) as f64, with_leaf)
}

/// Go → C (built without frame pointers) → Go: the stack must run
/// unbroken from the Go callback, through cgo's `crosscall2` and the C
/// frames, back to `main.main` and the goroutine's root, for both Go
/// toolchains (their `crosscall2` frames differ).
#[test]
fn cgo_callback_stack_is_continuous() {
    let _lock = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    for (version, go) in [("1.27", go127()), ("1.19", go119())] {
        let exe = dir.path().join(format!("gocgo-{version}"));
        build_cgo(&go, "gocgo", &exe);
        let out = dir.path().join(format!("cgo-{version}.pb.gz"));
        // At 1000 Hz: about 500 of the 3,000 samples land in C, well clear
        // of the floors below (at 100 Hz, C got 49 in one run).
        let p = profile(
            &exe,
            &["-seconds", "10"],
            "3",
            &["--user-only", "-F", "1000"],
            &out,
        );

        let callback = [
            "main.goSpin",
            "runtime.cgocallback",
            "crosscall2",
            "goCallback",
            "c_middle",
            "c_outer",
            "runtime.asmcgocall",
            "main.callC",
            "main.main",
        ];
        let (share, n) = ordered_share(&p, "main.goSpin", &callback);
        eprintln!(
            "go {version}: Go→C→Go stack whole on {:.1}% of {n} callback samples",
            share * 100.0
        );
        assert!(n >= 50, "only {n} samples in the Go callback");
        assert!(share >= 0.95, "go {version}: callback chain on {share:.3}");

        let c_side = ["c_spin", "c_middle", "c_outer", "main.callC", "main.main"];
        let (share, n) = ordered_share(&p, "c_spin", &c_side);
        eprintln!(
            "go {version}: Go→C stack whole on {:.1}% of {n} C samples",
            share * 100.0
        );
        assert!(n >= 50, "only {n} samples in C");
        assert!(share >= 0.95, "go {version}: C chain on {share:.3}");
    }

    // Frame pointers alone cannot cross the C frames on the way back
    // (Go 1.27's crosscall2 has a doubled frame link): the rules for it
    // are what makes the difference.
    let exe = dir.path().join("gocgo-1.27");
    let out = dir.path().join("cgo-fp.pb.gz");
    let p = profile(
        &exe,
        &["-seconds", "10"],
        "2",
        &["--user-only", "--unwind", "fp"],
        &out,
    );
    let (share, _) = ordered_share(&p, "main.goSpin", &["main.goSpin", "main.main"]);
    assert!(share < 0.5, "frame pointers alone: {share:.3}");
}
