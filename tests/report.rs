//! `rprof-bpf report` against the reference: `go tool pprof`.
//!
//! The top table and the traces must match `go tool pprof -top` and
//! `-traces` line for line (values, percentages, order, names, headers) on
//! real profiles. Fixtures in `tests/fixtures/report/`:
//!
//! - `go-cpu.pb.gz`, `go-heap.pb.gz`: written by `goprog/` (a Go program with
//!   direct and mutual recursion, inlined and partially inlined functions)
//!   through its own runtime/pprof. Regenerate with
//!   `cd tests/fixtures/report/goprog && go build -o /tmp/goprog . &&
//!   /tmp/goprog -seconds 4 -cpu ../go-cpu.pb.gz -heap ../go-heap.pb.gz`.
//! - `rprof-go.pb.gz`: one of ours, `rprof-bpf --pid $(pidof goprog)
//!   --seconds 3`, with kernel frames, inlined Go frames and labels.
//! - a synthetic profile built below, with the awkward cases real profiles
//!   rarely have all at once: unsymbolized and nameless frames, kernel
//!   frames, a frame without mapping, `drop_frames`, zero values, empty
//!   stacks, labels.
//!
//! `go tool pprof` comes from the Go toolchain in `.venv-go` (or `go` on
//! PATH); `cargo xtask deps` installs it, and a test fails without it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use rprof_bpf::pprof::{
    self, Function, Label, Line, Location, Mapping, Profile, Sample, ValueType,
};
use rprof_bpf::report::{self, Options, ReportArgs};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/report")
        .join(name)
}

/// The `go` binary; fails the test when there is none.
fn go() -> &'static Path {
    static GO: OnceLock<PathBuf> = OnceLock::new();
    GO.get_or_init(|| {
        let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv-go/bin/go");
        let candidates = [venv, PathBuf::from("go")];
        candidates
            .into_iter()
            .find(|go| {
                Command::new(go)
                    .arg("version")
                    .env("GOTOOLCHAIN", "local")
                    .output()
                    .is_ok_and(|o| o.status.success())
            })
            .expect("the Go toolchain is missing (.venv-go/bin/go or go on PATH): run `cargo xtask deps`")
    })
}

/// How to run pprof: the tool binary `go tool -n pprof` names (twenty
/// times faster than going through `go tool` on every call), else `go tool
/// pprof` itself.
fn pprof_command() -> Command {
    static PPROF: OnceLock<Option<PathBuf>> = OnceLock::new();
    let go = go();
    let tool = PPROF.get_or_init(|| {
        let out = Command::new(go)
            .args(["tool", "-n", "pprof"])
            .env("GOTOOLCHAIN", "local")
            .env("GOPROXY", "off")
            .output()
            .ok()?;
        let path = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
        (out.status.success() && path.is_file()).then_some(path)
    });
    let mut cmd = match tool {
        Some(path) => Command::new(path),
        None => {
            let mut c = Command::new(go);
            c.args(["tool", "pprof"]);
            c
        }
    };
    cmd.env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off")
        .env("GOFLAGS", "");
    cmd
}

/// Output of `go tool pprof -symbolize=none ARGS FILE`. (We never
/// symbolize in `report`, so neither may pprof.)
fn pprof_output(args: &[&str], file: &Path) -> String {
    let out = pprof_command()
        .arg("-symbolize=none")
        .args(args)
        .arg(file)
        .output()
        .expect("running go tool pprof");
    assert!(
        out.status.success(),
        "go tool pprof {args:?} {} failed: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 from pprof")
}

/// Asserts line-by-line equality, showing both outputs on a difference.
fn assert_same(what: &str, ours: &str, theirs: &str) {
    if std::env::var_os("REPORT_SHOW").is_some() {
        eprintln!("=== {what}\n{ours}");
    }
    let (o, t): (Vec<&str>, Vec<&str>) = (ours.lines().collect(), theirs.lines().collect());
    for (i, (a, b)) in o.iter().zip(&t).enumerate() {
        assert_eq!(
            a,
            b,
            "{what}: line {} differs\n--- ours:\n{ours}\n--- go tool pprof:\n{theirs}",
            i + 1
        );
    }
    assert_eq!(
        o.len(),
        t.len(),
        "{what}: line counts differ\n--- ours:\n{ours}\n--- go tool pprof:\n{theirs}"
    );
}

/// Our options and the equivalent pprof flags.
struct Case {
    opts: Options,
    flags: Vec<String>,
}

fn case(nodecount: usize, extra: &[(&str, &str)]) -> Case {
    let mut opts = Options {
        nodecount,
        ..Options::default()
    };
    let mut flags = vec!["-top".to_string(), format!("-nodecount={nodecount}")];
    for &(k, v) in extra {
        match k {
            "focus" => opts.focus = Some(v.into()),
            "ignore" => opts.ignore = Some(v.into()),
            "sample_index" => opts.sample_index = Some(v.into()),
            "unit" => opts.unit = v.into(),
            "noinlines" => opts.noinlines = true,
            "hide" => opts.hide = Some(v.into()),
            "tagfocus" => opts.tagfocus = Some(v.into()),
            "tagignore" => opts.tagignore = Some(v.into()),
            _ => unreachable!("{k}"),
        }
        flags.push(if k == "noinlines" {
            "-noinlines".to_string()
        } else {
            format!("-{k}={v}")
        });
    }
    Case { opts, flags }
}

/// Compares our top table with pprof's for each case; returns how many
/// comparisons ran.
fn compare_top(file: &Path, cases: &[Case]) -> usize {
    let profile = pprof::read_file(file).unwrap();
    let mut ran = 0;
    for c in cases {
        let ours = report::top_table_with(&profile, &c.opts).unwrap();
        let flags: Vec<&str> = c.flags.iter().map(String::as_str).collect();
        let theirs = pprof_output(&flags, file);
        assert_same(&format!("{} {:?}", file.display(), c.flags), &ours, &theirs);
        ran += 1;
    }
    assert_eq!(ran, cases.len());
    ran
}

#[test]
fn top_matches_pprof_on_go_cpu_profile() {
    let file = fixture("go-cpu.pb.gz");
    compare_top(
        &file,
        &[
            case(0, &[]),
            case(20, &[]),
            case(12, &[]),
            case(3, &[]),
            case(1, &[]),
            case(40, &[("unit", "ms")]),
            case(40, &[("unit", "s")]),
            case(40, &[("unit", "us")]),
        ],
    );
}

#[test]
fn top_matches_pprof_with_noinlines() {
    let file = fixture("go-cpu.pb.gz");
    compare_top(
        &file,
        &[case(0, &[("noinlines", "")]), case(8, &[("noinlines", "")])],
    );
}

#[test]
fn top_matches_pprof_with_focus_and_ignore() {
    let file = fixture("go-cpu.pb.gz");
    compare_top(
        &file,
        &[
            case(0, &[("focus", "main\\.fib")]),
            case(10, &[("focus", "even")]),
            case(0, &[("ignore", "runtime")]),
            case(10, &[("focus", "main\\."), ("ignore", "fib|square")]),
            // Matches source file names too, not only functions.
            case(10, &[("focus", "main\\.go")]),
            case(5, &[("focus", "spinInline"), ("noinlines", "")]),
            case(10, &[("focus", "nothing-matches-this")]),
        ],
    );
}

#[test]
fn top_matches_pprof_with_sample_index() {
    let cpu = fixture("go-cpu.pb.gz");
    compare_top(
        &cpu,
        &[
            case(10, &[("sample_index", "samples")]),
            case(10, &[("sample_index", "0")]),
            case(10, &[("sample_index", "1")]),
        ],
    );
    let heap = fixture("go-heap.pb.gz");
    compare_top(
        &heap,
        &[
            case(0, &[]),
            case(0, &[("sample_index", "alloc_space")]),
            case(0, &[("sample_index", "alloc_objects")]),
            case(5, &[("sample_index", "inuse_objects")]),
            case(5, &[("sample_index", "alloc_space"), ("unit", "kB")]),
        ],
    );
}

/// Our own heap and allocs profiles (`rprof-bpf heap|allocs` of the
/// goruntime fixture): every sample type, and allocs' default index.
#[test]
fn top_matches_pprof_on_our_heap_profiles() {
    let heap = fixture("rprof-heap.pb.gz");
    compare_top(
        &heap,
        &[
            case(0, &[]),
            case(0, &[("sample_index", "inuse_space")]),
            case(0, &[("sample_index", "inuse_objects")]),
            case(0, &[("sample_index", "alloc_space")]),
            case(0, &[("sample_index", "alloc_objects")]),
        ],
    );
    compare_top(
        &fixture("rprof-allocs.pb.gz"),
        &[case(0, &[]), case(5, &[("sample_index", "inuse_space")])],
    );
}

#[test]
fn top_matches_pprof_on_our_profile_with_kernel_frames() {
    let file = fixture("rprof-go.pb.gz");
    compare_top(
        &file,
        &[
            case(0, &[]),
            case(20, &[]),
            case(7, &[]),
            case(10, &[("sample_index", "samples")]),
            case(10, &[("noinlines", "")]),
            // Kernel frames, matched by their mapping.
            case(10, &[("focus", "kernel\\.kallsyms")]),
            case(10, &[("ignore", "kallsyms")]),
            case(10, &[("focus", "page_fault|do_syscall")]),
            case(10, &[("unit", "ms")]),
        ],
    );
}

/// Our off-CPU and wall profiles (tests/fixtures/c/offcpu.c): their time
/// types (`off_cpu`, `time`, in ns) are the default sample index, as in
/// pprof, and `samples` and units select like any other.
#[test]
fn top_matches_pprof_on_our_offcpu_and_wall_profiles() {
    for name in ["rprof-offcpu.pb.gz", "rprof-wall.pb.gz"] {
        compare_top(
            &fixture(name),
            &[
                case(10, &[]),
                case(10, &[("sample_index", "samples")]),
                case(10, &[("sample_index", "0")]),
                case(10, &[("unit", "ms")]),
                case(10, &[("focus", "nap_")]),
            ],
        );
    }
}

#[test]
fn top_matches_pprof_with_hide_and_tag_filters() {
    compare_top(
        &fixture("go-cpu.pb.gz"),
        &[
            case(0, &[("hide", "runtime\\.")]),
            case(10, &[("hide", "mix")]),
            case(10, &[("hide", "main\\.go")]),
            case(10, &[("hide", "fib"), ("focus", "fib|direct")]),
            case(10, &[("hide", "nothing-matches-this")]),
        ],
    );
    let ours = fixture("rprof-go.pb.gz");
    compare_top(
        &ours,
        &[
            // Numeric labels: equality and ranges.
            case(10, &[("tagfocus", "tid=12902")]),
            case(10, &[("tagfocus", "tid=12901:12902")]),
            case(10, &[("tagignore", "tid=:12898")]),
            case(10, &[("tagfocus", "pid=12898"), ("tagignore", "tid=12903")]),
            // String labels: by key, and key:value without one.
            case(10, &[("tagfocus", "thread=gopr")]),
            case(10, &[("tagfocus", "process:goprog")]),
            case(10, &[("tagignore", "thread=goprog")]),
            case(10, &[("tagfocus", "thread=nothing")]),
            // Kernel frames hidden by their mapping.
            case(10, &[("hide", "kallsyms")]),
        ],
    );
}

/// Compares our diff top tables with `go tool pprof -top -diff_base`.
fn compare_diff(file: &Path, base: &Path, cases: &[(bool, Case)]) {
    let (p, b) = (
        pprof::read_file(file).unwrap(),
        pprof::read_file(base).unwrap(),
    );
    for (normalize, c) in cases {
        let ours = report::top_table_diff(&p, &b, *normalize, &c.opts).unwrap();
        let mut flags: Vec<String> = c.flags.clone();
        flags.push(format!("-diff_base={}", base.display()));
        if *normalize {
            flags.push("-normalize".into());
        }
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let theirs = pprof_output(&flags, file);
        assert_same(&format!("{} {flags:?}", file.display()), &ours, &theirs);
    }
}

#[test]
fn diff_top_matches_pprof_diff_base() {
    let (go, ours) = (fixture("go-cpu.pb.gz"), fixture("rprof-go.pb.gz"));
    compare_diff(
        &ours,
        &go,
        &[
            (false, case(0, &[])),
            (false, case(10, &[("sample_index", "samples")])),
            (true, case(0, &[])),
            (false, case(10, &[("focus", "main\\.")])),
            (true, case(10, &[("noinlines", "")])),
        ],
    );
    compare_diff(&go, &ours, &[(false, case(15, &[])), (true, case(15, &[]))]);
    // A profile against itself: nothing changed.
    let same = report::top_table_diff(
        &pprof::read_file(&go).unwrap(),
        &pprof::read_file(&go).unwrap(),
        false,
        &Options::default(),
    )
    .unwrap();
    assert!(
        same.contains("Showing nodes accounting for 0, 0% of 3.88s total"),
        "{same}"
    );
    compare_diff(&go, &go, &[(false, case(10, &[]))]);
}

#[test]
fn traces_match_pprof() {
    for (name, flags) in [
        ("go-cpu.pb.gz", vec!["-traces"]),
        (
            "go-heap.pb.gz",
            vec!["-traces", "-sample_index=alloc_space"],
        ),
        ("go-cpu.pb.gz", vec!["-traces", "-focus=fib", "-noinlines"]),
        ("rprof-go.pb.gz", vec!["-traces"]),
    ] {
        let file = fixture(name);
        let profile = pprof::read_file(&file).unwrap();
        let opts = Options {
            sample_index: flags
                .iter()
                .find_map(|f| f.strip_prefix("-sample_index="))
                .map(String::from),
            focus: flags
                .iter()
                .find_map(|f| f.strip_prefix("-focus="))
                .map(String::from),
            noinlines: flags.contains(&"-noinlines"),
            ..Options::default()
        };
        let ours = report::traces(&profile, &opts).unwrap();
        let theirs = pprof_output(&flags, &file);
        assert_same(&format!("{name} {flags:?}"), &ours, &theirs);
    }
}

/// A profile shaped like ours (kernel frames, labels, several binaries)
/// with every awkward case at once.
fn synthetic() -> Profile {
    let mut strings: Vec<String> = vec![String::new()];
    let mut s = |x: &str| -> i64 {
        if let Some(i) = strings.iter().position(|y| y == x) {
            return i as i64;
        }
        strings.push(x.to_string());
        strings.len() as i64 - 1
    };
    let mut p = Profile {
        sample_type: vec![
            ValueType {
                r#type: s("samples"),
                unit: s("count"),
            },
            ValueType {
                r#type: s("cpu"),
                unit: s("nanoseconds"),
            },
        ],
        period_type: Some(ValueType {
            r#type: s("cpu"),
            unit: s("nanoseconds"),
        }),
        period: 10_000_000,
        time_nanos: 1_700_000_000_123_456_789,
        duration_nanos: 2_500_000_000,
        comment: vec![s("rprof-bpf --seconds 2.5"), s("# hidden comment")],
        drop_frames: s("drop_me.*"),
        ..Default::default()
    };
    p.mapping = vec![
        Mapping {
            id: 1,
            memory_start: 0x400000,
            memory_limit: 0x500000,
            filename: s("/usr/bin/app"),
            build_id: s("abcdef0123"),
            has_functions: true,
            ..Default::default()
        },
        Mapping {
            id: 2,
            memory_start: 0x7f0000000000,
            memory_limit: 0x7f0000100000,
            filename: s("/usr/lib/x86_64-linux-gnu/libc.so.6"),
            ..Default::default()
        },
        Mapping {
            id: 3,
            memory_start: 0xffffffff81000000,
            memory_limit: 0xffffffffa0000000,
            filename: s("[kernel.kallsyms]"),
            has_functions: true,
            ..Default::default()
        },
    ];
    let funcs = [
        "main",
        "work",
        "helper",
        "recurse",
        "",
        "do_syscall_64",
        "entry_SYSCALL_64",
        "drop_me_please",
        "below_dropped",
        "zzz_only_zero",
        "tiny",
    ];
    for (i, name) in funcs.iter().enumerate() {
        p.function.push(Function {
            id: i as u64 + 1,
            name: s(name),
            system_name: s(name),
            filename: s(if i < 5 { "src/app.c" } else { "kernel/x.c" }),
            start_line: 10 * i as i64,
        });
    }
    // (mapping, address, functions innermost first)
    let locs: &[(u64, u64, &[u64])] = &[
        (1, 0x401000, &[1]),           // 1 main
        (1, 0x402000, &[2]),           // 2 work
        (1, 0x403000, &[3, 2]),        // 3 helper inlined into work
        (1, 0x404000, &[4]),           // 4 recurse
        (1, 0x405000, &[5]),           // 5 nameless function
        (2, 0x7f0000001000, &[]),      // 6 unsymbolized libc
        (2, 0x7f0000002000, &[]),      // 7 unsymbolized libc, other address
        (3, 0xffffffff81001000, &[6]), // 8 do_syscall_64
        (3, 0xffffffff81002000, &[7]), // 9 entry_SYSCALL_64
        (0, 0x999000, &[]),            // 10 no mapping at all
        (1, 0x406000, &[8]),           // 11 drop_me_please
        (1, 0x407000, &[9]),           // 12 below_dropped
        (1, 0x408000, &[10]),          // 13 zzz_only_zero
        (1, 0x409000, &[3]),           // 14 helper, not inlined
        (1, 0x40a000, &[11]),          // 15 tiny
    ];
    for (i, (m, addr, fs)) in locs.iter().enumerate() {
        p.location.push(Location {
            id: i as u64 + 1,
            mapping_id: *m,
            address: *addr,
            line: fs
                .iter()
                .map(|&f| Line {
                    function_id: f,
                    line: 7,
                    column: 0,
                })
                .collect(),
            is_folded: false,
        });
    }
    let mut labels = |pid: i64, comm: &str| {
        vec![
            Label {
                key: s("pid"),
                num: pid,
                ..Default::default()
            },
            Label {
                key: s("tid"),
                num: pid + 1,
                ..Default::default()
            },
            Label {
                key: s("process"),
                str: s(comm),
                ..Default::default()
            },
            Label {
                key: s("thread"),
                str: s(comm),
                ..Default::default()
            },
        ]
    };
    // (locations leaf first, samples, pid, comm)
    let samples: &[(&[u64], i64, i64, &str)] = &[
        (&[3, 1], 40, 100, "app"),
        (&[2, 1], 25, 100, "app"),
        (&[14, 4, 2, 1], 20, 100, "app"),
        (&[4, 4, 4, 2, 1], 30, 100, "app"),
        (&[4, 3, 4, 2, 1], 7, 100, "app"),
        (&[5, 1], 12, 100, "app"),
        (&[6, 2, 1], 9, 100, "app"),
        (&[7, 6, 1], 8, 100, "app"),
        (&[8, 9, 6, 2, 1], 15, 100, "app"),
        (&[8, 9], 6, 200, "kworker/0:1"),
        (&[10], 3, 200, "kworker/0:1"),
        (&[12, 11, 2, 1], 11, 100, "app"),
        (&[11, 1], 4, 100, "app"),
        (&[13, 1], 0, 100, "app"),
        (&[], 2, 300, "empty"),
        (&[15, 2, 1], 1, 100, "app"),
    ];
    for (locs, n, pid, comm) in samples {
        p.sample.push(Sample {
            location_id: locs.to_vec(),
            value: vec![*n, n * 10_000_000],
            label: labels(*pid, comm),
        });
    }
    p.string_table = strings;
    p
}

fn write_synthetic(dir: &Path) -> PathBuf {
    let path = dir.join("synthetic.pb.gz");
    pprof::write_file_atomic(&path, &pprof::encode_gzip(&synthetic())).unwrap();
    path
}

#[test]
fn top_and_traces_match_pprof_on_synthetic_profile() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_synthetic(dir.path());
    compare_top(
        &file,
        &[
            case(0, &[]),
            case(4, &[]),
            case(0, &[("sample_index", "samples")]),
            case(0, &[("noinlines", "")]),
            case(0, &[("focus", "libc")]),
            case(0, &[("ignore", "kallsyms")]),
            case(0, &[("focus", "helper"), ("ignore", "recurse")]),
            case(0, &[("unit", "ms")]),
        ],
    );
    let profile = pprof::read_file(&file).unwrap();
    let ours = report::traces(&profile, &Options::default()).unwrap();
    let theirs = pprof_output(&["-traces"], &file);
    assert_same("synthetic -traces", &ours, &theirs);
}

#[test]
fn top_has_the_expected_shape() {
    // Independent of Go: the hand-computable facts of the synthetic profile.
    let profile = synthetic();
    let table = report::top_table_with(
        &profile,
        &Options {
            nodecount: 0,
            sample_index: Some("samples".into()),
            ..Options::default()
        },
    )
    .unwrap();
    let row = |name: &str| -> Vec<String> {
        table
            .lines()
            .find(|l| l.split_whitespace().nth(5) == Some(name))
            .unwrap_or_else(|| panic!("no row for {name} in\n{table}"))
            .split_whitespace()
            .map(String::from)
            .collect()
    };
    // recurse: flat 30 + 7 (the leaf of two stacks); cum counted once per
    // sample however deep the recursion: 30 + 7 + 20.
    assert_eq!(row("recurse")[0], "37");
    assert_eq!(row("recurse")[3], "57");
    // helper is inlined into work, and called for real from recurse.
    assert_eq!(row("helper")[6], "(partial-inline)");
    // Frames from the dropped function down are pruned (drop_frames), so
    // "work" is the leaf of the 11-sample stack.
    assert!(!table.contains("below_dropped"));
    assert!(table.contains("[libc.so.6]"));
    assert!(table.contains("<unknown>"));
    assert!(table.contains("[app]"));
    assert!(table
        .starts_with("File: app\nBuild ID: abcdef0123\nrprof-bpf --seconds 2.5\nType: samples\n"));
}

/// All `(y, fg:w)` of the frames of an SVG, checking on the way that the
/// document is well-formed XML.
fn svg_frames(svg: &str) -> Vec<(f64, u64)> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(svg);
    reader.config_mut().check_end_names = true;
    let mut depth = 0i64;
    let mut frames = Vec::new();
    let mut rect = |e: &quick_xml::events::BytesStart| {
        if e.name().as_ref() != b"rect" {
            return;
        }
        let attr = |name: &str| {
            e.try_get_attribute(name)
                .unwrap()
                .map(|a| String::from_utf8(a.value.to_vec()).unwrap())
        };
        if let (Some(y), Some(w)) = (attr("y"), attr("fg:w")) {
            frames.push((y.parse().unwrap(), w.parse().unwrap()));
        }
    };
    loop {
        match reader.read_event().expect("well-formed SVG") {
            Event::Start(e) => {
                depth += 1;
                rect(&e);
            }
            Event::End(_) => depth -= 1,
            Event::Empty(e) => rect(&e),
            Event::Eof => break,
            _ => {}
        }
        assert!(depth >= 0, "unbalanced SVG");
    }
    assert_eq!(depth, 0, "unclosed elements in SVG");
    frames
}

fn total(profile: &Profile, index: usize) -> u64 {
    profile.sample.iter().map(|s| s.value[index] as u64).sum()
}

#[test]
fn flamegraph_is_wellformed_and_adds_up() {
    let profile = pprof::read_file(&fixture("go-cpu.pb.gz")).unwrap();
    let mut svg = Vec::new();
    report::write_flamegraph(&profile, "goprog", &mut svg).unwrap();
    let svg = String::from_utf8(svg).unwrap();
    assert!(svg.contains("main.fib"), "hot function missing");
    assert!(
        svg.contains("main.mix (inline)"),
        "inline frames not marked"
    );
    assert!(svg.contains("goprog"));
    assert!(svg.contains("samples, duration 4"), "subtitle missing");

    let frames = svg_frames(&svg);
    let bottom = frames.iter().map(|f| f.0).fold(f64::MIN, f64::max);
    let all: Vec<u64> = frames
        .iter()
        .filter(|f| f.0 == bottom)
        .map(|f| f.1)
        .collect();
    let cpu_total = total(&profile, 1);
    assert_eq!(all, vec![cpu_total], "the root frame is the whole profile");
    // The frames right above the root split it exactly.
    let level1 = frames
        .iter()
        .map(|f| f.0)
        .filter(|&y| y < bottom)
        .fold(f64::MIN, f64::max);
    let level1_sum: u64 = frames.iter().filter(|f| f.0 == level1).map(|f| f.1).sum();
    assert_eq!(level1_sum, cpu_total);
}

#[test]
fn flamegraph_via_run_is_written_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_synthetic(dir.path());
    let out = dir.path().join("flame.svg");
    let args = ReportArgs {
        flamegraph: Some(out.clone()),
        ..args_for(file)
    };
    report::run(&args).unwrap();
    let svg = std::fs::read_to_string(&out).unwrap();
    svg_frames(&svg);
    // The title names the processes, heaviest first.
    assert!(svg.contains("app, kworker/0:1"), "title: {svg:.2000}");
    // Nothing but the SVG is left in the directory.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn collapsed_adds_up_to_the_total() {
    for name in ["go-cpu.pb.gz", "go-heap.pb.gz"] {
        let profile = pprof::read_file(&fixture(name)).unwrap();
        let mut out = Vec::new();
        report::write_collapsed(&profile, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let mut sum = 0u64;
        for line in text.lines() {
            let (stack, n) = line.rsplit_once(' ').unwrap();
            assert!(!stack.is_empty() && !stack.starts_with(';'));
            sum += n.parse::<u64>().unwrap();
        }
        let last = profile.sample_type.len() - 1;
        assert_eq!(sum, total(&profile, last), "{name}");
        if name == "go-cpu.pb.gz" {
            assert!(text
                .lines()
                .any(|l| l.starts_with("runtime.main;main.main;main.fib;main.fib")));
        }
    }
}

#[test]
fn collapsed_of_synthetic_profile() {
    let profile = synthetic();
    let mut out = Vec::new();
    report::write_collapsed(&profile, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    // Root first; the inlined helper sits under work; identical stacks merge.
    assert!(text.contains("main;work;helper 400000000\n"), "{text}");
    assert!(text.contains("main;work;recurse;recurse;recurse 300000000\n"));
    assert!(
        text.contains("[libc.so.6];entry_SYSCALL_64;do_syscall_64")
            || text.contains("main;[libc.so.6];entry_SYSCALL_64;do_syscall_64")
    );
    // The empty-stack and zero-valued samples cannot be drawn.
    let sum: i64 = text
        .lines()
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<i64>().unwrap())
        .sum();
    assert_eq!(sum, (193 - 2) * 10_000_000);
}

fn args_for(file: PathBuf) -> ReportArgs {
    ReportArgs {
        file,
        top: false,
        nodecount: 20,
        sample_index: None,
        unit: "minimum".into(),
        focus: None,
        ignore: None,
        hide: None,
        tagfocus: None,
        tagignore: None,
        noinlines: false,
        diff_base: None,
        normalize: false,
        http: None,
        flamegraph: None,
        title: None,
        collapsed: false,
        traces: false,
    }
}

/// Bad files, each with a one-line error naming the file.
fn bad_inputs(dir: &Path) -> Vec<(PathBuf, &'static str)> {
    let mut out = Vec::new();
    let mut add = |name: &str, bytes: &[u8], why: &'static str| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        out.push((path, why));
    };
    add("text.txt", b"this is not a profile\n", "garbage");
    add("empty.pb.gz", b"", "empty");
    let gz = std::fs::read(fixture("go-cpu.pb.gz")).unwrap();
    add("truncated.pb.gz", &gz[..gz.len() / 2], "truncated gzip");
    let mut p = synthetic();
    p.sample[0].location_id.push(999);
    add("badloc.pb.gz", &pprof::encode_gzip(&p), "unknown location");
    let mut p = synthetic();
    p.location[0].line[0].function_id = 77;
    add("badfunc.pb.gz", &pprof::encode_gzip(&p), "unknown function");
    let mut p = synthetic();
    p.function[0].name = 10_000;
    add(
        "badstr.pb.gz",
        &pprof::encode_gzip(&p),
        "string out of range",
    );
    let mut p = synthetic();
    p.sample[1].value.pop();
    add("badvalues.pb.gz", &pprof::encode_gzip(&p), "short values");
    let mut p = synthetic();
    p.sample_type.clear();
    p.sample.clear();
    add(
        "nosamples.pb.gz",
        &pprof::encode_gzip(&p),
        "no sample types",
    );
    out
}

#[test]
fn bad_input_gives_one_line_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    for (path, why) in bad_inputs(dir.path()) {
        let err = report::run(&args_for(path.clone())).expect_err(why);
        let msg = format!("{err:#}");
        assert!(
            msg.contains(&path.display().to_string()),
            "{why}: error does not name the file: {msg}"
        );
        assert!(!msg.contains('\n'), "{why}: multi-line error: {msg}");
    }
    let missing = dir.path().join("missing.pb.gz");
    let msg = format!("{:#}", report::run(&args_for(missing.clone())).unwrap_err());
    assert!(msg.contains("missing.pb.gz"), "{msg}");
}

#[test]
fn bad_options_are_clear_errors() {
    let mut args = args_for(fixture("go-cpu.pb.gz"));
    args.sample_index = Some("bogus".into());
    let msg = format!("{:#}", report::run(&args).unwrap_err());
    assert!(
        msg.contains("samples cpu") && msg.contains("go-cpu.pb.gz"),
        "{msg}"
    );
    args.sample_index = Some("7".into());
    let msg = format!("{:#}", report::run(&args).unwrap_err());
    assert!(msg.contains("[0..1]"), "{msg}");
    args.sample_index = None;
    args.focus = Some("(".into());
    let msg = format!("{:#}", report::run(&args).unwrap_err());
    assert!(msg.contains("focus"), "{msg}");
}

/// A tiny deterministic generator for the corruption test.
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn corrupted_profiles_never_panic() {
    use prost::Message;
    let base = synthetic();
    let raw = base.encode_to_vec();
    let mut rng = XorShift(0x9e3779b97f4a7c15);
    for round in 0..3000 {
        let mut p = base.clone();
        // Structural corruption: ids, indices and values set to edge values.
        let pick = |rng: &mut XorShift| -> i64 {
            match rng.next() % 6 {
                0 => 0,
                1 => -1,
                2 => i64::MAX,
                3 => i64::MIN,
                4 => (rng.next() % 40) as i64,
                _ => (rng.next() % 4) as i64 - 2,
            }
        };
        for _ in 0..(1 + rng.next() % 4) {
            let v = pick(&mut rng);
            match rng.next() % 10 {
                0 => {
                    let i = rng.next() as usize % p.sample.len();
                    p.sample[i].location_id.push(v as u64);
                }
                1 => {
                    let i = rng.next() as usize % p.sample.len();
                    if let Some(x) = p.sample[i].value.first_mut() {
                        *x = v;
                    }
                }
                2 => {
                    let i = rng.next() as usize % p.location.len();
                    p.location[i].mapping_id = v as u64;
                }
                3 => {
                    let i = rng.next() as usize % p.location.len();
                    p.location[i].id = v as u64;
                }
                4 => {
                    let i = rng.next() as usize % p.function.len();
                    p.function[i].name = v;
                }
                5 => p.default_sample_type = v,
                6 => p.drop_frames = v,
                7 => {
                    let i = rng.next() as usize % p.sample.len();
                    p.sample[i].label.push(Label {
                        key: v,
                        str: pick(&mut rng),
                        num: pick(&mut rng),
                        num_unit: pick(&mut rng),
                    });
                }
                8 => p.duration_nanos = v,
                _ => p.time_nanos = v,
            }
        }
        exercise(&p);
        // Byte-level corruption of the encoding.
        let mut bytes = raw.clone();
        let n = 1 + rng.next() % 3;
        for _ in 0..n {
            let i = rng.next() as usize % bytes.len();
            bytes[i] = rng.next() as u8;
        }
        if round % 2 == 0 {
            bytes.truncate(rng.next() as usize % bytes.len());
        }
        if let Ok(p) = pprof::decode(&bytes) {
            exercise(&p);
        }
    }
}

/// Runs every report on `p`; errors are fine, panics are not.
fn exercise(p: &Profile) {
    let opts = Options {
        nodecount: 5,
        ..Options::default()
    };
    let _ = report::top_table_with(p, &opts);
    let _ = report::traces(p, &opts);
    let _ = report::write_collapsed(p, &mut Vec::new());
    let _ = report::write_flamegraph(p, "t", &mut Vec::new());
    let _ = report::top_table_with(
        p,
        &Options {
            noinlines: true,
            focus: Some("main|work".into()),
            ignore: Some("kallsyms".into()),
            ..opts.clone()
        },
    );
}

/// Runs `rprof-bpf report ARGS`.
fn bin_report(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rprof-bpf"))
        .arg("report")
        .args(args)
        .output()
        .expect("running rprof-bpf report")
}

#[test]
fn binary_report_prints_top_and_fails_cleanly() {
    let file = fixture("go-cpu.pb.gz");
    let out = bin_report(&[file.to_str().unwrap(), "--nodecount", "5"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let profile = pprof::read_file(&file).unwrap();
    assert_eq!(stdout, report::top_table(&profile, 5).unwrap());

    let dir = tempfile::tempdir().unwrap();
    for (path, why) in bad_inputs(dir.path()) {
        let out = bin_report(&[path.to_str().unwrap()]);
        assert!(!out.status.success(), "{why}: succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(path.to_str().unwrap()), "{why}: {stderr}");
        assert!(!stderr.contains("panicked"), "{why}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{why}: {stderr}");
    }
}

#[test]
fn binary_report_collapsed_and_traces() {
    let file = fixture("go-heap.pb.gz");
    let out = bin_report(&[file.to_str().unwrap(), "--collapsed"]);
    assert!(out.status.success());
    let profile = pprof::read_file(&file).unwrap();
    let mut expected = Vec::new();
    report::write_collapsed(&profile, &mut expected).unwrap();
    assert_eq!(out.stdout, expected);

    let out = bin_report(&[
        file.to_str().unwrap(),
        "--traces",
        "--sample-index",
        "alloc_space",
    ]);
    assert!(out.status.success());
    let theirs = pprof_output(&["-traces", "-sample_index=alloc_space"], &file);
    assert_same(
        "binary --traces",
        &String::from_utf8(out.stdout).unwrap(),
        &theirs,
    );
}

/// A random profile with many ties, shared names, recursion, inlining,
/// nameless and unsymbolized frames: the cases where ordering and inline
/// marks are easiest to get subtly wrong.
fn random_profile(rng: &mut XorShift) -> Profile {
    const NAMES: &[&str] = &[
        "main.main",
        "main.a",
        "main.b",
        "main.B",
        "pkg/x.F",
        "runtime.mallocgc",
        "runtime.memmove",
        "",
        "std::vec::Vec<T>::push",
        "a",
        "aa",
        "z",
    ];
    let mut p = Profile {
        string_table: vec![String::new()],
        ..Default::default()
    };
    let mut s = |x: &str| -> i64 {
        p.string_table.push(x.to_string());
        p.string_table.len() as i64 - 1
    };
    let st = [s("samples"), s("count"), s("cpu"), s("nanoseconds")];
    let (bin, lib) = (s("/bin/prog"), s("/lib/libfoo.so"));
    let nfuncs = 3 + rng.next() % 12;
    let fnames: Vec<i64> = (0..nfuncs)
        .map(|_| s(NAMES[rng.next() as usize % NAMES.len()]))
        .collect();
    p.sample_type = vec![
        ValueType {
            r#type: st[0],
            unit: st[1],
        },
        ValueType {
            r#type: st[2],
            unit: st[3],
        },
    ];
    p.duration_nanos = (1 + rng.next() % 5) as i64 * 1_000_000_000;
    p.mapping = vec![
        Mapping {
            id: 1,
            filename: bin,
            ..Default::default()
        },
        Mapping {
            id: 2,
            filename: lib,
            ..Default::default()
        },
    ];
    p.function = fnames
        .iter()
        .enumerate()
        .map(|(i, &name)| Function {
            id: i as u64 + 1,
            name,
            // Nameless functions with different start lines print the
            // same ("[prog]"), and pprof orders such rows randomly (Go map
            // order); keep start lines equal so they merge into one row.
            start_line: 0,
            ..Default::default()
        })
        .collect();
    let nlocs = 3 + rng.next() % 30;
    for id in 1..=nlocs {
        let nlines = match rng.next() % 8 {
            0 => 0,
            1 | 2 => 2,
            3 => 3,
            _ => 1,
        };
        p.location.push(Location {
            id,
            mapping_id: rng.next() % 3,
            address: 0x1000 * id,
            line: (0..nlines)
                .map(|_| Line {
                    function_id: 1 + rng.next() % nfuncs,
                    ..Default::default()
                })
                .collect(),
            is_folded: false,
        });
    }
    for _ in 0..(3 + rng.next() % 60) {
        let depth = 1 + rng.next() % 8;
        let n = match rng.next() % 10 {
            0 => 0,
            1 => 1 + rng.next() % 200,
            // Heavy samples make the light ones fall under pprof's node
            // (0.5%) and edge (0.1%) cutoffs.
            2 => 1 + rng.next() % 5000,
            _ => 1 + rng.next() % 4,
        } as i64;
        p.sample.push(Sample {
            location_id: (0..depth).map(|_| 1 + rng.next() % nlocs).collect(),
            value: vec![n, n * 10_000_000],
            label: vec![],
        });
    }
    p
}

#[test]
fn top_matches_pprof_on_random_profiles() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = XorShift(0x2545f4914f6cdd1d);
    // More rounds for a thorough run: REPORT_RANDOM_ROUNDS=500.
    let rounds = std::env::var("REPORT_RANDOM_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(40);
    for i in 0..rounds {
        let p = random_profile(&mut rng);
        let file = dir.path().join(format!("random{i}.pb.gz"));
        pprof::write_file_atomic(&file, &pprof::encode_gzip(&p)).unwrap();
        let k = (1 + rng.next() % 8).to_string();
        let focus = p.string_table[p.function[0].name as usize].clone();
        let mut cases = vec![
            case(0, &[]),
            case(k.parse().unwrap(), &[]),
            case(k.parse().unwrap(), &[("noinlines", "")]),
            case(0, &[("sample_index", "samples")]),
        ];
        if !focus.is_empty() {
            let re = regex::escape(&focus);
            cases.push(case(k.parse().unwrap(), &[("focus", &re)]));
            cases.push(case(0, &[("ignore", &re)]));
        }
        compare_top(&file, &cases);
        let ours = report::traces(&p, &Options::default()).unwrap();
        let theirs = pprof_output(&["-traces"], &file);
        assert_same(&format!("random{i} -traces"), &ours, &theirs);
    }
}
