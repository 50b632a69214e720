//! `weft exec` and `weft logs`: reaching a running mesh's pods from another
//! process through the recorded [`crate::state::MeshState`].

use std::path::PathBuf;
use std::process::ExitStatus;

use crate::error::{Error, Result};
use crate::sandbox::Sandbox;
use crate::state::MeshState;

/// Runs `argv` inside pod `pod` of mesh `mesh` (its network namespace and
/// its resolv.conf/hosts), as root, attached to this terminal.
pub fn exec(mesh: &str, pod: &str, argv: &[String]) -> Result<ExitStatus> {
    crate::runtime::require_root("weft exec")?;
    let state = MeshState::load(mesh)?;
    let p = state.find_pod(pod)?;
    let Some(program) = argv.first() else {
        return Err(Error::NotFound("weft exec: give a command after --".into()));
    };
    let sandbox = Sandbox {
        netns: p.netns.clone(),
        resolv_conf: Some(p.resolv_conf.clone()),
        hosts: Some(p.hosts.clone()),
        run_as: None,
        hostname: Some(p.name.clone()),
        new_session: false,
    };
    let mut cmd = sandbox.command(program)?;
    cmd.args(&argv[1..]);
    // Weft's own binaries by name, as inside the pods.
    let mut path = crate::bins::search_dirs();
    path.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    if let Ok(joined) = std::env::join_paths(path) {
        cmd.env("PATH", joined);
    }
    cmd.status().map_err(|e| Error::Spawn {
        what: format!("{program} in pod {}/{}", p.namespace, p.name),
        message: e.to_string(),
    })
}

/// The log file of `container` (default: the first app container; `proxy`
/// means `istio-proxy`) of pod `pod` in mesh `mesh`.
pub fn log_file(mesh: &str, pod: &str, container: Option<&str>) -> Result<PathBuf> {
    let state = MeshState::load(mesh)?;
    let p = state.find_pod(pod)?;
    let name = match container {
        None => p.containers.first().cloned().unwrap_or_default(),
        Some("proxy") | Some("sidecar") => "istio-proxy".to_owned(),
        Some(c) => c.to_owned(),
    };
    if !p.containers.contains(&name) {
        return Err(Error::NotFound(format!(
            "pod {}/{} has no container {name:?}; containers: {}",
            p.namespace,
            p.name,
            p.containers.join(", ")
        )));
    }
    Ok(p.log_dir.join(format!("{name}.log")))
}
