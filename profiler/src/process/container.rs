//! Which container and pod a process runs in, as its cgroup says.
//!
//! `/proc/PID/cgroup` carries the container runtime's container ID and,
//! under Kubernetes, the pod UID. Every front end can label processes with
//! them; the node agent adds the pod's namespace and name from the
//! kubelet's directories (`agent::labels`).

/// Container and pod of one process; empty strings when not applicable.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Labels {
    /// Full container ID (64 hex digits).
    pub container_id: String,
    /// Pod UID, dashed (`0f1e...-....`).
    pub pod_uid: String,
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

/// What a cgroup path says: the container ID and the pod UID, if any.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupIds {
    pub container_id: Option<String>,
    pub pod_uid: Option<String>,
}

/// Parses `/proc/PID/cgroup`. Handles cgroup v2 (`0::/path`) and v1
/// (`N:controllers:/path`) lines and the path shapes of the common runtimes:
///
/// - containerd, systemd driver: `.../kubepods-burstable-pod<uid_>.slice/cri-containerd-<id>.scope`
/// - CRI-O: `.../crio-<id>.scope` (and `crio-conmon-<id>.scope` for its monitor)
/// - docker, systemd driver: `/system.slice/docker-<id>.scope`
/// - cgroupfs driver: `/kubepods/burstable/pod<uid>/<id>` or `/docker/<id>`
///
/// The v2 line wins when it names a container (on hybrid hosts the v1
/// lines may be stale); otherwise the first v1 line that names one.
pub fn parse_cgroup(text: &str) -> CgroupIds {
    let mut best = CgroupIds::default();
    let mut v2: Option<CgroupIds> = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(hier), Some(_), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let ids = parse_path(path);
        if hier == "0" {
            v2 = Some(ids);
        } else {
            if best.container_id.is_none() && ids.container_id.is_some() {
                best.container_id = ids.container_id;
            }
            if best.pod_uid.is_none() && ids.pod_uid.is_some() {
                best.pod_uid = ids.pod_uid;
            }
        }
    }
    match v2 {
        Some(v) if v.container_id.is_some() => CgroupIds {
            container_id: v.container_id,
            pod_uid: v.pod_uid.or(best.pod_uid),
        },
        Some(v) => CgroupIds {
            container_id: best.container_id,
            pod_uid: best.pod_uid.or(v.pod_uid),
        },
        None => best,
    }
}

/// The container ID (innermost component that holds one) and pod UID of
/// one cgroup path.
fn parse_path(path: &str) -> CgroupIds {
    let mut ids = CgroupIds::default();
    for comp in path.split('/').rev() {
        if ids.container_id.is_none() {
            ids.container_id = container_id_of(comp);
        }
        if ids.pod_uid.is_none() {
            ids.pod_uid = pod_uid_of(comp);
        }
    }
    ids
}

/// A 64-hex container ID in one path component, with the runtime's prefix
/// and `.scope` suffix stripped. The conmon monitor of CRI-O is not the
/// container, so it does not count.
fn container_id_of(comp: &str) -> Option<String> {
    let c = comp.strip_suffix(".scope").unwrap_or(comp);
    if c.starts_with("crio-conmon-") {
        return None;
    }
    let id = c.rsplit(['-', ':']).next().unwrap_or(c);
    is_hex_id(id, 64).then(|| id.to_ascii_lowercase())
}

/// A pod UID in one path component: `pod<uid>` (cgroupfs driver, dashes)
/// or `kubepods-<qos>-pod<uid>.slice` (systemd driver, underscores).
fn pod_uid_of(comp: &str) -> Option<String> {
    let c = comp.strip_suffix(".slice").unwrap_or(comp);
    let i = c.rfind("pod")?;
    let uid = c[i + 3..].replace('_', "-");
    is_uid(&uid).then_some(uid)
}

pub(crate) fn is_hex_id(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A UID as Kubernetes writes it: 8-4-4-4-12 hex digits.
pub(crate) fn is_uid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| is_hex_id(g, n))
}

impl Labels {
    /// In a container or pod, but not fully named yet.
    pub fn incomplete(&self) -> bool {
        (self.namespace.is_empty() || self.container.is_empty())
            && !(self.container_id.is_empty() && self.pod_uid.is_empty())
    }
}

/// The container and pod IDs of a running process; empty for host
/// processes and processes already gone.
pub fn ids_of(pid: u32) -> CgroupIds {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map(|t| parse_cgroup(&t))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f2c0a1b9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a";
    const UID: &str = "1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901";

    #[test]
    fn containerd_systemd_v2() {
        let t = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{ID}.scope\n",
            UID.replace('-', "_")
        );
        let ids = parse_cgroup(&t);
        assert_eq!(ids.container_id.as_deref(), Some(ID));
        assert_eq!(ids.pod_uid.as_deref(), Some(UID));
    }

    #[test]
    fn crio_v2_and_conmon() {
        let t = format!(
            "0::/kubepods.slice/kubepods-pod{}.slice/crio-{ID}.scope\n",
            UID.replace('-', "_")
        );
        assert_eq!(parse_cgroup(&t).container_id.as_deref(), Some(ID));
        let t = format!(
            "0::/kubepods.slice/kubepods-pod{}.slice/crio-conmon-{ID}.scope\n",
            UID.replace('-', "_")
        );
        let ids = parse_cgroup(&t);
        assert_eq!(ids.container_id, None);
        assert_eq!(ids.pod_uid.as_deref(), Some(UID));
    }

    #[test]
    fn cgroupfs_v1_kubepods_and_docker() {
        let t = format!(
            "12:pids:/kubepods/burstable/pod{UID}/{ID}\n11:memory:/kubepods/burstable/pod{UID}/{ID}\n0::/\n"
        );
        let ids = parse_cgroup(&t);
        assert_eq!(ids.container_id.as_deref(), Some(ID));
        assert_eq!(ids.pod_uid.as_deref(), Some(UID));
        let t = format!("4:cpu,cpuacct:/docker/{ID}\n");
        assert_eq!(parse_cgroup(&t).container_id.as_deref(), Some(ID));
        let t = format!("0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(parse_cgroup(&t).container_id.as_deref(), Some(ID));
    }

    #[test]
    fn host_processes_and_short_hex_have_no_ids() {
        let t = "4:memory:/process_api/bb9ae106df5b04f3dd665ea076f1d538\n1:cpu:/\n0::/user.slice/user-0.slice/session-1.scope\n";
        assert_eq!(parse_cgroup(t), CgroupIds::default());
        assert_eq!(parse_cgroup("garbage\n\n:"), CgroupIds::default());
    }
}
