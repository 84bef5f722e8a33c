//! The Kubernetes API server as a fallback source of pod labels.
//!
//! The kubelet's log directories ([`super::labels`]) name most pods with no
//! API access at all. Where they do not (a kubelet that keeps logs
//! elsewhere, a container whose log link is missing, static pods whose UID
//! is not a UUID), `--kube-api` lets the agent list the pods of its own
//! node: `GET /api/v1/pods?fieldSelector=spec.nodeName=NODE`. The answer
//! maps pod UIDs to namespace and name, and container IDs to container
//! names, in a [`PodIndex`] that replaces the previous one wholesale, so it
//! never holds more than the node's pods.
//!
//! The list is taken once at start and then only when a process's cgroup
//! names a pod or container that neither source knows (a *miss*), at most
//! once per `--kube-api-interval` however many misses there are: a node
//! full of short-lived container processes cannot turn into a stream of
//! requests to the API server. Failures are logged once, counted in
//! `/metrics`, retried with backoff, and never stop the agent; the labels
//! are simply missing until the API answers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::{watch, Notify};

use super::metrics::Counters;

/// Where the service account's files are mounted in every pod.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The largest pod list accepted: a node runs at most a few hundred pods,
/// whose list is a few MB; anything far beyond that is not a pod list.
const MAX_BODY: usize = 64 << 20;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Consecutive failures double the wait between lists up to this many times.
const MAX_BACKOFF_DOUBLINGS: u32 = 3;

/// How to reach the API server, resolved from the options at start.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// `https://HOST:PORT` (or any base URL given with `--kube-api-url`).
    pub base: reqwest::Url,
    /// This node's name, for the field selector.
    pub node: String,
    /// Re-read before every request: projected service account tokens are
    /// rotated by the kubelet.
    pub token_file: PathBuf,
    /// PEM bundle the server's certificate must chain to (https only).
    pub ca_file: Option<PathBuf>,
    /// Shortest time between two lists.
    pub interval: Duration,
}

impl ApiConfig {
    /// The in-cluster base URL from `KUBERNETES_SERVICE_HOST` and
    /// `KUBERNETES_SERVICE_PORT`, which the kubelet sets in every pod.
    pub fn in_cluster_url(
        host: Option<String>,
        port: Option<String>,
    ) -> Result<reqwest::Url, String> {
        let host = host.filter(|h| !h.is_empty()).ok_or(
            "--kube-api: KUBERNETES_SERVICE_HOST is not set (not running in a pod?); give --kube-api-url",
        )?;
        let port = port
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "443".into());
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        parse_base(&format!("https://{host}:{port}"))
    }

    /// Checks that the token (and, for https, the CA bundle) can be read,
    /// so a manifest that forgot to mount them fails at start with a clear
    /// message instead of failing every request later.
    pub fn check_files(&self) -> Result<(), String> {
        read_token(&self.token_file).map_err(|e| {
            format!("{e} (mount the service account token: automountServiceAccountToken: true)")
        })?;
        if self.base.scheme() == "https" {
            let ca = self
                .ca_file
                .as_ref()
                .ok_or("--kube-api over https needs --kube-ca-file")?;
            std::fs::read(ca)
                .map_err(|e| format!("cannot read the API server's CA {}: {e}", ca.display()))?;
        }
        Ok(())
    }
}

/// A `--kube-api-url` value: http or https, no query.
pub fn parse_base(s: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(s).map_err(|e| format!("--kube-api-url {s:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!(
            "--kube-api-url {s:?}: expected http(s)://HOST[:PORT]"
        ));
    }
    Ok(url)
}

/// The bearer token in `path`, trimmed; an error naming the file otherwise.
fn read_token(path: &Path) -> Result<String, String> {
    let t = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the API token {}: {e}", path.display()))?;
    let t = t.trim().to_owned();
    if t.is_empty() {
        return Err(format!("the API token {} is empty", path.display()));
    }
    Ok(t)
}

/// One pod of the node, as the labels need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodName {
    pub namespace: String,
    pub name: String,
    /// Some container of the pod has no container ID in its status yet
    /// (it is starting, or the kubelet has not reported it): a process in
    /// an unknown container of this pod may be that one, so a later list
    /// is worth taking.
    pub starting: bool,
}

/// A container's pod and name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerRef {
    pub pod_uid: String,
    pub container: String,
}

/// The pods of this node by UID, and their containers by ID.
#[derive(Debug, Default)]
pub struct PodIndex {
    pods: HashMap<String, PodName>,
    containers: HashMap<String, ContainerRef>,
}

impl PodIndex {
    pub fn pod(&self, uid: &str) -> Option<&PodName> {
        self.pods.get(uid)
    }

    /// A container by its 64-hex ID, with its pod.
    pub fn container(&self, id: &str) -> Option<(&ContainerRef, &PodName)> {
        let c = self.containers.get(id)?;
        Some((c, self.pods.get(&c.pod_uid)?))
    }

    /// The UID of pod `namespace/name`.
    pub fn find(&self, namespace: &str, name: &str) -> Option<&str> {
        self.pods
            .iter()
            .find(|(_, p)| p.namespace == namespace && p.name == name)
            .map(|(uid, _)| uid.as_str())
    }

    pub fn len(&self) -> usize {
        self.pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    /// Builds the index from a `PodList` JSON document.
    pub fn from_json(body: &[u8]) -> Result<PodIndex, String> {
        let list: PodList =
            serde_json::from_slice(body).map_err(|e| format!("not a PodList: {e}"))?;
        let mut idx = PodIndex::default();
        for pod in list.items {
            let uid = pod.metadata.uid;
            let mut starting = false;
            let statuses = pod.status.iter().flat_map(|s| {
                s.container_statuses
                    .iter()
                    .chain(&s.init_container_statuses)
                    .chain(&s.ephemeral_container_statuses)
            });
            for cs in statuses {
                match cs.container_id.as_deref().and_then(bare_container_id) {
                    Some(id) => {
                        idx.containers.insert(
                            id,
                            ContainerRef {
                                pod_uid: uid.clone(),
                                container: cs.name.clone(),
                            },
                        );
                    }
                    None => starting = true,
                }
            }
            // A pod whose status lists fewer containers than its spec has
            // containers not started yet.
            let listed = pod
                .status
                .as_ref()
                .map_or(0, |s| s.container_statuses.len());
            starting |= listed < pod.spec.map_or(0, |s| s.containers.len());
            idx.pods.insert(
                uid,
                PodName {
                    namespace: pod.metadata.namespace,
                    name: pod.metadata.name,
                    starting,
                },
            );
        }
        Ok(idx)
    }
}

/// `containerd://<id>`, `cri-o://<id>`, `docker://<id>` -> `<id>`, when it
/// is the 64-hex ID cgroup paths carry.
fn bare_container_id(s: &str) -> Option<String> {
    let id = s.rsplit("://").next()?;
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_ascii_lowercase())
}

// The parts of a PodList the labels need; serde skips everything else
// without allocating it.
#[derive(Deserialize)]
struct PodList {
    #[serde(default)]
    items: Vec<Pod>,
}

#[derive(Deserialize)]
struct Pod {
    metadata: PodMeta,
    #[serde(default)]
    spec: Option<PodSpec>,
    #[serde(default)]
    status: Option<PodStatus>,
}

#[derive(Deserialize)]
struct PodMeta {
    name: String,
    namespace: String,
    uid: String,
}

#[derive(Deserialize)]
struct PodSpec {
    #[serde(default)]
    containers: Vec<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodStatus {
    #[serde(default)]
    container_statuses: Vec<ContainerStatus>,
    #[serde(default)]
    init_container_statuses: Vec<ContainerStatus>,
    #[serde(default)]
    ephemeral_container_statuses: Vec<ContainerStatus>,
}

#[derive(Deserialize)]
struct ContainerStatus {
    name: String,
    #[serde(default, rename = "containerID")]
    container_id: Option<String>,
}

/// The shared pod index, its HTTP client, and the doorbell that misses ring.
pub struct KubeApi {
    cfg: ApiConfig,
    client: reqwest::Client,
    index: Mutex<Arc<PodIndex>>,
    wake: Notify,
    counters: Arc<Counters>,
}

/// Processes whose labels are still incomplete after a look at the index.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Missing {
    /// Processes in a pod or container the index does not know at all.
    pub unknown: usize,
    /// Processes in an unknown container of a known pod that is still
    /// starting containers: its status will name them soon.
    pub starting: usize,
}

impl KubeApi {
    pub fn new(cfg: ApiConfig, counters: Arc<Counters>) -> anyhow::Result<KubeApi> {
        let mut b = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("rprof-bpf/", env!("CARGO_PKG_VERSION")));
        if let (Some(ca), "https") = (&cfg.ca_file, cfg.base.scheme()) {
            let pem = std::fs::read(ca).map_err(|e| {
                anyhow::anyhow!("cannot read the API server's CA {}: {e}", ca.display())
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                anyhow::anyhow!("{} is not a PEM certificate bundle: {e}", ca.display())
            })?;
            // Only the cluster's CA: the API server is never vouched for
            // by a public one.
            b = b.tls_built_in_root_certs(false);
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        let client = b
            .build()
            .map_err(|e| anyhow::anyhow!("cannot create the API server HTTP client: {e}"))?;
        Ok(KubeApi {
            cfg,
            client,
            index: Mutex::new(Arc::default()),
            wake: Notify::new(),
            counters,
        })
    }

    /// The current index (a cheap handle; lists replace it, never edit it).
    pub fn index(&self) -> Arc<PodIndex> {
        self.index.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Asks for a new list. Never blocks: the refresher coalesces every
    /// miss since its last list into one request, and waits out the
    /// interval first.
    pub fn miss(&self) {
        self.wake.notify_one();
    }

    /// `GET /api/v1/pods?fieldSelector=spec.nodeName=NODE`, parsed.
    /// `resourceVersion=0` lets the API server answer from its cache
    /// instead of reading etcd: any recent state will do here.
    async fn list(&self) -> Result<PodIndex, String> {
        let mut url = self
            .cfg
            .base
            .join("api/v1/pods")
            .map_err(|e| format!("bad API URL: {e}"))?;
        url.query_pairs_mut()
            .append_pair("fieldSelector", &format!("spec.nodeName={}", self.cfg.node))
            .append_pair("resourceVersion", "0");
        let token = read_token(&self.cfg.token_file)?;
        let mut resp = self
            .client
            .get(url)
            .bearer_auth(token)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| super::push::error_chain(&e))?;
        let status = resp.status();
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| super::push::error_chain(&e))?
        {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(format!("answer larger than {} MiB", MAX_BODY >> 20));
            }
            body.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body);
            return Err(format!(
                "HTTP {status}: {}",
                text.trim().chars().take(200).collect::<String>()
            ));
        }
        PodIndex::from_json(&body)
    }

    fn install(&self, idx: PodIndex) {
        self.counters
            .kube_api_pods
            .store(idx.len() as u64, Ordering::Relaxed);
        *self.index.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(idx);
    }
}

/// Lists the node's pods at start and then on misses, at most once per
/// interval (longer after failures), until `stop`. After every list,
/// `relabel` gives the window's processes their new labels and says which
/// are still missing some: those in a starting pod ask for another list;
/// after a failure, any missing ones do.
pub async fn refresher(
    api: Arc<KubeApi>,
    relabel: impl Fn() -> Missing,
    mut stop: watch::Receiver<bool>,
) {
    let mut failures: u32 = 0;
    let mut last: Option<tokio::time::Instant> = None;
    loop {
        if let Some(t) = last {
            tokio::select! {
                _ = api.wake.notified() => {}
                _ = stop.changed() => return,
            }
            let gap = api.cfg.interval * 2u32.pow(failures.min(MAX_BACKOFF_DOUBLINGS));
            tokio::select! {
                _ = tokio::time::sleep_until(t + gap) => {}
                _ = stop.changed() => return,
            }
        }
        last = Some(tokio::time::Instant::now());
        Counters::inc(&api.counters.kube_api_requests);
        let ok = match api.list().await {
            Ok(idx) => {
                if failures > 0 {
                    tracing::info!("the Kubernetes API answers again");
                }
                failures = 0;
                api.install(idx);
                true
            }
            Err(e) => {
                Counters::inc(&api.counters.kube_api_failures);
                if failures == 0 {
                    tracing::warn!(
                        "cannot list the pods of node {} at {}: {e}; \
                         pod labels the kubelet's directories do not give stay missing \
                         until it answers (retried; failures counted in \
                         rprof_agent_kube_api_failures_total)",
                        api.cfg.node,
                        api.cfg.base
                    );
                }
                failures = failures.saturating_add(1);
                false
            }
        };
        let m = relabel();
        if m.starting > 0 || (!ok && m.unknown > 0) {
            api.miss();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f2c0a1b9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a";
    const ID2: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    fn list(pods: &str) -> String {
        format!(
            r#"{{"kind":"PodList","apiVersion":"v1","metadata":{{"resourceVersion":"7"}},"items":[{pods}]}}"#
        )
    }

    #[test]
    fn pod_list_maps_uids_and_container_ids() {
        let body = list(&format!(
            r#"{{"metadata":{{"name":"cart-0","namespace":"shop","uid":"u1","labels":{{"a":"b"}}}},
                "spec":{{"containers":[{{"name":"app","image":"x"}},{{"name":"side"}}]}},
                "status":{{"phase":"Running",
                  "containerStatuses":[{{"name":"app","containerID":"containerd://{ID}","ready":true}},
                                       {{"name":"side","containerID":"cri-o://{}"}}],
                  "initContainerStatuses":[{{"name":"init","containerID":"docker://{ID2}"}}]}}}},
               {{"metadata":{{"name":"web","namespace":"default","uid":"u2"}},"spec":{{"containers":[{{"name":"w"}}]}},
                "status":{{"phase":"Pending","containerStatuses":[{{"name":"w","state":{{"waiting":{{}}}}}}]}}}}"#,
            ID.to_uppercase()
        ));
        let idx = PodIndex::from_json(body.as_bytes()).unwrap();
        assert_eq!(idx.len(), 2);
        let (c, p) = idx.container(ID).unwrap();
        assert_eq!(
            (
                c.pod_uid.as_str(),
                c.container.as_str(),
                p.namespace.as_str(),
                p.name.as_str()
            ),
            ("u1", "side", "shop", "cart-0"),
            "IDs are matched lowercased, whatever the runtime wrote"
        );
        assert_eq!(idx.container(ID2).unwrap().0.container, "init");
        assert!(!idx.pod("u1").unwrap().starting);
        assert!(idx.pod("u2").unwrap().starting, "a container without an ID");
        assert_eq!(idx.find("default", "web"), Some("u2"));
        assert_eq!(idx.find("default", "cart-0"), None);
    }

    #[test]
    fn pods_without_status_are_starting_and_bad_json_is_an_error() {
        let body = list(
            r#"{"metadata":{"name":"new","namespace":"ns","uid":"u3"},"spec":{"containers":[{"name":"a"}]}}"#,
        );
        let idx = PodIndex::from_json(body.as_bytes()).unwrap();
        assert!(idx.pod("u3").unwrap().starting);
        assert!(PodIndex::from_json(b"{}").unwrap().is_empty());
        let e = PodIndex::from_json(b"<html>").unwrap_err();
        assert!(e.starts_with("not a PodList"), "{e}");
        let e = PodIndex::from_json(br#"{"items":[{"metadata":{"name":"x"}}]}"#).unwrap_err();
        assert!(e.contains("namespace"), "{e}");
    }

    #[test]
    fn container_id_schemes() {
        assert_eq!(
            bare_container_id(&format!("containerd://{ID}")).as_deref(),
            Some(ID)
        );
        assert_eq!(bare_container_id(ID).as_deref(), Some(ID));
        assert_eq!(bare_container_id("containerd://abc"), None);
        assert_eq!(bare_container_id(""), None);
    }

    #[test]
    fn in_cluster_url_and_base_checks() {
        let u = ApiConfig::in_cluster_url(Some("10.96.0.1".into()), Some("443".into())).unwrap();
        assert_eq!(u.as_str(), "https://10.96.0.1/");
        let u = ApiConfig::in_cluster_url(Some("fd00::1".into()), None).unwrap();
        assert_eq!(u.as_str(), "https://[fd00::1]/");
        let u = ApiConfig::in_cluster_url(Some("k8s".into()), Some("6443".into())).unwrap();
        assert_eq!(u.as_str(), "https://k8s:6443/");
        assert!(ApiConfig::in_cluster_url(None, None)
            .unwrap_err()
            .contains("KUBERNETES_SERVICE_HOST"));
        assert!(parse_base("ftp://x").is_err());
        assert!(parse_base("not a url").is_err());
        assert!(parse_base("http://127.0.0.1:8080").is_ok());
    }

    #[test]
    fn missing_token_or_ca_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = ApiConfig {
            base: parse_base("https://127.0.0.1:6443").unwrap(),
            node: "n".into(),
            token_file: dir.path().join("token"),
            ca_file: Some(dir.path().join("ca.crt")),
            interval: Duration::from_secs(30),
        };
        let e = cfg.check_files().unwrap_err();
        assert!(
            e.contains("token") && e.contains("automountServiceAccountToken"),
            "{e}"
        );
        std::fs::write(&cfg.token_file, "\n").unwrap();
        assert!(cfg.check_files().unwrap_err().contains("is empty"));
        std::fs::write(&cfg.token_file, "t0k\n").unwrap();
        assert!(cfg.check_files().unwrap_err().contains("ca.crt"));
        cfg.base = parse_base("http://127.0.0.1:8080").unwrap();
        assert_eq!(cfg.check_files(), Ok(()));
        assert_eq!(read_token(&cfg.token_file).unwrap(), "t0k");
    }
}
