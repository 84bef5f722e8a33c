//! Go binaries named from `.gopclntab` alone: six builds of the `goinline`
//! fixture (Go 1.27 and 1.19, PIE and not, stripped and not), profiled for
//! real, compared with Go's own runtime/pprof profile of the same run.

mod harness;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use harness::*;
use rprof_bpf::pprof::Profile;

/// Sampling rate for both profilers. Go's own profiler asks for it but gets
/// at most one sample per kernel tick per thread (CONFIG_HZ, 250 here);
/// ours gets all of it.
const HZ: &str = "1000";

/// Threads running the fixture's hot loop: each one adds a thread's worth
/// of Go's tick-capped samples.
const WORKERS: &str = "2";

/// How far (percentage points) our flat share of each fixture function may
/// be from Go's own profile: the project's bar.
const TOLERANCE: f64 = 2.0;

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
        b("go1.27-pie", &new, &["-buildmode=pie"]),
        b(
            "go1.27-pie-stripped",
            &new,
            &["-buildmode=pie", "-ldflags=-s -w"],
        ),
        b("go1.19", &old, &[]),
        b("go1.19-stripped", &old, &["-ldflags=-s -w"]),
    ]
}

/// Samples by innermost function, inlined frames included, of the
/// program's own work: the samples under `main.loop`. The rest are the
/// runtime's threads and, in our profile only, Go's own profiler at work
/// (its signal handler), which a profiler inside the process cannot sample.
#[derive(Default)]
struct Flat {
    by_leaf: BTreeMap<String, i64>,
    total: i64,
}

impl Flat {
    fn of(p: &Profile) -> Flat {
        let mut f = Flat::default();
        f.add(p);
        f
    }

    fn add(&mut self, p: &Profile) {
        for s in &p.sample {
            let names = stack_names(p, s);
            if !names.iter().any(|n| n == "main.loop") {
                continue;
            }
            if let Some(leaf) = names.first() {
                *self.by_leaf.entry(leaf.clone()).or_insert(0) += s.value[0];
                self.total += s.value[0];
            }
        }
    }

    /// Percent of the program's own work with `f` innermost.
    fn share(&self, f: &str) -> f64 {
        let n = self.by_leaf.get(f).copied().unwrap_or(0);
        100.0 * n as f64 / self.total.max(1) as f64
    }

    /// One standard deviation (percentage points) of a share near `pct`
    /// estimated from this many samples.
    fn sigma(&self, pct: f64) -> f64 {
        let p = pct / 100.0;
        100.0 * (p * (1.0 - p) / self.total.max(1) as f64).sqrt()
    }
}

/// Function-name chains of locations, innermost first.
type Chains = BTreeSet<Vec<String>>;

/// The function-name chains (innermost first) of the main binary's
/// locations that carry at least 1% of samples.
fn chains(p: &Profile) -> Chains {
    let t = total(p, 0).max(1) as f64;
    let mut weight: BTreeMap<Vec<String>, i64> = BTreeMap::new();
    for s in &p.sample {
        let Some(loc) = p.location.iter().find(|l| l.id == s.location_id[0]) else {
            continue;
        };
        if loc.mapping_id != p.mapping[0].id {
            continue;
        }
        let names = loc
            .line
            .iter()
            .map(|l| {
                p.str(
                    p.function
                        .iter()
                        .find(|f| f.id == l.function_id)
                        .unwrap()
                        .name,
                )
                .to_owned()
            })
            .collect();
        *weight.entry(names).or_insert(0) += s.value[0];
    }
    weight
        .into_iter()
        .filter(|(_, w)| *w as f64 / t >= 0.01)
        .map(|(c, _)| c)
        .collect()
}

fn run_build(b: &Build, dir: &Path) -> (Profile, Profile) {
    let exe = dir.join(b.name);
    build_go(&b.go, "goinline", &exe, b.args);
    let go_prof = dir.join(format!("{}-go.pb.gz", b.name));
    let mut cmd = Command::new(&exe);
    cmd.args([
        "-seconds",
        "10",
        "-workers",
        WORKERS,
        "-ready",
        "-cpurate",
        HZ,
        "-cpuprofile",
        go_prof.to_str().unwrap(),
    ]);
    let mut t = Target::start(cmd);
    let ours = dir.join(format!("{}.pb.gz", b.name));
    // Go's own profile sees only user code: compare like with like.
    let o = record_pid(t.pid(), "9", &ours, &["-F", HZ, "--user-only"]);
    assert_ok(&o);
    t.wait();
    (load(&ours), load(&go_prof))
}

/// Where an ELF file's `.text` starts and how long it is. `-s -w` is a
/// linker flag, so the compiler's code is the same; only the displacements
/// to data the linker moved can differ. An equal layout is what lets a
/// build and its stripped twin share Go's reference.
fn text_layout(exe: &Path) -> (u64, u64) {
    use object::{Object, ObjectSection};
    let data = std::fs::read(exe).unwrap();
    let file = object::File::parse(&*data).unwrap();
    let text = file.section_by_name(".text").expect(".text");
    (text.address(), text.size())
}

/// Asserts that every location in the build's own binary is named, the
/// fixture's functions with a file and a line too, and that the main
/// mapping carries a build ID.
fn assert_fully_named(name: &str, ours: &Profile) {
    let main = &ours.mapping[0];
    assert!(
        ours.str(main.filename).ends_with(name),
        "{name}: main mapping first"
    );
    assert!(main.has_functions && main.has_inline_frames, "{name}");
    let func = |id: u64| ours.function.iter().find(|f| f.id == id).unwrap();
    let unnamed: Vec<String> = ours
        .location
        .iter()
        .filter(|l| l.mapping_id == main.id)
        .filter(|l| {
            l.line.is_empty()
                || l.line.iter().any(|ln| {
                    let f = func(ln.function_id);
                    let fname = ours.str(f.name);
                    fname.is_empty()
                        || (fname.starts_with("main.")
                            && (ln.line == 0 || !ours.str(f.filename).ends_with("main.go")))
                })
        })
        .map(|l| {
            let names: Vec<&str> = l
                .line
                .iter()
                .map(|ln| ours.str(func(ln.function_id).name))
                .collect();
            format!("{:#x} {names:?}", l.address)
        })
        .collect();
    assert!(
        unnamed.is_empty(),
        "{name}: unnamed Go locations {unnamed:?}"
    );
    assert!(!ours.str(main.build_id).is_empty(), "{name}: build ID");
}

#[test]
fn six_builds_fully_named_and_agree_with_go() {
    let builds = builds();
    let _lock = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let mut chains_by_toolchain: BTreeMap<&str, Vec<(String, Chains)>> = BTreeMap::new();
    // Go's reference per distinct code: a build and its stripped twin run
    // the same instructions, so their two Go profiles pool into one with
    // twice the samples (Go's side is the noisy one: tick-capped).
    let mut reference: BTreeMap<&str, ((u64, u64), Flat)> = BTreeMap::new();
    let mut ours_by_build = Vec::new();
    for b in &builds {
        let (ours, theirs) = run_build(b, dir.path());
        assert_fully_named(b.name, &ours);

        let code = b.name.trim_end_matches("-stripped");
        let text = text_layout(&dir.path().join(b.name));
        let (want_text, pooled) = reference
            .entry(code)
            .or_insert_with(|| (text, Flat::default()));
        assert_eq!(*want_text, text, "{}: stripping moved .text", b.name);
        pooled.add(&theirs);
        ours_by_build.push((b.name, code, Flat::of(&ours)));

        // The inline chains of the hot loop.
        let c = chains(&ours);
        assert!(
            c.contains(&vec![
                "main.mix".into(),
                "main.warm30".into(),
                "main.loop".into()
            ]),
            "{}: {c:?}",
            b.name
        );
        assert!(
            c.contains(&vec!["main.mix".into(), "main.hot60".into()]),
            "{}: {c:?}",
            b.name
        );
        chains_by_toolchain
            .entry(&b.name[..6])
            .or_default()
            .push((b.name.to_owned(), c));
    }

    // Flat shares match Go's own profile within the bar, by function name
    // with the inlined functions as their own entries. With both sides'
    // sample counts, the bar is several standard deviations of sampling
    // noise: printed, so a failure shows whether it was noise.
    let mut worst = (0.0f64, String::new());
    for (name, code, a) in &ours_by_build {
        let g = &reference[code].1;
        for f in ["main.mix", "main.hot60", "main.warm30", "main.cool10"] {
            let (x, y) = (a.share(f), g.share(f));
            let sigma = a.sigma(y).hypot(g.sigma(y));
            eprintln!(
                "{name:20} {f:12} ours {x:6.2}% ({} samples)  Go {y:6.2}% ({} samples)  sigma {sigma:.2}",
                a.total, g.total
            );
            if (x - y).abs() > worst.0 {
                worst = ((x - y).abs(), format!("{name} {f}"));
            }
            assert!(
                (x - y).abs() <= TOLERANCE,
                "{name}: {f} ours {x:.2}% vs Go {y:.2}% (sampling sigma {sigma:.2} points)"
            );
        }
    }
    eprintln!(
        "largest difference from Go's own profile: {:.2} points ({})",
        worst.0, worst.1
    );
    // Stripped builds name the same functions and inline chains as normal ones.
    for (tc, v) in chains_by_toolchain {
        let all: Chains = v.iter().flat_map(|(_, c)| c.clone()).collect();
        for (name, c) in &v {
            let hot: BTreeSet<&Vec<String>> = c.iter().filter(|ch| ch.len() > 1).collect();
            assert!(hot.iter().all(|ch| all.contains(*ch)), "{tc}: {name}");
            assert!(hot.len() >= 2, "{name}: {c:?}");
        }
    }
}
