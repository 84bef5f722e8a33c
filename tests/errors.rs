//! Bad input: each gets a one-line error naming what is wrong, the right
//! exit code, and no output file.

mod harness;

use std::process::Command;

use harness::*;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn missing_pid_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.pb.gz");
    let o = record(&[
        "--pid",
        "999999999",
        "--seconds",
        "30",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(e.contains("999999999"), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    assert!(!out.exists());
}

#[test]
fn unwritable_output_refused_before_capture() {
    let o = record(&["--seconds", "30", "-o", "/nonexistent-dir/x.pb.gz"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("/nonexistent-dir"), "{}", stderr(&o));

    // A read-only directory, as seen by an unprivileged user, is covered by
    // the `nobody` test; for root, a path that is a directory:
    let dir = tempfile::tempdir().unwrap();
    let o = record(&["--seconds", "30", "-o", dir.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("is a directory"), "{}", stderr(&o));
}

#[test]
fn bad_numbers_are_usage_errors() {
    for args in [
        &["--seconds", "0"][..],
        &["--seconds", "-3"],
        &["-F", "0"],
        &["-F", "-5"],
        &["--event", "bogus"],
        &["--pid", "abc"],
    ] {
        let o = record(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"));
    }
    let o = record(&[
        "-F",
        "100000000",
        "--seconds",
        "1",
        "-o",
        "/tmp/rprof-never.pb.gz",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("perf_event_max_sample_rate"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn unprivileged_user_gets_capability_hint() {
    let dir = tempfile::tempdir().unwrap();
    // nobody must be able to write the output directory, so that the
    // privilege check is what fails.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let out = dir.path().join("x.pb.gz");
    let o = Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(env!("CARGO_BIN_EXE_rprof-bpf"))
        .args(["--seconds", "1", "-o", out.to_str().unwrap()])
        .output()
        .expect("setpriv (util-linux)");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("CAP_BPF") && e.contains("CAP_PERFMON"), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    assert!(!out.exists());
}

/// Runs `rprof-bpf ARGS` where the kernel's BTF is really gone: in a
/// private mount namespace whose `/sys/kernel/btf` is an empty tmpfs. At
/// most 30 s: a broken check must not leave an agent running.
fn without_kernel_btf(args: &[&str]) -> std::process::Output {
    Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount -t tmpfs none /sys/kernel/btf && [ ! -e /sys/kernel/btf/vmlinux ] && exec timeout 30 "$@""#)
        .arg("sh")
        .arg(env!("CARGO_BIN_EXE_rprof-bpf"))
        .args(args)
        .output()
        .expect("unshare (util-linux)")
}

#[test]
fn kernel_without_btf_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.pb.gz");
    let record = ["--seconds", "1", "-o", out.to_str().unwrap()];
    let agent = ["agent", "--listen", "127.0.0.1:0"];
    for args in [&record[..], &agent[..]] {
        let o = without_kernel_btf(args);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {e}");
        assert_eq!(e.trim().lines().count(), 1, "{args:?}: {e}");
        // What is missing, and what kernel is needed: the one the README
        // asks for (5.17, for bpf_loop).
        for needle in [
            "/sys/kernel/btf/vmlinux",
            "Linux 5.17",
            "CONFIG_DEBUG_INFO_BTF=y",
        ] {
            assert!(e.contains(needle), "{args:?}: {needle:?} not in {e}");
        }
        assert!(!e.contains("panicked"), "{e}");
    }
    assert!(!out.exists());
    assert!(
        std::path::Path::new("/sys/kernel/btf/vmlinux").exists(),
        "only the namespace lost it"
    );
}
