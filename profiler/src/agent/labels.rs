//! Where a process runs: its container and, inside Kubernetes, its pod.
//!
//! Everything comes from files on the node, with no API server: the
//! container ID and pod UID from `/proc/PID/cgroup`, and the pod's namespace
//! and name from the kubelet's log directories, which are named
//! `/var/log/pods/<namespace>_<pod>_<uid>/<container>/`. The container's name
//! comes from the kubelet's `/var/log/containers/<pod>_<namespace>_<container>-<id>.log`
//! links, or from the pod directory when the pod has a single container.
//! With `--kube-api`, what those leave unnamed is looked up in the pods the
//! API server lists for this node ([`super::kubeapi`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::kubeapi::{KubeApi, Missing, PodIndex};
use crate::engine::identity::{lock, ProcMeta};
use crate::process::container::{is_hex_id, is_uid};
pub use crate::process::container::{parse_cgroup, CgroupIds, Labels};

/// One pod directory under the pods log root.
#[derive(Clone, Debug)]
struct PodDir {
    namespace: String,
    pod: String,
    dir: PathBuf,
}

/// Looks up pods and containers by the kubelet's log directory names, with
/// caches so the directories are listed rarely.
pub struct Kubelet {
    pods_dir: PathBuf,
    containers_dir: PathBuf,
    pods: HashMap<String, PodDir>,
    containers: HashMap<String, String>,
    last_scan: Option<Instant>,
    api: Option<Arc<KubeApi>>,
}

/// Why a process's labels are incomplete after every source was asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Miss {
    /// Complete, or nothing more to learn (a host process; a pod's sandbox
    /// container, which no container status names).
    None,
    /// The API's last list knows neither its pod nor its container.
    Unknown,
    /// Its pod is listed but still starting containers: a later list will
    /// name this one.
    Starting,
}

/// How often the directories may be re-listed on a cache miss: a process
/// of a pod we do not know yet waits at most this long for its labels, and
/// processes outside Kubernetes cost nothing more than one listing per
/// interval.
const RESCAN: Duration = Duration::from_secs(5);

impl Kubelet {
    pub fn new(pods_dir: PathBuf, containers_dir: PathBuf) -> Self {
        Kubelet {
            pods_dir,
            containers_dir,
            pods: HashMap::new(),
            containers: HashMap::new(),
            last_scan: None,
            api: None,
        }
    }

    /// Falls back to the API server's pod list for what the directories
    /// do not name.
    pub fn with_api(mut self, api: Arc<KubeApi>) -> Self {
        self.api = Some(api);
        self
    }

    /// The labels of process `pid`, from its cgroup and the kubelet's log
    /// directories. Empty labels for host processes.
    pub fn labels_of(&mut self, pid: u32) -> Labels {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
            return Labels::default();
        };
        self.labels_for(&parse_cgroup(&text))
    }

    /// Labels for parsed cgroup ids, at a process's first sight. A miss
    /// asks the API server (if configured) for a new pod list, which comes
    /// later: the window then calls [`Kubelet::relabel`].
    pub fn labels_for(&mut self, ids: &CgroupIds) -> Labels {
        let (l, miss) = self.lookup(ids);
        if let (Some(api), Miss::Unknown | Miss::Starting) = (&self.api, miss) {
            api.miss();
        }
        l
    }

    /// Labels again for a process whose labels were incomplete, after a
    /// new pod list came; does not ask for another one (the caller
    /// decides from the returned miss).
    pub fn relabel(&mut self, old: &Labels) -> (Labels, Miss) {
        let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        self.lookup(&CgroupIds {
            container_id: nonempty(&old.container_id),
            pod_uid: nonempty(&old.pod_uid),
        })
    }

    /// The directories first, then the API's pod list.
    fn lookup(&mut self, ids: &CgroupIds) -> (Labels, Miss) {
        let mut l = Labels {
            container_id: ids.container_id.clone().unwrap_or_default(),
            pod_uid: ids.pod_uid.clone().unwrap_or_default(),
            ..Labels::default()
        };
        if !l.pod_uid.is_empty() {
            self.fill_from_dirs(&mut l);
        }
        let miss = match &self.api {
            Some(api) if l.incomplete() => from_api(&api.index(), &mut l),
            _ => Miss::None,
        };
        (l, miss)
    }

    /// Namespace, pod and container from the kubelet's log directories.
    fn fill_from_dirs(&mut self, l: &mut Labels) {
        if !self.pods.contains_key(&l.pod_uid) || !self.containers.contains_key(&l.container_id) {
            self.rescan_if_due();
        }
        let Some(pod) = self.pods.get(&l.pod_uid).cloned() else {
            return;
        };
        l.namespace = pod.namespace;
        l.pod = pod.pod;
        l.container = match self.containers.get(&l.container_id) {
            Some(name) => name.clone(),
            None => single_container(&pod.dir).unwrap_or_default(),
        };
    }

    /// The UID of pod `namespace/name`, if a directory for it exists.
    pub fn pod_uid(&mut self, namespace: &str, name: &str) -> Option<String> {
        let find = |pods: &HashMap<String, PodDir>| {
            pods.iter()
                .find(|(_, p)| p.namespace == namespace && p.pod == name)
                .map(|(uid, _)| uid.clone())
        };
        if let Some(uid) = find(&self.pods) {
            return Some(uid);
        }
        self.rescan_if_due();
        find(&self.pods).or_else(|| {
            let idx = self.api.as_ref()?.index();
            idx.find(namespace, name).map(str::to_owned)
        })
    }

    fn rescan_if_due(&mut self) {
        if self.last_scan.is_some_and(|t| t.elapsed() < RESCAN) {
            return;
        }
        self.last_scan = Some(Instant::now());
        self.pods = scan_pods(&self.pods_dir);
        self.containers = scan_containers(&self.containers_dir);
    }
}

/// After a new pod list from the API server: gives the processes whose
/// labels were incomplete what the list says (their samples, old and new,
/// are labelled from then on, since profiles read the labels when they
/// are cut), and counts those still incomplete.
pub fn relabel(procs: &[Arc<ProcMeta>], kube: &std::sync::Mutex<Kubelet>) -> Missing {
    let mut missing = Missing::default();
    for p in procs {
        let old = p.labels();
        if !old.incomplete() {
            continue;
        }
        let (labels, miss) = lock(kube).relabel(&old);
        match miss {
            Miss::None => {}
            Miss::Unknown => missing.unknown += 1,
            Miss::Starting => missing.starting += 1,
        }
        if labels != *old {
            p.set_labels(labels);
        }
    }
    missing
}

/// Fills what `l` lacks from the API's pod list: by container ID first
/// (which also names static pods, whose cgroup carries no UUID), else by
/// pod UID. Never overwrites what the directories said.
fn from_api(idx: &PodIndex, l: &mut Labels) -> Miss {
    let fill = |l: &mut Labels, ns: &str, pod: &str| {
        if l.namespace.is_empty() {
            l.namespace = ns.to_owned();
            l.pod = pod.to_owned();
        }
    };
    if let Some((c, p)) = idx.container(&l.container_id) {
        fill(l, &p.namespace, &p.name);
        if l.pod_uid.is_empty() {
            l.pod_uid = c.pod_uid.clone();
        }
        if l.container.is_empty() {
            l.container = c.container.clone();
        }
        return Miss::None;
    }
    match idx.pod(&l.pod_uid) {
        Some(p) => {
            fill(l, &p.namespace, &p.name);
            if p.starting && l.container.is_empty() && !l.container_id.is_empty() {
                Miss::Starting
            } else {
                Miss::None
            }
        }
        None => Miss::Unknown,
    }
}

/// `<namespace>_<pod>_<uid>` directories. Kubernetes names cannot contain
/// `_`, so the split is unambiguous.
fn scan_pods(dir: &Path) -> HashMap<String, PodDir> {
    let mut out = HashMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let parts: Vec<&str> = name.split('_').collect();
        if let [ns, pod, uid] = parts[..] {
            if is_uid(uid) {
                out.insert(
                    uid.to_owned(),
                    PodDir {
                        namespace: ns.to_owned(),
                        pod: pod.to_owned(),
                        dir: e.path(),
                    },
                );
            }
        }
    }
    out
}

/// Container ID -> container name from `<pod>_<namespace>_<container>-<id>.log`.
fn scan_containers(dir: &Path) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".log")) else {
            continue;
        };
        let Some((rest, id)) = stem.rsplit_once('-') else {
            continue;
        };
        if !is_hex_id(id, 64) {
            continue;
        }
        if let [_, _, container] = rest.splitn(3, '_').collect::<Vec<_>>()[..] {
            out.insert(id.to_ascii_lowercase(), container.to_owned());
        }
    }
    out
}

/// The name of the only container directory of a pod, if there is one.
fn single_container(pod_dir: &Path) -> Option<String> {
    let mut names = std::fs::read_dir(pod_dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok());
    let first = names.next()?;
    names.next().is_none().then_some(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f2c0a1b9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a";
    const UID: &str = "1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901";

    #[test]
    fn kubelet_dirs_name_pod_and_container() {
        let dir = tempfile::tempdir().unwrap();
        let pods = dir.path().join("pods");
        let containers = dir.path().join("containers");
        std::fs::create_dir_all(pods.join(format!("shop_cart-7d9f_{UID}/app"))).unwrap();
        std::fs::create_dir_all(pods.join(format!("shop_cart-7d9f_{UID}/sidecar"))).unwrap();
        std::fs::create_dir_all(&containers).unwrap();
        std::fs::write(containers.join(format!("cart-7d9f_shop_app-{ID}.log")), "").unwrap();
        let mut k = Kubelet::new(pods, containers);
        let l = k.labels_for(&CgroupIds {
            container_id: Some(ID.into()),
            pod_uid: Some(UID.into()),
        });
        assert_eq!(
            (l.namespace.as_str(), l.pod.as_str(), l.container.as_str()),
            ("shop", "cart-7d9f", "app")
        );
        assert_eq!(k.pod_uid("shop", "cart-7d9f").as_deref(), Some(UID));
        assert_eq!(k.pod_uid("shop", "nope"), None);
    }
}
