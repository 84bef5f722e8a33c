//! `rprof-bpf goroutine` against Go's own `/debug/pprof/goroutine` of the
//! same process (the `goruntime` fixture: 200 goroutines parked on a
//! channel, 50 sleeping, 3 spinning, under pprof.Do labels), for Go 1.27
//! (plain, stripped) and Go 1.19 (stripped); and that the process is left
//! running and untraced, also after a SIGINT during the freeze.

mod goprof;
mod harness;

use std::collections::BTreeMap;
use std::time::Duration;

use goprof::*;
use harness::*;

/// Count per (stack, labels) of the fixture's own goroutines (those under
/// `main.labelled`). A running goroutine's stack starts where it runs in
/// ours, and at the preemption Go's stop-the-world caused in Go's own
/// (`runtime.asyncPreempt*`): those leading frames are dropped on both.
fn fixture_groups(p: &rprof_bpf::pprof::Profile) -> BTreeMap<Key, i64> {
    let mut out = BTreeMap::new();
    for ((mut stack, labels), v) in by_stack(p) {
        if !stack.iter().any(|f| f == "main.labelled") {
            continue;
        }
        while stack
            .first()
            .is_some_and(|f| f.starts_with("runtime.asyncPreempt"))
        {
            stack.remove(0);
        }
        *out.entry((stack, labels)).or_insert(0) += v[0];
    }
    out
}

#[test]
fn goroutine_profile_equals_go_own() {
    let dir = tempfile::tempdir().unwrap();
    let builds = builds("goruntime", dir.path());
    for b in &builds {
        let fx = Fixture::start(
            &b.exe,
            dir.path(),
            &["-blocked", "200", "-sleeping", "50", "-running", "3"],
        );
        std::thread::sleep(Duration::from_millis(500));
        let go = fx.go_profile("/debug/pprof/goroutine");
        let ours = dir.path().join(format!("{}-goroutine.pb.gz", b.name));
        // The bound is generous: a loaded CI machine (and a debug build)
        // can take a while to stop threads; the pause itself is measured in
        // BENCHMARKS.md, not asserted.
        let out = run_go_profile("goroutine", fx.pid(), &ours, &["--max-pause-ms", "20000"]);
        assert_ok(&out);
        let summary = String::from_utf8_lossy(&out.stderr);
        assert!(summary.contains("paused"), "{summary}");
        let op = load(&ours);
        assert_eq!(op.str(op.sample_type[0].r#type), "goroutine");
        assert_eq!(op.str(op.sample_type[0].unit), "count");
        let (g, o) = (fixture_groups(&go), fixture_groups(&op));
        assert_eq!(o, g, "{}: goroutines per stack and labels", b.name);
        let blocked: i64 = o
            .iter()
            .filter(|(k, _)| k.0.iter().any(|f| f == "main.blockedOnChannel"))
            .map(|(_, v)| v)
            .sum();
        assert_eq!(blocked, 200, "{}", b.name);
        assert!(o
            .keys()
            .all(|k| k.1.iter().any(|(k, v)| k == "fixture" && v == "goruntime")));
        let (state, tracer) = proc_state(fx.pid());
        assert!(
            !state.starts_with('T') && !state.starts_with('t') && tracer == 0,
            "{}: {state} {tracer}",
            b.name
        );

        // --no-pause reads the same parked goroutines, and says it did not pause.
        let nopause = dir.path().join(format!("{}-nopause.pb.gz", b.name));
        assert_ok(&run_go_profile(
            "goroutine",
            fx.pid(),
            &nopause,
            &["--no-pause"],
        ));
        let np = load(&nopause);
        let comments: Vec<&str> = np.comment.iter().map(|&c| np.str(c)).collect();
        assert!(
            comments.iter().any(|c| c.contains("--no-pause")),
            "{comments:?}"
        );
        let parked = |m: &BTreeMap<Key, i64>| {
            m.iter()
                .filter(|(k, _)| !k.0.iter().any(|f| f == "main.spinning"))
                .map(|(k, v)| (k.clone(), *v))
                .collect::<BTreeMap<_, _>>()
        };
        assert_eq!(
            parked(&fixture_groups(&np)),
            parked(&g),
            "{}: --no-pause",
            b.name
        );

        // --details adds debug=2 facts as labels.
        let details = dir.path().join(format!("{}-details.pb.gz", b.name));
        assert_ok(&run_go_profile(
            "goroutine",
            fx.pid(),
            &details,
            &["--details", "--max-pause-ms", "20000"],
        ));
        let dp = load(&details);
        let blocked = dp
            .sample
            .iter()
            .find(|s| {
                stack_names(&dp, s)
                    .iter()
                    .any(|f| f == "main.blockedOnChannel")
            })
            .expect("blocked goroutines");
        assert_eq!(
            str_label(&dp, blocked, "go_wait_reason"),
            Some("chan receive"),
            "{}",
            b.name
        );
        assert_eq!(
            str_label(&dp, blocked, "go_created_by"),
            Some("main.main"),
            "{}",
            b.name
        );
    }
}

#[test]
fn sigint_during_the_freeze_leaves_the_process_running() {
    let dir = tempfile::tempdir().unwrap();
    let builds = builds("goruntime", dir.path());
    let b = &builds[1];
    let fx = Fixture::start(&b.exe, dir.path(), &["-blocked", "50", "-running", "2"]);
    let out = dir.path().join("held.pb.gz");
    let mut child = rprof()
        .args([
            "goroutine",
            "--pid",
            &fx.pid().to_string(),
            "--hold-pause-ms",
            "3000",
            "--max-pause-ms",
            "5000",
            "-o",
        ])
        .arg(&out)
        .spawn()
        .unwrap();
    // Wait until the target is traced (frozen), then interrupt us.
    let frozen = wait_for(Duration::from_secs(10), || proc_state(fx.pid()).1 != 0);
    assert!(frozen, "the target was never traced");
    let (state, _) = proc_state(fx.pid());
    // SAFETY: sends SIGINT to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert!(!status.success(), "rprof-bpf should stop on SIGINT");
    let (after, tracer) = proc_state(fx.pid());
    assert_eq!(tracer, 0, "still traced after SIGINT (was {state})");
    assert!(
        !after.starts_with('t') && !after.starts_with('T'),
        "left stopped: {after}"
    );
    // And it serves requests again.
    let body = fx.get("/gc");
    assert_eq!(String::from_utf8_lossy(&body).trim(), "ok");
    assert!(!out.exists(), "no half-written profile");
}
