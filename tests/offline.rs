//! Offline symbolization: capture raw on the node, name frames later from
//! files found by build ID.

mod harness;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use harness::kernel::*;
use harness::*;

fn symbolize(args: &[&str]) -> std::process::Output {
    let o = rprof().arg("symbolize").args(args).output().unwrap();
    assert_ok(&o);
    o
}

fn run_and_capture(exe: &Path, arg: &str, seconds: &str, out: &Path, extra: &[&str]) {
    let t = Target::spawn(exe, &[arg]);
    assert_ok(&record_pid(t.pid(), seconds, out, extra));
}

/// Whether the ELF at `path` has a section of this name.
fn has_section(path: &Path, name: &str) -> bool {
    use object::{Object, ObjectSection};
    let data = std::fs::read(path).unwrap();
    let file = object::File::parse(&*data).unwrap();
    let found = file.sections().any(|s| s.name() == Ok(name));
    found
}

/// A binary whose only symbols are its MiniDebugInfo (`.gnu_debugdata`,
/// the Fedora and RHEL layout) is named live and by `symbolize`.
#[test]
fn minidebuginfo_names_frames_live_and_offline() {
    let _lock = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let deploy = dir.path().join("deploy");
    std::fs::create_dir(&deploy).unwrap();
    let exe = deploy.join("spin-fedora");
    build_c_minidebuginfo("spin.c", &exe, &["-O2", "-g", "-fno-omit-frame-pointer"]);
    // The Fedora layout: nothing to name frames with but .gnu_debugdata.
    assert!(has_section(&exe, ".gnu_debugdata"));
    for gone in [".symtab", ".debug_info", ".debug_line", ".gnu_debuglink"] {
        assert!(!has_section(&exe, gone), "{gone} is still there");
    }

    let t = Target::spawn(&exe, &["30"]);
    let live = dir.path().join("live.pb.gz");
    assert_ok(&record_pid(t.pid(), "2", &live, &[]));
    let raw = dir.path().join("raw.pb.gz");
    assert_ok(&record_pid(t.pid(), "2", &raw, &["--no-symbolize"]));
    drop(t);
    let sym = dir.path().join("sym.pb.gz");
    symbolize(&[
        raw.to_str().unwrap(),
        "-o",
        sym.to_str().unwrap(),
        "--binary",
        deploy.to_str().unwrap(),
    ]);
    for (how, file) in [("live", &live), ("symbolize", &sym)] {
        let p = load(file);
        let hot = flat_share(&p, "hot_inner");
        assert!(hot > 0.9, "{how}: hot_inner leaf share {hot:.2}");
        // The callers' symbols come from the same table (no DWARF: no lines).
        for caller in ["compute", "work", "main"] {
            let cum = cum_share(&p, caller);
            assert!(cum > 0.9, "{how}: {caller} on {cum:.2} of the stacks");
        }
        let m = p
            .mapping
            .iter()
            .find(|m| p.str(m.filename).ends_with("/spin-fedora"))
            .expect("the binary's mapping");
        assert!(m.has_functions, "{how}");
    }
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
    assert_inline_fixture_named_as_live(&live, &sym);

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
    let go = go127();
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
    let go = go127();
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

fn symbol_addr(syms: &[KernelSym], name: &str) -> u64 {
    syms.iter().find(|s| s.name == name).unwrap().addr
}

/// All names kallsyms gives the function containing `addr` (aliases share
/// an address, and either may be reported).
fn names_at(syms: &[KernelSym], addr: u64) -> BTreeSet<&str> {
    let i = syms.partition_point(|s| s.addr <= addr);
    let start = syms[i - 1].addr;
    syms.iter()
        .filter(|s| s.addr == start)
        .map(|s| s.name.as_str())
        .collect()
}

fn symbolize_output(args: &[&str]) -> std::process::Output {
    rprof().arg("symbolize").args(args).output().unwrap()
}

#[test]
fn kernel_frames_from_vmlinux_despite_kaslr_slide() {
    let _lock = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name);
    let s = |p: &PathBuf| p.to_str().unwrap().to_owned();
    let bin = d("bin");
    std::fs::create_dir(&bin).unwrap();
    let exe = bin.join("spin");
    build_c("spin.c", &exe, &["-O2", "-g", "-fno-omit-frame-pointer"]);
    // write(2) to /dev/null in a loop: most samples are in the kernel.
    let t = Target::spawn(&exe, &["8", "sys"]);
    let (live, raw) = (d("live.pb.gz"), d("raw.pb.gz"));
    assert_ok(&record_pid(t.pid(), "2", &live, &[]));
    assert_ok(&record_pid(t.pid(), "2", &raw, &["--no-symbolize"]));
    drop(t);

    // The raw kernel mapping records the runtime text: start and offset
    // are _stext (perf's convention), the limit _etext.
    let syms = kernel_text_symbols();
    let (stext, etext) = (symbol_addr(&syms, "_stext"), symbol_addr(&syms, "_etext"));
    let rawp = load(&raw);
    let k = rawp
        .mapping
        .iter()
        .find(|m| rawp.str(m.filename) == "[kernel.kallsyms]")
        .unwrap();
    assert_eq!(
        (k.memory_start, k.memory_limit, k.file_offset),
        (stext, etext, stext)
    );
    let id = rprof_bpf::symbolize::kernel::build_id().unwrap();
    assert_eq!(rawp.str(k.build_id), id);
    assert!(kernel_names(&rawp).values().all(Option::is_none));

    // A vmlinux linked 16 MiB below where the kernel runs.
    let slide = 0x100_0000;
    let vmlinux = d("vmlinux");
    write_vmlinux(&vmlinux, &syms, &kernel_build_id(), slide);
    let sym = d("sym.pb.gz");
    let args = [
        s(&raw),
        "-o".into(),
        s(&sym),
        "--vmlinux".into(),
        s(&vmlinux),
        "--binary".into(),
        s(&bin),
    ];
    let o = symbolize_output(&args.each_ref().map(String::as_str));
    assert_ok(&o);
    let summary = String::from_utf8_lossy(&o.stderr);
    let line = summary
        .lines()
        .find(|l| l.contains("[kernel.kallsyms]"))
        .unwrap_or_else(|| panic!("{summary}"));
    assert!(
        line.contains(&format!("found {} (--vmlinux)", vmlinux.display()))
            && line.contains("KASLR slide +0x1000000"),
        "{line}"
    );

    // Every kernel frame in the text is named, as kallsyms names it: the
    // same function (or an alias at its address) as the live capture.
    let symp = load(&sym);
    let named = kernel_names(&symp);
    let in_text: Vec<_> = named
        .iter()
        .filter(|((a, _), _)| (stext..etext).contains(a))
        .collect();
    assert!(in_text.len() >= 10, "{} kernel locations", in_text.len());
    for (&(addr, leaf), name) in &in_text {
        let lookup = if leaf { addr } else { addr - 1 };
        let name = name
            .as_deref()
            .unwrap_or_else(|| panic!("{addr:#x} unnamed"));
        assert!(
            names_at(&syms, lookup).contains(name),
            "{addr:#x}: {name} vs {:?}",
            names_at(&syms, lookup)
        );
    }
    // Outside the kernel's own text (modules, BPF) the vmlinux knows
    // nothing: those frames stay addresses.
    assert!(named
        .iter()
        .all(|((a, _), n)| (stext..etext).contains(a) || n.is_none()));
    let counts = format!("{}/{} locations named", in_text.len(), named.len());
    assert!(line.contains(&counts), "{line}");
    let livep = load(&live);
    let live_named = kernel_names(&livep);
    let mut common = 0;
    for (key, name) in &named {
        if let (Some(a), Some(Some(b))) = (name, live_named.get(key)) {
            let lookup = if key.1 { key.0 } else { key.0 - 1 };
            assert!(
                names_at(&syms, lookup).is_superset(&[a.as_str(), b.as_str()].into()),
                "{:#x}: vmlinux {a}, live {b}",
                key.0
            );
            common += 1;
        }
    }
    assert!(common >= 5, "{common} kernel locations in both captures");
    // The syscall path, above the user code that made the call.
    for (p, f, min) in [
        (&symp, "ksys_write", 0.1),
        (&symp, "do_syscall_64", 0.3),
        (&livep, "ksys_write", 0.1),
        (&livep, "do_syscall_64", 0.3),
    ] {
        assert!(cum_share(p, f) > min, "{f}: {}", cum_share(p, f));
    }
    assert!(symp.sample.iter().any(|smp| {
        let n = stack_names(&symp, smp);
        let k = n.iter().position(|x| x == "ksys_write");
        let w = n.iter().position(|x| x == "work");
        matches!((k, w), (Some(k), Some(w)) if k < w)
    }));
    let m = symp
        .mapping
        .iter()
        .find(|m| symp.str(m.filename) == "[kernel.kallsyms]")
        .unwrap();
    assert!(m.has_functions && !m.has_line_numbers);

    // Idempotent.
    let again = d("again.pb.gz");
    let args = [
        s(&sym),
        "-o".into(),
        s(&again),
        "--vmlinux".into(),
        s(&vmlinux),
    ];
    assert_ok(&symbolize_output(&args.each_ref().map(String::as_str)));
    assert_eq!(load(&again), symp);

    // go tool pprof reads both the raw and the symbolized profile.
    let go = go127();
    for p in [&raw, &sym] {
        let o = go_pprof(&go, &["-top", p.to_str().unwrap()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let o = go_pprof(&go, &["-top", sym.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("ksys_write"));
}

#[test]
fn vmlinux_with_another_build_id_is_refused_and_bad_files_are_named() {
    let _lock = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name);
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    let exe = d("spin");
    build_c("spin.c", &exe, &["-O2", "-g", "-fno-omit-frame-pointer"]);
    let raw = d("raw.pb.gz");
    let t = Target::spawn(&exe, &["4", "sys"]);
    assert_ok(&record_pid(t.pid(), "1", &raw, &["--no-symbolize"]));
    drop(t);
    let syms = kernel_text_symbols();

    // Same symbols, one build ID byte off: another kernel build.
    let mut other = kernel_build_id();
    other[0] ^= 0xff;
    let wrong = d("vmlinux-other");
    write_vmlinux(&wrong, &syms, &other, 0x200000);
    let out = d("wrong.pb.gz");
    let o = symbolize_output(&[&s(&raw), "-o", &s(&out), "--vmlinux", &s(&wrong)]);
    assert_ok(&o);
    let summary = String::from_utf8_lossy(&o.stderr);
    let line = summary
        .lines()
        .find(|l| l.contains("[kernel.kallsyms]"))
        .unwrap_or_else(|| panic!("{summary}"));
    let other_hex = rprof_bpf::process::buildid::hex(&other);
    assert!(
        line.contains(&format!("{} has build ID {other_hex}", wrong.display()))
            && line.contains("refused")
            && line.contains(" 0/"),
        "{line}"
    );
    let p = load(&out);
    let names = kernel_names(&p);
    assert!(!names.is_empty() && names.values().all(Option::is_none));
    let k = p
        .mapping
        .iter()
        .find(|m| p.str(m.filename) == "[kernel.kallsyms]")
        .unwrap();
    assert!(!k.has_functions);
    // Frames stayed addresses, so the right file can still name them.
    let right = d("vmlinux");
    write_vmlinux(&right, &syms, &kernel_build_id(), 0x200000);
    let fixed = d("fixed.pb.gz");
    let o = symbolize_output(&[&s(&out), "-o", &s(&fixed), "--vmlinux", &s(&right)]);
    assert_ok(&o);
    assert!(kernel_names(&load(&fixed)).values().any(Option::is_some));

    // Unusable files: exit 1, the file named, nothing written.
    let text = d("vmlinux.txt");
    std::fs::write(&text, "not an ELF file\n").unwrap();
    let stripped = d("vmlinux-stripped");
    let st = Command::new("objcopy")
        .args(["--strip-all", &s(&right), &s(&stripped)])
        .status()
        .unwrap();
    assert!(st.success());
    for (file, why) in [
        (d("no-such-vmlinux"), "cannot read vmlinux file"),
        (text, "not a 64-bit little-endian ELF file"),
        (stripped, "no symbol table"),
        // An ELF with symbols, but not a kernel's.
        (exe.clone(), "no _stext symbol"),
    ] {
        let dest = d("never.pb.gz");
        let o = symbolize_output(&[&s(&raw), "-o", &s(&dest), "--vmlinux", &s(&file)]);
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{e}");
        assert!(
            e.contains(&s(&file)) && e.contains(why) && !e.contains("panicked"),
            "{e}"
        );
        assert!(!dest.exists());
    }
}
