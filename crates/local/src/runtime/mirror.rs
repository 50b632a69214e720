//! weftd's config directory: what an API server would hold for the
//! manifests. Every non-workload object of the manifests (Services with
//! their VIP filled in, Istio resources as written, invalid ones included so
//! weftd applies its own last-good rule), a default MeshConfig (access logs
//! to the proxies' stdout) unless the manifests bring one, and one Pod
//! object per ready pod: the endpoint publication.
//!
//! Files are written atomically (a hidden temporary renamed into place;
//! weftd skips hidden files) and only when their content changes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::manifest::Document;

pub(crate) struct Mirror {
    dir: PathBuf,
    written: BTreeMap<PathBuf, String>,
}

impl Mirror {
    pub(crate) fn new(dir: PathBuf) -> Result<Mirror> {
        for sub in ["config", "pods"] {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d).map_err(|source| Error::Io { path: d, source })?;
        }
        Ok(Mirror {
            dir,
            written: BTreeMap::new(),
        })
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    fn write(&mut self, path: PathBuf, text: String) -> Result<()> {
        if self.written.get(&path) == Some(&text) {
            return Ok(());
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = path.with_file_name(format!(".{name}.tmp"));
        std::fs::write(&tmp, &text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
        self.written.insert(path, text);
        Ok(())
    }

    fn remove(&mut self, path: &Path) {
        if self.written.remove(path).is_some() || path.exists() {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Writes the config objects, one mirror file per manifest file.
    pub(crate) fn set_config(&mut self, docs: &[Document]) -> Result<()> {
        let mut by_file: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
        for d in docs {
            by_file.entry(d.file.clone()).or_default().push(&d.value);
        }
        let has_mesh = docs.iter().any(|d| {
            d.kind() == "ConfigMap" && d.name() == "istio" && d.namespace() == "istio-system"
        });
        let mut wanted = Vec::new();
        for (file, values) in &by_file {
            let name = format!(
                "{:08x}-{}",
                crate::workload::fnv1a(file.as_bytes()),
                Path::new(file)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "manifest.yaml".into())
            );
            let path = self.dir.join("config").join(name);
            let text = values
                .iter()
                .map(|v| serde_yaml::to_string(v).unwrap_or_default())
                .collect::<Vec<_>>()
                .join("---\n");
            self.write(path.clone(), format!("# from {file}\n{text}"))?;
            wanted.push(path);
        }
        let mesh = self.dir.join("config").join("weft-up-mesh.yaml");
        if has_mesh {
            self.remove(&mesh);
        } else {
            self.write(mesh.clone(), default_mesh_config())?;
            wanted.push(mesh);
        }
        let stale: Vec<PathBuf> = self
            .written
            .keys()
            .filter(|p| p.parent() == Some(&self.dir.join("config")) && !wanted.contains(p))
            .cloned()
            .collect();
        for p in stale {
            self.remove(&p);
        }
        Ok(())
    }

    fn pod_path(&self, namespace: &str, name: &str) -> PathBuf {
        self.dir
            .join("pods")
            .join(format!("{namespace}.{name}.yaml"))
    }

    /// Publishes a ready pod (its endpoint).
    pub(crate) fn publish_pod(&mut self, object: &Value, ip: &str, host_ip: &str) -> Result<()> {
        let mut pod = object.clone();
        pod["status"] = json!({
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "hostIP": host_ip,
            "conditions": [{"type": "Ready", "status": "True"}],
        });
        let ns = pod["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_owned();
        let name = pod["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let text = serde_yaml::to_string(&pod).unwrap_or_default();
        self.write(self.pod_path(&ns, &name), text)
    }

    /// Withdraws a pod's endpoint.
    pub(crate) fn withdraw_pod(&mut self, namespace: &str, name: &str) {
        let path = self.pod_path(namespace, name);
        self.remove(&path);
    }
}

/// Istio's demo profile logs every request: access logs go to each proxy's
/// stdout (`weft logs POD -c istio-proxy`), in Istio's default text format
/// with `%UPSTREAM_CLUSTER%` for the newer `%UPSTREAM_CLUSTER_RAW%`.
pub(crate) const ACCESS_LOG_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n";

fn default_mesh_config() -> String {
    let mesh = json!({"accessLogFile": "/dev/stdout", "accessLogFormat": ACCESS_LOG_FORMAT});
    let object = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "istio", "namespace": "istio-system"},
        "data": {"mesh": serde_yaml::to_string(&mesh).unwrap_or_default()},
    });
    format!(
        "# written by weft up: the manifests hold no istio-system/istio ConfigMap\n{}",
        serde_yaml::to_string(&object).unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_are_published_with_status_and_withdrawn() {
        let tmp = tempfile::tempdir().unwrap();
        let mut m = Mirror::new(tmp.path().to_owned()).unwrap();
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "r-0", "namespace": "demo", "labels": {"app": "r"}},
            "spec": {"containers": [{"name": "r", "ports": [{"name": "http", "containerPort": 9080}]}]}});
        m.publish_pod(&pod, "10.88.0.5", "10.88.0.1").unwrap();
        let path = tmp.path().join("pods/demo.r-0.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        // weftd's registry reads it back as a running pod with that IP.
        let files = BTreeMap::from([("p.yaml".to_owned(), text)]);
        let report = weft_api::analyze_files(&files);
        assert!(!report.has_errors(), "{report}");
        let decoded = weft_api::decode::decode_file("p.yaml", &files["p.yaml"]);
        let (object, problems) = &decoded.objects[0];
        assert!(problems.is_empty(), "{problems:?}");
        let weft_api::Resource::Pod(p) = &object.spec else {
            panic!("not a Pod: {:?}", object.spec)
        };
        assert_eq!(p.ips(), ["10.88.0.5"]);
        m.withdraw_pod("demo", "r-0");
        assert!(!path.exists());
    }

    #[test]
    fn config_files_mirror_manifests_and_default_mesh_config() {
        let tmp = tempfile::tempdir().unwrap();
        let mut m = Mirror::new(tmp.path().to_owned()).unwrap();
        let doc = |file: &str, v: Value| Document {
            file: file.into(),
            index: 1,
            value: v,
        };
        let svc = doc(
            "a/svc.yaml",
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {"clusterIP": "10.96.0.9"}}),
        );
        m.set_config(std::slice::from_ref(&svc)).unwrap();
        let names: Vec<String> = std::fs::read_dir(tmp.path().join("config"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| !n.starts_with('.'))
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        let mesh = std::fs::read_to_string(tmp.path().join("config/weft-up-mesh.yaml")).unwrap();
        assert!(mesh.contains("accessLogFile: /dev/stdout"), "{mesh}");
        // A manifest that brings its own mesh config replaces the default;
        // a file that went away is removed.
        let cm = doc(
            "b/mesh.yaml",
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "istio", "namespace": "istio-system"}, "data": {"mesh": "{}"}}),
        );
        m.set_config(&[cm]).unwrap();
        let names: Vec<String> = std::fs::read_dir(tmp.path().join("config"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(names[0].ends_with("-mesh.yaml") && names[0] != "weft-up-mesh.yaml");
    }
}
