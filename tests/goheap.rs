//! `rprof-bpf heap|allocs|mutex|block` against Go's own `/debug/pprof`
//! profiles of the same moment, for the `goruntime` fixture built with Go
//! 1.27 (plain, stripped) and Go 1.19 (stripped); the disabled-profiling
//! error and `--enable` on a program without runtime/pprof.

mod goprof;
mod harness;

use std::time::Duration;

use goprof::*;
use harness::*;

/// Go's own profile and ours, side by side: every non-zero sample of
/// either, by stack, with identical values.
fn assert_same_samples(
    what: &str,
    go: &rprof_bpf::pprof::Profile,
    ours: &rprof_bpf::pprof::Profile,
) {
    let (g, o) = (by_stack(go), by_stack(ours));
    assert!(!g.is_empty(), "{what}: Go's own profile is empty");
    for (k, v) in &g {
        assert_eq!(o.get(k), Some(v), "{what}: stack {:?} differs", k.0);
    }
    for k in o.keys() {
        assert!(g.contains_key(k), "{what}: extra stack {:?}", k.0);
    }
}

#[test]
fn heap_and_allocs_equal_go_own_profiles() {
    let dir = tempfile::tempdir().unwrap();
    let builds = builds("goruntime", dir.path());
    for b in &builds {
        let fx = Fixture::start(&b.exe, dir.path(), &["-heap"]);
        std::thread::sleep(Duration::from_millis(1500));
        // Stop the allocators and publish a completed GC cycle: from here
        // both readers see the same published profile.
        fx.get("/quiesce");
        let go_heap = fx.get("/debug/pprof/heap");
        let go_allocs = fx.get("/debug/pprof/allocs");
        let ours = dir.path().join(format!("{}-heap.pb.gz", b.name));
        let out = run_go_profile("heap", fx.pid(), &ours, &[]);
        assert_ok(&out);
        let ours_allocs = dir.path().join(format!("{}-allocs.pb.gz", b.name));
        assert_ok(&run_go_profile("allocs", fx.pid(), &ours_allocs, &[]));

        let (gp, op) = (rprof_bpf::pprof::decode(&go_heap).unwrap(), load(&ours));
        assert_same_samples(&format!("{} heap", b.name), &gp, &op);
        let types: Vec<_> = op
            .sample_type
            .iter()
            .map(|t| format!("{}/{}", op.str(t.r#type), op.str(t.unit)))
            .collect();
        assert_eq!(
            types,
            [
                "alloc_objects/count",
                "alloc_space/bytes",
                "inuse_objects/count",
                "inuse_space/bytes"
            ]
        );
        assert_eq!(op.period, gp.period, "{}: MemProfileRate", b.name);
        assert_eq!(op.period, 512 * 1024);
        // The bytes label rides on every sample Go puts it on.
        for s in &op.sample {
            if s.value[0] > 0 {
                assert!(
                    num_label(&op, s, "bytes").is_some(),
                    "{}: no bytes label",
                    b.name
                );
            }
        }
        let ga = rprof_bpf::pprof::decode(&go_allocs).unwrap();
        let oa = load(&ours_allocs);
        assert_same_samples(&format!("{} allocs", b.name), &ga, &oa);
        assert_eq!(oa.str(oa.default_sample_type), "alloc_space");
        assert_eq!(ga.str(ga.default_sample_type), "alloc_space");

        // go tool pprof's tables agree row for row.
        let gfile = save(dir.path(), &format!("{}-go-heap.pb.gz", b.name), &go_heap);
        for index in [
            "inuse_space",
            "alloc_space",
            "inuse_objects",
            "alloc_objects",
        ] {
            let flag = format!("-sample_index={index}");
            let g = top_rows(&b.go, &gfile, &[&flag]);
            let o = top_rows(&b.go, &ours, &[&flag]);
            assert_eq!(o, g, "{} {index}: go tool pprof -top differs", b.name);
        }
        let top = top_rows(&b.go, &ours, &["-sample_index=inuse_space"]);
        assert!(
            top[0].contains("main.leakChunk"),
            "{}: top inuse row {:?}",
            b.name,
            top[0]
        );
        let top = top_rows(&b.go, &ours, &["-sample_index=alloc_space"]);
        assert!(
            top[0].contains("main.churnObject"),
            "{}: top alloc row {:?}",
            b.name,
            top[0]
        );
    }
}

#[test]
fn mutex_and_block_equal_go_own_profiles() {
    let dir = tempfile::tempdir().unwrap();
    let builds = builds("goruntime", dir.path());
    for b in &builds {
        let fx = Fixture::start(&b.exe, dir.path(), &["-contend"]);
        std::thread::sleep(Duration::from_millis(1500));
        fx.get("/quiesce");
        for kind in ["mutex", "block"] {
            let go = fx.go_profile(&format!("/debug/pprof/{kind}"));
            let ours = dir.path().join(format!("{}-{kind}.pb.gz", b.name));
            assert_ok(&run_go_profile(kind, fx.pid(), &ours, &[]));
            let op = load(&ours);
            let types: Vec<_> = op
                .sample_type
                .iter()
                .map(|t| format!("{}/{}", op.str(t.r#type), op.str(t.unit)))
                .collect();
            assert_eq!(types, ["contentions/count", "delay/nanoseconds"]);
            // The fixture's own stacks are quiet since /quiesce; the HTTP
            // server's own blocking goes on, so only those are compared.
            let mine = |p: &rprof_bpf::pprof::Profile| {
                by_stack(p)
                    .into_iter()
                    .filter(|(k, _)| k.0.iter().any(|f| f.starts_with("main.")))
                    .collect::<std::collections::BTreeMap<_, _>>()
            };
            let (g, o) = (mine(&go), mine(&op));
            assert!(
                !g.is_empty(),
                "{} {kind}: Go's profile has no fixture stack",
                b.name
            );
            assert_eq!(o, g, "{} {kind}: samples differ", b.name);
            let want = if kind == "mutex" {
                "main.holdMutex"
            } else {
                "main.channelWaiter"
            };
            assert!(
                o.keys().any(|k| k.0.iter().any(|f| f == want)),
                "{} {kind}: no {want}",
                b.name
            );
        }
    }
}

#[test]
fn disabled_memory_profiling_is_named_and_enable_turns_it_on() {
    let dir = tempfile::tempdir().unwrap();
    let builds = builds("gonoprof", dir.path());
    for b in &builds {
        let t = Target::spawn(&b.exe, &[]);
        let pid = t.pid();
        let out_file = dir.path().join(format!("{}-heap.pb.gz", b.name));
        let out = run_go_profile("heap", pid, &out_file, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}: {err}", b.name);
        assert!(
            err.contains("memory profiling is disabled"),
            "{}: {err}",
            b.name
        );
        assert!(
            err.contains(&pid.to_string()) && err.contains("--enable"),
            "{err}"
        );
        assert!(!out_file.exists(), "{}: a file was written", b.name);

        let out = run_go_profile("heap", pid, &out_file, &["--enable"]);
        assert_ok(&out);
        let msg = String::from_utf8_lossy(&out.stderr);
        assert!(msg.contains("MemProfileRate"), "{msg}");
        // Allocation goes on; the next GC cycles publish samples.
        let got = wait_for(Duration::from_secs(20), || {
            let out = run_go_profile("heap", pid, &out_file, &[]);
            out.status.success()
                && load(&out_file).sample.iter().any(|s| {
                    s.value[1] > 0
                        && stack_names(&load(&out_file), s)
                            .iter()
                            .any(|f| f == "main.allocate")
                })
        });
        assert!(got, "{}: no main.allocate samples after --enable", b.name);
        let (state, tracer) = proc_state(pid);
        assert!(
            !state.starts_with('Z') && !state.starts_with('T') && tracer == 0,
            "{}: {state} {tracer}",
            b.name
        );
    }
}

#[test]
fn refuses_a_process_that_is_not_go() {
    let mut sleeper = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = run_go_profile("heap", sleeper.id(), &dir.path().join("h.pb.gz"), &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("process {} ", sleeper.id())) && err.contains("not a Go program"),
        "{err}"
    );
    let out = run_go_profile("goroutine", 999_999_999, &dir.path().join("g.pb.gz"), &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no process with pid 999999999"));
    let _ = sleeper.kill();
    let _ = sleeper.wait();
}

#[test]
fn agent_serves_heap_profiles_to_go_tool_pprof() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let builds = builds("goruntime", dir.path());
    let b = &builds[1];
    let fx = Fixture::start(&b.exe, dir.path(), &["-heap"]);
    std::thread::sleep(Duration::from_millis(1500));
    fx.get("/quiesce");
    let mut agent = rprof()
        .args(["agent", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting the agent");
    let mut lines = BufReader::new(agent.stderr.take().unwrap()).lines();
    let port: u16 = loop {
        let line = lines.next().expect("agent output").unwrap();
        if let Some(rest) = line.split("serving http://127.0.0.1:").nth(1) {
            break rest.split('/').next().unwrap().parse().unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let url = format!("http://127.0.0.1:{port}/debug/pprof/heap?pid={}", fx.pid());
    let out = go_pprof(&b.go, &["-top", "-sample_index=inuse_space", &url]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first = text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("flat"))
        .nth(1)
        .unwrap_or_default();
    assert!(
        first.contains("main.leakChunk"),
        "top inuse_space row: {first}\n{text}"
    );
    // gc=1 is refused with the reason.
    let addr = format!("127.0.0.1:{port}");
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    use std::io::{Read, Write};
    write!(
        s,
        "GET /debug/pprof/heap?pid={}&gc=1 HTTP/1.0\r\nHost: {addr}\r\n\r\n",
        fx.pid()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(
        resp.starts_with("HTTP/1.0 400") && resp.contains("cannot run its garbage collector"),
        "{resp}"
    );
    let _ = agent.kill();
    let _ = agent.wait();
}
