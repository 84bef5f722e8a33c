//! The deployment manifests are valid Kubernetes objects: checked against
//! the Kubernetes OpenAPI schemas with `kubernetes-validate` (PyPI), in
//! strict mode (unknown fields are errors).

mod harness;

use std::process::Command;

use harness::root;

#[test]
fn daemonset_manifest_is_valid_and_validator_catches_mistakes() {
    let validator = root().join(".venv-k8s/bin/kubernetes-validate");
    if !validator.exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "kubernetes-validate missing (cargo xtask deps)"
        );
        eprintln!("skipping: kubernetes-validate not installed");
        return;
    }
    let manifest = root().join("deploy/kubernetes/daemonset.yaml");
    let o = Command::new(&validator)
        .args(["--strict"])
        .arg(&manifest)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );

    // The manifest is the objects we expect, with the choices the README claims.
    let text = std::fs::read_to_string(&manifest).unwrap();
    for needle in [
        "kind: DaemonSet",
        "kind: Service",
        "hostPID: true",
        "readOnlyRootFilesystem: true",
        "/var/log/pods",
        "/healthz",
        "prometheus.io/scrape",
    ] {
        assert!(text.contains(needle), "manifest lacks {needle}");
    }
    for cap in ["BPF", "PERFMON"] {
        assert!(text.contains(cap), "manifest lacks capability {cap}");
    }

    // A typo in a field name must fail: the check is real.
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.yaml");
    std::fs::write(&broken, text.replacen("hostPID: true", "hostPIDs: true", 1)).unwrap();
    let o = Command::new(&validator)
        .args(["--strict"])
        .arg(&broken)
        .output()
        .unwrap();
    assert!(!o.status.success(), "a misspelled field passed validation");
}
