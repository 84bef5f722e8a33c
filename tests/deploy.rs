//! The deployment manifests are valid Kubernetes objects: checked against
//! the Kubernetes OpenAPI schemas with `kubernetes-validate` (PyPI), in
//! strict mode (unknown fields are errors).

mod harness;

use std::path::{Path, PathBuf};
use std::process::Command;

use harness::root;
use yaml_rust2::{Yaml, YamlLoader};

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

/// The validator (`cargo xtask deps` installs it).
fn validator() -> PathBuf {
    harness::require(
        root().join(".venv-k8s/bin/kubernetes-validate"),
        "kubernetes-validate (PyPI)",
    )
}

/// Every document of a manifest file.
fn documents(file: &Path) -> Vec<Yaml> {
    let text = std::fs::read_to_string(file).unwrap();
    YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

/// The one document of `kind`.
fn object<'a>(docs: &'a [Yaml], kind: &str) -> &'a Yaml {
    let mut found = docs.iter().filter(|d| d["kind"].as_str() == Some(kind));
    let one = found.next().unwrap_or_else(|| panic!("no {kind}"));
    assert!(found.next().is_none(), "more than one {kind}");
    one
}

/// The strings of a YAML list (empty if it is not one).
fn strings(list: &Yaml) -> Vec<&str> {
    list.as_vec()
        .map(|v| v.iter().filter_map(Yaml::as_str).collect())
        .unwrap_or_default()
}

#[test]
fn daemonset_manifest_is_valid_and_validator_catches_mistakes() {
    let validator = validator();
    let manifest = root().join("deploy/kubernetes/daemonset.yaml");
    assert_valid(&validator, &manifest);

    // The objects we expect, with the choices the README claims, read from
    // the parsed manifest (its comments name capabilities too).
    let docs = documents(&manifest);
    let ds = object(&docs, "DaemonSet");
    let service = object(&docs, "Service");
    assert_eq!(service["spec"]["clusterIP"].as_str(), Some("None"));
    assert_eq!(
        service["metadata"]["annotations"]["prometheus.io/scrape"].as_str(),
        Some("true")
    );
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"].as_bool(), Some(true));
    let containers = pod["containers"].as_vec().expect("containers");
    assert_eq!(containers.len(), 1);
    let agent = &containers[0];
    let sc = &agent["securityContext"];
    // Exactly the capabilities README's "Least capabilities" lists, all
    // others dropped, and no way to gain more.
    let mut add = strings(&sc["capabilities"]["add"]);
    add.sort_unstable();
    assert_eq!(
        add,
        [
            "BPF",
            "CHECKPOINT_RESTORE",
            "PERFMON",
            "SYSLOG",
            "SYS_PTRACE"
        ],
        "securityContext.capabilities.add"
    );
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    assert_eq!(sc["privileged"].as_bool(), Some(false));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(
        sc["seccompProfile"]["type"].as_str(),
        Some("RuntimeDefault")
    );
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(
            agent[probe]["httpGet"]["path"].as_str(),
            Some("/healthz"),
            "{probe}"
        );
    }
    // The kubelet's log directories, read-only.
    let mounts = agent["volumeMounts"].as_vec().expect("volumeMounts");
    for dir in ["/var/log/pods", "/var/log/containers"] {
        let m = mounts
            .iter()
            .find(|m| m["mountPath"].as_str() == Some(dir))
            .unwrap_or_else(|| panic!("{dir} is not mounted"));
        assert_eq!(m["readOnly"].as_bool(), Some(true), "{dir}");
    }
    let args = strings(&agent["args"]);
    assert!(args.contains(&"--pods-log-dir=/var/log/pods"), "{args:?}");
    assert!(
        args.contains(&"--token-file=/etc/rprof-bpf/token"),
        "{args:?}"
    );

    // A typo in a field name must fail: the check is real.
    let text = std::fs::read_to_string(&manifest).unwrap();
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
    let validator = validator();
    let rbac = root().join("deploy/kubernetes/rbac-apiserver.yaml");
    assert_valid(&validator, &rbac);
    let docs = documents(&rbac);
    // One rule: list pods, nothing else.
    let rules = object(&docs, "ClusterRole")["rules"]
        .as_vec()
        .expect("rules");
    assert_eq!(rules.len(), 1);
    assert_eq!(strings(&rules[0]["apiGroups"]), [""]);
    assert_eq!(strings(&rules[0]["resources"]), ["pods"]);
    assert_eq!(strings(&rules[0]["verbs"]), ["list"]);
    // Bound to the agent's service account, defined in daemonset.yaml.
    let binding = object(&docs, "ClusterRoleBinding");
    assert_eq!(binding["roleRef"]["kind"].as_str(), Some("ClusterRole"));
    assert_eq!(
        binding["roleRef"]["name"].as_str(),
        object(&docs, "ClusterRole")["metadata"]["name"].as_str()
    );
    let subjects = binding["subjects"].as_vec().expect("subjects");
    assert_eq!(subjects.len(), 1);
    let account = &subjects[0];
    assert_eq!(account["kind"].as_str(), Some("ServiceAccount"));
    let ds_docs = documents(&root().join("deploy/kubernetes/daemonset.yaml"));
    let sa = object(&ds_docs, "ServiceAccount");
    assert_eq!(account["name"].as_str(), sa["metadata"]["name"].as_str());
    assert_eq!(
        account["namespace"].as_str(),
        sa["metadata"]["namespace"].as_str()
    );
    assert_eq!(
        object(&ds_docs, "DaemonSet")["spec"]["template"]["spec"]["serviceAccountName"].as_str(),
        sa["metadata"]["name"].as_str()
    );

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
