//! Go binaries named from `.gopclntab` alone: six builds of the `goinline`
//! fixture (Go 1.27 and 1.19, PIE and not, stripped and not), profiled for
//! real, compared with Go's own runtime/pprof profile of the same run.

mod harness;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use harness::*;
use rprof_bpf::pprof::Profile;

/// Sampling rate for both profilers: enough samples that a 3-point
/// tolerance is several standard deviations of sampling noise.
const HZ: &str = "1000";

struct Build {
    name: &'static str,
    go: PathBuf,
    args: &'static [&'static str],
}

fn builds() -> Option<Vec<Build>> {
    let (new, old) = (go127()?, go119()?);
    let b = |name, go: &PathBuf, args| Build {
        name,
        go: go.clone(),
        args,
    };
    Some(vec![
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
    ])
}

/// Flat share (percent) by innermost function, inlined frames included, of
/// the program's own work: the samples under `main.main`. The rest are the
/// runtime's threads and, in our profile only, Go's own profiler at work
/// (its signal handler), which a profiler inside the process cannot sample.
fn flat(p: &Profile) -> BTreeMap<String, f64> {
    let own: Vec<(Vec<String>, i64)> = p
        .sample
        .iter()
        .map(|s| (stack_names(p, s), s.value[0]))
        .filter(|(names, _)| names.iter().any(|n| n == "main.main"))
        .collect();
    let t = own.iter().map(|(_, v)| v).sum::<i64>().max(1) as f64;
    let mut m = BTreeMap::new();
    for (names, v) in own {
        if let Some(leaf) = names.first() {
            *m.entry(leaf.clone()).or_insert(0.0) += 100.0 * v as f64 / t;
        }
    }
    m
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
        "6",
        "-ready",
        "-cpurate",
        HZ,
        "-cpuprofile",
        go_prof.to_str().unwrap(),
    ]);
    let mut t = Target::start(cmd);
    let ours = dir.join(format!("{}.pb.gz", b.name));
    let o = record(&[
        "--pid",
        &t.pid().to_string(),
        "-F",
        HZ,
        // Go's own profile sees only user code: compare like with like.
        "--user-only",
        "--seconds",
        "5",
        "-q",
        "-o",
        ours.to_str().unwrap(),
    ]);
    assert_ok(&o);
    t.wait();
    (load(&ours), load(&go_prof))
}

#[test]
fn six_builds_fully_named_and_agree_with_go() {
    let Some(builds) = builds() else { return };
    let _lock = capture_lock();
    let dir = tempfile::tempdir().unwrap();
    let mut chains_by_toolchain: BTreeMap<&str, Vec<(String, Chains)>> = BTreeMap::new();
    let mut worst = (0.0f64, String::new());
    for b in &builds {
        let (ours, theirs) = run_build(b, dir.path());

        // Zero unnamed Go frames: every location in the Go binary is named;
        // the fixture's own functions with a file and a line too.
        let main = &ours.mapping[0];
        assert!(
            ours.str(main.filename).ends_with(b.name),
            "{}: main mapping first",
            b.name
        );
        assert!(main.has_functions && main.has_inline_frames, "{}", b.name);
        let unnamed: Vec<String> = ours
            .location
            .iter()
            .filter(|l| l.mapping_id == main.id)
            .filter(|l| {
                l.line.is_empty()
                    || l.line.iter().any(|ln| {
                        let f = ours
                            .function
                            .iter()
                            .find(|f| f.id == ln.function_id)
                            .unwrap();
                        let name = ours.str(f.name);
                        name.is_empty()
                            || (name.starts_with("main.")
                                && (ln.line == 0 || !ours.str(f.filename).ends_with("main.go")))
                    })
            })
            .map(|l| {
                let names: Vec<&str> = l
                    .line
                    .iter()
                    .map(|ln| {
                        ours.str(
                            ours.function
                                .iter()
                                .find(|f| f.id == ln.function_id)
                                .unwrap()
                                .name,
                        )
                    })
                    .collect();
                format!("{:#x} {names:?}", l.address)
            })
            .collect();
        assert!(
            unnamed.is_empty(),
            "{}: unnamed Go locations {unnamed:?}",
            b.name
        );
        assert!(!ours.str(main.build_id).is_empty(), "{}: build ID", b.name);

        // Flat shares match Go's own profile within 3 points, by function
        // name with the inlined functions as their own entries.
        let (a, g) = (flat(&ours), flat(&theirs));
        for f in ["main.mix", "main.hot60", "main.warm30", "main.cool10"] {
            let (x, y) = (
                a.get(f).copied().unwrap_or(0.0),
                g.get(f).copied().unwrap_or(0.0),
            );
            eprintln!("{:20} {f:12} ours {x:6.2}%  Go {y:6.2}%", b.name);
            if (x - y).abs() > worst.0 {
                worst = ((x - y).abs(), format!("{} {f}", b.name));
            }
            assert!(
                (x - y).abs() <= 3.0,
                "{}: {f} ours {x:.2}% vs Go {y:.2}%",
                b.name
            );
        }
        // The inline chains of the hot loop.
        let c = chains(&ours);
        assert!(
            c.contains(&vec![
                "main.mix".into(),
                "main.warm30".into(),
                "main.main".into()
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
