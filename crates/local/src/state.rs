//! The runtime's record of a running mesh, kept as JSON in
//! `/run/weft/<mesh>/state.json` so `weft down`, `weft exec` and
//! `weft logs` (separate processes) find its namespaces, pods and logs.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Where meshes keep their state.
pub const STATE_ROOT: &str = "/run/weft";

/// The prefix of every namespace of mesh `name`.
pub fn prefix(name: &str) -> String {
    format!("weft-{name}-")
}

/// The state directory of mesh `name`.
pub fn dir(name: &str) -> PathBuf {
    Path::new(STATE_ROOT).join(name)
}

/// A mesh as recorded on disk.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MeshState {
    /// The mesh name (`weft up --name`).
    pub name: String,
    /// The pid of `weft up`.
    pub pid: u32,
    /// The manifests directory.
    pub manifests: PathBuf,
    /// The node namespace (`/run/netns/...`).
    pub node_netns: PathBuf,
    /// The node bridge's address (weftd listens there).
    pub node_ip: String,
    /// weftd's log file.
    pub weftd_log: PathBuf,
    /// Whether every planned pod is ready.
    pub ready: bool,
    /// The pods.
    pub pods: Vec<PodState>,
    /// Services: `namespace/name` and VIP.
    pub services: Vec<(String, String)>,
}

/// One pod as recorded on disk.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PodState {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its IPv4 address.
    pub ip: String,
    /// Its network namespace file.
    pub netns: PathBuf,
    /// Its resolv.conf.
    pub resolv_conf: PathBuf,
    /// Its hosts file.
    pub hosts: PathBuf,
    /// Its log directory (`CONTAINER.log`).
    pub log_dir: PathBuf,
    /// Container names, apps first.
    pub containers: Vec<String>,
    /// Whether it is ready (its endpoint is published).
    pub ready: bool,
    /// Process ids by container (0 when not running).
    pub pids: Vec<(String, u32)>,
    /// Restarts of its containers.
    pub restarts: u32,
    /// Whether it has a sidecar.
    pub injected: bool,
}

impl MeshState {
    /// Reads the state of mesh `name`.
    pub fn load(name: &str) -> Result<MeshState> {
        let path = dir(name).join("state.json");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            Error::NotFound(format!(
                "no running mesh named {name:?} ({}: {e}); start one with `weft up DIR`",
                path.display()
            ))
        })?;
        serde_json::from_str(&text).map_err(|e| Error::NotFound(format!("{}: {e}", path.display())))
    }

    /// Writes it atomically.
    pub fn save(&self) -> Result<()> {
        let dir = dir(&self.name);
        let path = dir.join("state.json");
        let tmp = dir.join(".state.json.tmp");
        let text = serde_json::to_string_pretty(self).unwrap_or_default();
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|source| Error::Io { path, source })
    }

    /// Finds a pod by `name`, `namespace/name`, or a unique name prefix
    /// (e.g. the Deployment's name).
    pub fn find_pod(&self, query: &str) -> Result<&PodState> {
        let (ns, name) = match query.split_once('/') {
            Some((ns, name)) => (Some(ns), name),
            None => (None, query),
        };
        let in_ns = |p: &&PodState| ns.is_none_or(|ns| p.namespace == ns);
        if let Some(p) = self.pods.iter().filter(in_ns).find(|p| p.name == name) {
            return Ok(p);
        }
        let matches: Vec<&PodState> = self
            .pods
            .iter()
            .filter(in_ns)
            .filter(|p| p.name.starts_with(&format!("{name}-")))
            .collect();
        match matches.as_slice() {
            [one] => Ok(one),
            [] => Err(Error::NotFound(format!(
                "mesh {:?} has no pod {query:?}; pods: {}",
                self.name,
                self.pods
                    .iter()
                    .map(|p| format!("{}/{}", p.namespace, p.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
            many => Err(Error::NotFound(format!(
                "{query:?} matches several pods: {}; name one",
                many.iter()
                    .map(|p| format!("{}/{}", p.namespace, p.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// Mesh names with a state directory.
    pub fn list() -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(STATE_ROOT)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().join("state.json").exists())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_are_found_by_name_prefix_or_namespace() {
        let pod = |ns: &str, name: &str| PodState {
            namespace: ns.into(),
            name: name.into(),
            ..PodState::default()
        };
        let state = MeshState {
            name: "m".into(),
            pods: vec![
                pod("demo", "reviews-v1-abcde-0"),
                pod("demo", "reviews-v2-fghjk-0"),
                pod("demo", "client-xyzwv-0"),
                pod("other", "client-xyzwv-0"),
            ],
            ..MeshState::default()
        };
        assert_eq!(
            state.find_pod("reviews-v1").unwrap().name,
            "reviews-v1-abcde-0"
        );
        assert_eq!(state.find_pod("other/client").unwrap().namespace, "other");
        let err = state.find_pod("client").unwrap_err().to_string();
        assert!(err.contains("several pods"), "{err}");
        let err = state.find_pod("reviews").unwrap_err().to_string();
        assert!(err.contains("several pods"), "{err}");
        let err = state.find_pod("nope").unwrap_err().to_string();
        assert!(err.contains("has no pod \"nope\""), "{err}");
    }
}
