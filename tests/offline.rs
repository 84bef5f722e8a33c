//! Offline symbolization: capture raw on the node, name frames later from
//! files found by build ID.

mod harness;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use harness::*;
use rprof_bpf::pprof::Profile;

/// (function, file, line) of every line of a location, innermost first.
type Lines = Vec<(String, String, i64)>;

/// Symbolized lines per file offset for the mapping whose file name ends
/// with `name`.
fn lines_by_offset(p: &Profile, name: &str) -> HashMap<u64, Lines> {
    let m = p
        .mapping
        .iter()
        .find(|m| p.str(m.filename).ends_with(name))
        .unwrap_or_else(|| panic!("no mapping for {name}"));
    p.location
        .iter()
        .filter(|l| l.mapping_id == m.id && !l.line.is_empty())
        .map(|l| {
            let lines = l
                .line
                .iter()
                .map(|ln| {
                    let f = p.function.iter().find(|f| f.id == ln.function_id).unwrap();
                    (
                        p.str(f.name).to_owned(),
                        p.str(f.filename).to_owned(),
                        ln.line,
                    )
                })
                .collect();
            (l.address - m.memory_start + m.file_offset, lines)
        })
        .collect()
}

fn symbolize(args: &[&str]) -> std::process::Output {
    let o = rprof().arg("symbolize").args(args).output().unwrap();
    assert_ok(&o);
    o
}

fn gnu_build_id(path: &Path) -> String {
    rprof_bpf::process::buildid::read(&std::fs::read(path).unwrap())
        .gnu
        .expect("a GNU build ID")
}

fn run_and_capture(exe: &Path, arg: &str, seconds: &str, out: &Path, extra: &[&str]) {
    let t = Target::spawn(exe, &[arg]);
    assert_ok(&record_pid(t.pid(), seconds, out, extra));
}

#[test]
fn split_debug_info_matches_live_symbolization() {
    let _lock = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("inline");
    build_c("inline.c", &full, &["-O2", "-g", "-fno-omit-frame-pointer"]);
    // Split: debug info to DIR/.build-id/xx/rest.debug, code stripped.
    let stripped_dir = dir.path().join("deploy");
    std::fs::create_dir(&stripped_dir).unwrap();
    let stripped = stripped_dir.join("inline");
    let dbg = dir.path().join("inline.debug");
    let id = gnu_build_id(&full);
    for args in [
        vec![
            "--only-keep-debug",
            full.to_str().unwrap(),
            dbg.to_str().unwrap(),
        ],
        vec![
            "--strip-all",
            full.to_str().unwrap(),
            stripped.to_str().unwrap(),
        ],
    ] {
        assert!(Command::new("objcopy")
            .args(&args)
            .status()
            .unwrap()
            .success());
    }
    let debug_dir = dir.path().join("debug");
    let bid = debug_dir.join(".build-id").join(&id[..2]);
    std::fs::create_dir_all(&bid).unwrap();
    std::fs::rename(&dbg, bid.join(format!("{}.debug", &id[2..]))).unwrap();
    assert_eq!(gnu_build_id(&stripped), id);

    let live = dir.path().join("live.pb.gz");
    run_and_capture(&full, "5", "2", &live, &[]);
    let raw = dir.path().join("raw.pb.gz");
    run_and_capture(&stripped, "5", "2", &raw, &["--no-symbolize"]);
    let sym = dir.path().join("sym.pb.gz");
    let o = symbolize(&[
        raw.to_str().unwrap(),
        "-o",
        sym.to_str().unwrap(),
        "--debug-dir",
        debug_dir.to_str().unwrap(),
    ]);
    let summary = String::from_utf8_lossy(&o.stderr);
    assert!(summary.contains(".build-id/xx/rest.debug"), "{summary}");

    let live = load(&live);
    let sym = load(&sym);
    let a = lines_by_offset(&live, "/inline");
    let b = lines_by_offset(&sym, "/inline");
    let common: Vec<&u64> = a.keys().filter(|k| b.contains_key(k)).collect();
    assert!(!common.is_empty());
    for k in &common {
        assert_eq!(a[k], b[k], "offset {k:#x}");
    }
    let names = |m: &HashMap<u64, Lines>| -> BTreeSet<String> {
        m.values().flatten().map(|l| l.0.clone()).collect()
    };
    assert_eq!(names(&a), names(&b));
    assert!(names(&b).is_superset(&["step", "run", "main"].map(String::from).into()));
    // The inlined frame comes first, then the function it is inlined into,
    // with file and line from DWARF.
    assert!(b.values().any(|l| l.len() >= 2
        && l[0].0 == "step"
        && l[1].0 == "run"
        && l[0].1.ends_with("inline.c")
        && l[0].2 > 0));
    let m = sym
        .mapping
        .iter()
        .find(|m| sym.str(m.filename).ends_with("/inline"))
        .unwrap();
    assert!(m.has_functions && m.has_inline_frames && m.has_line_numbers);

    // Idempotent: symbolizing the result again changes nothing.
    let again = dir.path().join("again.pb.gz");
    symbolize(&[
        dir.path().join("sym.pb.gz").to_str().unwrap(),
        "-o",
        again.to_str().unwrap(),
        "--debug-dir",
        debug_dir.to_str().unwrap(),
    ]);
    assert_eq!(load(&again), sym);
}

#[test]
fn wrong_build_id_is_refused_and_binary_dir_scan_finds_right_one() {
    let _lock = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    std::fs::create_dir(&run_dir).unwrap();
    let exe = run_dir.join("spin");
    build_c("spin.c", &exe, &["-O2", "-g", "-fno-omit-frame-pointer"]);
    let raw = dir.path().join("raw.pb.gz");
    run_and_capture(&exe, "4", "1", &raw, &["--no-symbolize"]);

    // Same name, different build: refused.
    let decoys = dir.path().join("decoys");
    std::fs::create_dir(&decoys).unwrap();
    build_c(
        "spin.c",
        &decoys.join("spin"),
        &["-O1", "-g", "-fno-omit-frame-pointer"],
    );
    let out = dir.path().join("wrong.pb.gz");
    let o = symbolize(&[
        raw.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--binary",
        decoys.to_str().unwrap(),
    ]);
    let summary = String::from_utf8_lossy(&o.stderr);
    assert!(
        summary.contains("/run/spin") && summary.contains("not found"),
        "{summary}"
    );
    assert!(lines_by_offset(&load(&out), "/run/spin").is_empty());

    // The right file, renamed, somewhere below a --binary directory.
    let store = dir.path().join("store/a/b");
    std::fs::create_dir_all(&store).unwrap();
    std::fs::copy(&exe, store.join("renamed-binary")).unwrap();
    let out = dir.path().join("right.pb.gz");
    symbolize(&[
        raw.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--binary",
        decoys.to_str().unwrap(),
        "--binary",
        dir.path().join("store").to_str().unwrap(),
    ]);
    let p = load(&out);
    assert!(
        flat_share(&p, "hot_inner") > 0.9,
        "{}",
        flat_share(&p, "hot_inner")
    );
}

/// `go tool pprof` (Go's vendored pprof) cannot read build IDs (its object
/// reader returns none), so it refuses every PPROF_BINARY_PATH candidate of
/// a mapping that has one. What works with it is naming the binary on the
/// command line, which this test checks, on a binary moved away from where
/// the process ran it.
#[test]
fn go_tool_pprof_symbolizes_raw_profile_given_the_binary() {
    let Some(go) = go127() else { return };
    let _lock = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let gone = dir.path().join("gone");
    std::fs::create_dir(&gone).unwrap();
    let exe = gone.join("spin");
    build_c("spin.c", &exe, &["-O2", "-g", "-fno-omit-frame-pointer"]);
    let raw = dir.path().join("raw.pb.gz");
    run_and_capture(&exe, "4", "1", &raw, &["--no-symbolize"]);
    // The binary is not where the process saw it any more.
    let id = gnu_build_id(&exe);
    let store: PathBuf = dir.path().join("binaries");
    std::fs::create_dir_all(store.join(&id)).unwrap();
    std::fs::rename(&exe, store.join(&id).join("spin")).unwrap();
    let moved = store.join(&id).join("spin");
    let o = go_command(&go)
        .args([
            "tool",
            "pprof",
            "-top",
            moved.to_str().unwrap(),
            raw.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    let first = text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("flat"))
        .nth(1)
        .unwrap_or("");
    assert!(first.ends_with("hot_inner"), "{text}");
}

#[test]
fn no_build_id_uses_content_hash_and_kernel_from_kallsyms() {
    let _lock = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("spin-noid");
    build_c(
        "spin.c",
        &exe,
        &[
            "-O2",
            "-g",
            "-fno-omit-frame-pointer",
            "-Wl,--build-id=none",
        ],
    );
    let data = std::fs::read(&exe).unwrap();
    assert!(rprof_bpf::process::buildid::read(&data)
        .preferred()
        .is_none());
    let raw = dir.path().join("raw.pb.gz");
    let mut cmd = Command::new(&exe);
    cmd.args(["4", "sys"]);
    let t = Target::start(cmd);
    assert_ok(&record(&[
        "--pid",
        &t.pid().to_string(),
        "--seconds",
        "1",
        "-q",
        "--no-symbolize",
        "-o",
        raw.to_str().unwrap(),
    ]));
    let p = load(&raw);
    let m = p
        .mapping
        .iter()
        .find(|m| p.str(m.filename) == exe.to_str().unwrap())
        .unwrap();
    assert_eq!(
        p.str(m.build_id),
        rprof_bpf::process::buildid::content_hash(&data)
    );
    let k = p
        .mapping
        .iter()
        .find(|m| p.str(m.filename) == "[kernel.kallsyms]")
        .unwrap();
    assert!(!p.str(k.build_id).is_empty());
    assert!(!k.has_functions);

    let store = dir.path().join("store");
    std::fs::create_dir(&store).unwrap();
    std::fs::copy(&exe, store.join("copy")).unwrap();
    let ks = dir.path().join("kallsyms");
    std::fs::copy("/proc/kallsyms", &ks).unwrap();
    let out = dir.path().join("sym.pb.gz");
    symbolize(&[
        raw.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--binary",
        store.to_str().unwrap(),
        "--kallsyms",
        ks.to_str().unwrap(),
    ]);
    let p = load(&out);
    assert!(cum_share(&p, "work") > 0.9);
    assert!(cum_share(&p, "ksys_write") > 0.1);
}

#[test]
fn bad_input_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pb.gz");
    std::fs::write(&junk, b"\x1f\x8b\x08\x00garbage").unwrap();
    let o = rprof()
        .args(["symbolize", junk.to_str().unwrap(), "-o"])
        .arg(dir.path().join("o.pb.gz"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("junk.pb.gz") && !e.contains("panicked"), "{e}");
    assert!(!dir.path().join("o.pb.gz").exists());
}

#[test]
fn stripped_go_binary_symbolized_from_a_copy_matches_live() {
    let Some(go) = go127() else { return };
    let _lock = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("goinline");
    build_go(&go, "goinline", &exe, &["-ldflags=-s -w"]);
    let mut cmd = Command::new(&exe);
    cmd.args(["-seconds", "6", "-ready"]);
    let t = Target::start(cmd);
    let pid = t.pid().to_string();
    let live = dir.path().join("live.pb.gz");
    let raw = dir.path().join("raw.pb.gz");
    for (out, extra) in [(&live, None), (&raw, Some("--no-symbolize"))] {
        let mut a = vec![
            "--pid",
            &pid,
            "--seconds",
            "2",
            "-q",
            "-o",
            out.to_str().unwrap(),
        ];
        a.extend(extra);
        assert_ok(&record(&a));
    }
    drop(t);
    // The build directory is gone; a copy under another name is all there is.
    let store = dir.path().join("artifacts");
    std::fs::create_dir(&store).unwrap();
    std::fs::rename(&exe, store.join("service-v1")).unwrap();
    let sym = dir.path().join("sym.pb.gz");
    let o = symbolize(&[
        raw.to_str().unwrap(),
        "-o",
        sym.to_str().unwrap(),
        "--binary",
        store.to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("service-v1"));
    let (live, sym) = (load(&live), load(&sym));
    let a = lines_by_offset(&live, "/goinline");
    let b = lines_by_offset(&sym, "/goinline");
    let common: Vec<&u64> = a.keys().filter(|k| b.contains_key(k)).collect();
    assert!(common.len() >= 3, "{} common locations", common.len());
    for k in common {
        assert_eq!(a[k], b[k], "offset {k:#x}");
    }
    // Named with inline chains, from .gopclntab alone.
    assert!(b.values().any(|l| l.len() >= 2 && l[0].0 == "main.mix"));
    assert!(flat_share(&sym, "main.mix") > 0.5);
}
