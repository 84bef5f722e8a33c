//! The deployment manifests are valid Kubernetes objects: checked against
//! the Kubernetes OpenAPI schemas with `kubernetes-validate` (PyPI), in
//! strict mode (unknown fields are errors).

mod harness;

use std::path::{Path, PathBuf};
use std::process::Command;

use harness::root;

/// `kubernetes-validate --strict FILE` succeeds.
fn assert_valid(validator: &Path, file: &Path) {
    let o = Command::new(validator)
        .args(["--strict"])
        .arg(file)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}: {}{}",
        file.display(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The validator, or `None` (skip) outside CI when it is not installed.
fn validator() -> Option<PathBuf> {
    let validator = root().join(".venv-k8s/bin/kubernetes-validate");
    if !validator.exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "kubernetes-validate missing (cargo xtask deps)"
        );
        eprintln!("skipping: kubernetes-validate not installed");
        return None;
    }
    Some(validator)
}

#[test]
fn daemonset_manifest_is_valid_and_validator_catches_mistakes() {
    let Some(validator) = validator() else {
        return;
    };
    let manifest = root().join("deploy/kubernetes/daemonset.yaml");
    assert_valid(&validator, &manifest);

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

#[test]
fn api_server_fallback_rbac_and_enabled_daemonset_are_valid() {
    let Some(validator) = validator() else {
        return;
    };
    let rbac = root().join("deploy/kubernetes/rbac-apiserver.yaml");
    assert_valid(&validator, &rbac);
    let text = std::fs::read_to_string(&rbac).unwrap();
    for needle in [
        "kind: ClusterRole\n",
        "kind: ClusterRoleBinding",
        "resources: [\"pods\"]",
        "verbs: [\"list\"]",
        "name: rprof-bpf\n    namespace: rprof-bpf",
    ] {
        assert!(
            text.contains(needle),
            "rbac-apiserver.yaml lacks {needle:?}"
        );
    }

    // Off by default: no token mounted, the flag commented out, but the
    // node name always there.
    let ds = std::fs::read_to_string(root().join("deploy/kubernetes/daemonset.yaml")).unwrap();
    assert_eq!(ds.matches("automountServiceAccountToken: false").count(), 2);
    assert!(ds.contains("# - --kube-api\n"));
    assert!(ds.contains("name: NODE_NAME") && ds.contains("fieldPath: spec.nodeName"));
    // The two edits its comments (and the README) describe give a valid
    // manifest that mounts the token and passes the flag.
    let pod_automount = "      automountServiceAccountToken: false\n";
    assert_eq!(ds.matches(pod_automount).count(), 1);
    let enabled = ds
        .replacen(
            pod_automount,
            "      automountServiceAccountToken: true\n",
            1,
        )
        .replacen("# - --kube-api\n", "- --kube-api\n", 1);
    assert!(enabled.contains("            - --kube-api\n"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("enabled.yaml");
    std::fs::write(&file, &enabled).unwrap();
    assert_valid(&validator, &file);
}
