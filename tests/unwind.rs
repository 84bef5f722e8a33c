//! The `.eh_frame` unwinder end to end: binaries without frame pointers,
//! profiled for real, must give stacks that reach the thread's root.

mod harness;

use std::path::Path;
use std::process::Command;

use harness::*;
use rprof_bpf::pprof::Profile;

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

/// A system-wide recorder running in the background, its stderr (with the
/// unwinder's debug lines) collected as it comes.
struct LiveRecorder {
    child: std::process::Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl LiveRecorder {
    /// Starts `rprof-bpf ARGS` and waits until it samples.
    fn start(args: &[&str]) -> LiveRecorder {
        use std::io::BufRead;
        let mut child = rprof()
            .args(args)
            .env("RUST_LOG", "rprof_bpf::unwind=debug")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("running rprof-bpf");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        let stderr = child.stderr.take().unwrap();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                sink.lock().unwrap().push(line);
            }
        });
        let r = LiveRecorder {
            child,
            lines,
            reader: Some(reader),
        };
        assert!(
            r.wait_for(std::time::Duration::from_secs(60), |l| l
                .iter()
                .any(|l| l.starts_with("Profiling"))),
            "the recorder did not start:\n{}",
            r.lines().join("\n")
        );
        r
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits up to `timeout` for `done` to hold on the lines so far.
    fn wait_for(&self, timeout: std::time::Duration, done: impl Fn(&[String]) -> bool) -> bool {
        let end = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < end {
            if done(&self.lines.lock().unwrap()) {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        false
    }

    /// Stops the capture as Ctrl-C would and returns everything it said.
    fn interrupt(self) -> Vec<String> {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        self.wait()
    }

    /// Waits for the capture to end and returns everything it said.
    fn wait(mut self) -> Vec<String> {
        let status = self.child.wait().unwrap();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let lines = self.lines();
        assert!(status.success(), "rprof-bpf failed:\n{}", lines.join("\n"));
        lines
    }
}

impl Drop for LiveRecorder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether the unwinder said it put `file`'s table in the array.
fn table_in(lines: &[String], file: &str) -> bool {
    lines
        .iter()
        .any(|l| l.contains("unwind table of") && l.contains(file) && l.contains(" at rows "))
}

/// The samples of the processes `pids`, and how many reach a thread root.
fn root_share_of(p: &Profile, pids: &[u32]) -> (f64, i64) {
    let (mut n, mut reached) = (0, 0);
    for s in &p.sample {
        let pid = num_label(p, s, "pid").unwrap_or(-1);
        if !pids.iter().any(|&x| i64::from(x) == pid) {
            continue;
        }
        n += s.value[0];
        if stack_names(p, s)
            .last()
            .is_some_and(|f| ROOTS.contains(&f.as_str()))
        {
            reached += s.value[0];
        }
    }
    (reached as f64 / n.max(1) as f64, n)
}

/// User locations of `p` outside every mapping (a user address the
/// profile cannot place: garbage, or a process never seen), among the
/// samples `keep` selects.
fn unmapped_locations(p: &Profile, keep: impl Fn(&rprof_bpf::pprof::Sample) -> bool) -> usize {
    let unmapped: std::collections::HashSet<u64> = p
        .location
        .iter()
        .filter(|l| l.mapping_id == 0)
        .map(|l| l.id)
        .collect();
    let mut seen: std::collections::HashSet<u64> = std::collections::HashSet::new();
    for s in p.sample.iter().filter(|s| keep(s)) {
        seen.extend(
            s.location_id
                .iter()
                .filter(|id| unmapped.contains(id))
                .copied(),
        );
    }
    seen.len()
}

/// User locations outside every mapping in stacks that also have a mapped
/// user frame: garbage return addresses. (A process that exited before
/// its maps could be read has no mapped frame at all: those are not
/// garbage, only unplaceable.)
fn garbage_locations(p: &Profile) -> usize {
    let kernel: std::collections::HashSet<u64> = p
        .mapping
        .iter()
        .filter(|m| p.str(m.filename) == "[kernel.kallsyms]")
        .map(|m| m.id)
        .collect();
    let by_id: std::collections::HashMap<u64, u64> =
        p.location.iter().map(|l| (l.id, l.mapping_id)).collect();
    let mut garbage = std::collections::HashSet::new();
    for s in &p.sample {
        let user: Vec<(u64, u64)> = s
            .location_id
            .iter()
            .map(|id| (*id, by_id.get(id).copied().unwrap_or(0)))
            .filter(|(_, m)| !kernel.contains(m))
            .collect();
        if user.iter().any(|(_, m)| *m != 0) {
            garbage.extend(user.iter().filter(|(_, m)| *m == 0).map(|(id, _)| *id));
        }
    }
    garbage.len()
}

/// Big tables: clang keeps 47 MiB of unwind tables busy (libclang-cpp
/// 1.35M rows, libLLVM 1.17M, libz3 0.39M), more than the old fixed table
/// held. A system-wide capture with the default budget, while clang++-19
/// compiles: once the profiler has LLVM's tables in (the warm-up: building
/// them takes a second or more on a busy machine, and its cost is in the
/// benchmarks), every compile after is unwound to `_start`, and no stack
/// of clang's has an address outside its mappings, nor any stack of any
/// process a garbage return address.
#[test]
fn big_tables_clang_compiles_reach_the_root() {
    let clang = clangxx19();
    let _lock = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let src = fixtures().join("cxx/bigcompile.cpp");
    let obj = dir.path().join("bigcompile.o");
    let compile = || {
        Command::new(&clang)
            .args(["-O2", "-c"])
            .arg(&src)
            .arg("-o")
            .arg(&obj)
            .spawn()
            .expect("running clang++-19")
    };
    let out = dir.path().join("clang.pb.gz");
    let rec = LiveRecorder::start(&["--seconds", "600", "-o", out.to_str().unwrap()]);

    // Warm-up: compile until the profiler has LLVM's tables.
    let warm = |l: &[String]| table_in(l, "libLLVM.so.19") && table_in(l, "libclang-cpp.so.19");
    let start = std::time::Instant::now();
    let mut warmups = 0;
    while !warm(&rec.lines()) {
        let lines = rec.lines();
        let too_big = lines
            .iter()
            .any(|l| l.contains("libLLVM.so.19") && l.contains("larger than the whole"));
        assert!(
            !too_big && start.elapsed() < std::time::Duration::from_secs(300),
            "LLVM's unwind tables never went in:\n{}",
            lines.join("\n")
        );
        compile().wait().unwrap();
        warmups += 1;
    }
    // Measured: compiles that start with the tables in place. A new
    // process is unwound with frame pointers until the capture tick after
    // its first sample gives it its mapping list (up to 200 ms), so the
    // compiles last a few seconds (the fixture uses std::regex) for that
    // start to weigh a few percent, not the 15% it weighed for 1 s ones.
    let mut measured = Vec::new();
    for _ in 0..3 {
        let mut c = compile();
        measured.push(c.id());
        assert!(c.wait().unwrap().success(), "clang++-19 failed");
    }
    let lines = rec.interrupt();
    let p = load(&out);

    let (share, n) = root_share_of(&p, &measured);
    let summary: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("unwind tables:") || l.starts_with("rprof-bpf:"))
        .collect();
    let is_clang = |s: &rprof_bpf::pprof::Sample| {
        str_label(&p, s, "process").is_some_and(|c| c.starts_with("clang"))
    };
    let clang_unmapped = unmapped_locations(&p, is_clang);
    let garbage = garbage_locations(&p);
    eprintln!(
        "clang: {:.1}% of {n} samples of {} compiles reach the root (after {warmups} warm-up compiles); {clang_unmapped} unmapped locations in clang's stacks; in all stacks {} unmapped, {garbage} of them next to mapped frames; {summary:?}",
        share * 100.0,
        measured.len(),
        unmapped_locations(&p, |_| true),
    );
    assert!(n >= 100, "only {n} samples of the measured compiles");
    assert!(share >= 0.9, "{share:.3} of clang's samples reach the root");
    assert_eq!(clang_unmapped, 0, "clang's stacks hold unmapped addresses");
    assert_eq!(garbage, 0, "stacks hold garbage return addresses");
}

/// A fixture with an unwind table of its own of 8,000 rows: the qsort
/// program linked with 4,000 small assembly functions, each with its own
/// CFI. (Small, so that compiling it takes little of each run even in a
/// debug build of the profiler on a busy machine.)
fn build_padded_qsort(exe: &Path) {
    let dir = exe.parent().unwrap();
    let pad = dir.join("pad.s");
    let mut asm = String::from("\t.text\n");
    for i in 0..4_000 {
        asm.push_str(&format!(
            "\t.globl pad{i}\n\t.type pad{i}, @function\npad{i}:\n\t.cfi_startproc\n\tpush %rbx\n\t.cfi_adjust_cfa_offset 8\n\tpop %rbx\n\t.cfi_adjust_cfa_offset -8\n\tret\n\t.cfi_endproc\n"
        ));
    }
    asm.push_str("\t.section .note.GNU-stack,\"\",@progbits\n");
    std::fs::write(&pad, asm).unwrap();
    build_c(
        "qsort.c",
        exe,
        &["-O2", "-g", "-fomit-frame-pointer", pad.to_str().unwrap()],
    );
}

/// Rows of the unwind tables of every binary `pid` maps, each with its
/// header row, as the profiler would place them.
fn table_rows(pid: u32) -> Vec<(String, usize)> {
    let mut procs = rprof_bpf::process::ProcessTable::new();
    let p = procs.observe(pid).expect("the fixture is running");
    let mut seen = std::collections::HashSet::new();
    p.binaries
        .values()
        .filter(|b| seen.insert(b.key))
        .map(|b| {
            let data = b
                .data
                .as_deref()
                .expect("the fixture's binaries are readable");
            let rows = rprof_bpf::unwind::table::compile(data).unwrap().len();
            (b.path.clone(), rows + usize::from(rows > 0))
        })
        .collect()
}

/// Eviction: the budget holds the tables of libc, the loader and one of
/// these fixtures, not two fixtures. Four copies of the
/// fixture (four binaries to the profiler: different files) are started
/// together and profiled by pid, then run one after another: each is
/// unwound to `_start` in turn. Its table comes back when it is sampled
/// (it was evicted while the others were loaded), over the rows of the
/// one that exited before it.
#[test]
fn small_budget_evicts_exited_binaries_and_reuses_their_rows() {
    use std::io::Write;
    let _lock = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("padded-1");
    build_padded_qsort(&first);
    let exes: Vec<std::path::PathBuf> = (1..=4)
        .map(|i| {
            let e = dir.path().join(format!("padded-{i}"));
            if i > 1 {
                std::fs::copy(&first, &e).unwrap();
            }
            e
        })
        .collect();
    let mut targets: Vec<Target> = exes
        .iter()
        .map(|exe| {
            let mut cmd = Command::new(exe);
            cmd.args(["8", "wait"]).stdin(std::process::Stdio::piped());
            Target::start(cmd)
        })
        .collect();
    let pids: Vec<u32> = targets.iter().map(Target::pid).collect();
    let list: Vec<String> = pids.iter().map(u32::to_string).collect();
    let list = list.join(",");
    // One process's tables and half a fixture's more.
    let tables = table_rows(pids[0]);
    let own = tables
        .iter()
        .find(|(path, _)| path.ends_with("padded-1"))
        .map(|t| t.1)
        .unwrap();
    let rows: usize = tables.iter().map(|t| t.1).sum::<usize>() + own / 2;
    let budget = format!("{}KiB", (rows * 16).div_ceil(1024));
    eprintln!("tables {tables:?}: budget {budget}");
    let out = dir.path().join("evict.pb.gz");
    let rec = LiveRecorder::start(&[
        "--pid",
        &list,
        "--seconds",
        "300",
        "--unwind-memory",
        &budget,
        "-o",
        out.to_str().unwrap(),
    ]);
    for t in &mut targets {
        let mut stdin = t.child.stdin.take().unwrap();
        stdin.write_all(b"go\n").unwrap();
        t.wait();
    }
    // Every target has exited: the capture ends by itself.
    let lines = rec.wait();
    let p = load(&out);

    for (exe, &pid) in exes.iter().zip(&pids) {
        let (share, n) = root_share_of(&p, &[pid]);
        eprintln!(
            "{}: {:.1}% of {n} samples reach the root",
            exe.display(),
            share * 100.0
        );
        assert!(n >= 50, "only {n} samples of {}", exe.display());
        assert!(share >= 0.9, "{}: {share:.3} reach the root", exe.display());
    }
    // Where each table went last: after the first, over the rows of a
    // table that was there before.
    let ranges: Vec<(u32, u32)> = exes
        .iter()
        .map(|exe| {
            let name = exe.to_str().unwrap();
            let line = lines
                .iter()
                .rfind(|l| l.contains(&format!("unwind table of {name} in:")))
                .unwrap_or_else(|| panic!("no table for {name}:\n{}", lines.join("\n")));
            let rows = line.split(" at rows ").nth(1).unwrap();
            let (a, b) = rows.split_once("..").unwrap();
            let b = b.split(',').next().unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        })
        .collect();
    eprintln!("rows: {ranges:?}");
    for i in 1..ranges.len() {
        let (a, b) = ranges[i];
        assert!(
            ranges[..i].iter().any(|&(c, d)| a < d && c < b),
            "the table of {} did not reuse an earlier table's rows: {ranges:?}",
            exes[i].display()
        );
    }
    let summary = lines
        .iter()
        .find(|l| l.starts_with("unwind tables:"))
        .expect("the unwind summary line");
    eprintln!("{summary}");
    let words: Vec<&str> = summary.split_whitespace().collect();
    let evicted: u64 = words
        .iter()
        .position(|&w| w == "evicted")
        .and_then(|i| words.get(i.checked_sub(1)?))
        .and_then(|n| n.trim_start_matches(';').parse().ok())
        .unwrap_or(0);
    assert!(evicted >= 3, "{summary}");
    assert!(!summary.contains(" 0.0 MiB reused"), "{summary}");
}
