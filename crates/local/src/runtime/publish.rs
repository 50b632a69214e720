//! Endpoint publication and the recorded state: ready pods become Pod
//! objects in weftd's directory (unready ones are withdrawn), the node's
//! Service NAT follows the ready endpoints, and `state.json` records the
//! mesh for `weft down/exec/logs`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Instant;

use super::Mesh;
use crate::container::Role;
use crate::error::Result;
use crate::plan::Target;
use crate::services::{self, VipPort};
use crate::state::{MeshState, PodState};

impl Mesh {
    /// Publishes ready pods, withdraws unready ones, updates the NAT.
    pub(super) fn publish(&mut self) -> Result<()> {
        let gw = self.node.gateway.to_string();
        let mut ready_ips: BTreeMap<String, Ipv4Addr> = BTreeMap::new();
        for (key, r) in &self.pods {
            let ready = r.status().ready;
            let was = self.published.get(key).copied().unwrap_or(false);
            if ready && !was {
                self.mirror
                    .publish_pod(&r.plan.object, &r.env.ip.to_string(), &gw)?;
                self.published.insert(key.clone(), true);
                self.last_change = Instant::now();
                (self.report)(&format!(
                    "pod {key} {}: ready, endpoint published",
                    r.env.ip
                ));
            } else if !ready && was {
                self.mirror.withdraw_pod(&r.plan.namespace, &r.plan.name);
                self.published.remove(key);
                self.last_change = Instant::now();
                (self.report)(&format!("pod {key}: not ready, endpoint withdrawn"));
            }
            if ready {
                ready_ips.insert(key.clone(), r.env.ip);
            }
        }
        let mut ports = Vec::new();
        for s in &self.plan.services {
            let Some(vip) = s.vip else { continue };
            for sp in &s.ports {
                let mut endpoints = Vec::new();
                for (key, r) in &self.pods {
                    let Some(ip) = ready_ips.get(key) else {
                        continue;
                    };
                    let p = &r.plan;
                    if p.namespace != s.namespace
                        || s.selector.is_empty()
                        || !s.selector.iter().all(|(k, v)| p.labels.get(k) == Some(v))
                    {
                        continue;
                    }
                    let target = match &sp.target {
                        Target::Number(n) => Some(*n),
                        Target::Named(name) => named_port(&p.object, name),
                    };
                    if let Some(t) = target {
                        endpoints.push((*ip, t));
                    }
                }
                ports.push(VipPort {
                    vip,
                    port: sp.port,
                    protocol: sp.protocol.to_ascii_lowercase(),
                    endpoints,
                });
            }
        }
        self.node.set_nat(services::rules(&ports))
    }

    pub(super) fn save_state(&mut self) -> Result<()> {
        let pods: Vec<PodState> = self
            .pods
            .values()
            .map(|r| {
                let st = r.status();
                let mut containers: Vec<String> = r
                    .plan
                    .containers
                    .iter()
                    .filter(|c| c.role == Role::App)
                    .map(|c| c.name.clone())
                    .collect();
                containers.extend(
                    r.plan
                        .containers
                        .iter()
                        .filter(|c| c.role != Role::App)
                        .map(|c| c.name.clone()),
                );
                PodState {
                    namespace: r.plan.namespace.clone(),
                    name: r.plan.name.clone(),
                    ip: r.env.ip.to_string(),
                    netns: r.env.netns.clone(),
                    resolv_conf: r.env.resolv_conf.clone(),
                    hosts: r.env.hosts.clone(),
                    log_dir: r.env.dir.clone(),
                    containers,
                    ready: st.ready,
                    pids: st.pids,
                    restarts: st.restarts,
                    injected: r.plan.injected,
                }
            })
            .collect();
        let state = MeshState {
            name: self.opts.name.clone(),
            pid: std::process::id(),
            manifests: self.opts.manifests.clone(),
            node_netns: self.node.netns_path(),
            node_ip: self.node.gateway.to_string(),
            weftd_log: self.node.weftd_log.clone(),
            ready: self.all_ready(),
            pods,
            services: self
                .plan
                .services
                .iter()
                .map(|s| {
                    (
                        format!("{}/{}", s.namespace, s.name),
                        s.vip
                            .map(|v| v.to_string())
                            .unwrap_or_else(|| "None".into()),
                    )
                })
                .collect(),
        };
        let text = serde_json::to_string(&state).unwrap_or_default();
        if text != self.last_state {
            state.save()?;
            self.last_state = text;
        }
        Ok(())
    }
}

fn named_port(pod: &serde_json::Value, name: &str) -> Option<u16> {
    pod.pointer("/spec/containers")?
        .as_array()?
        .iter()
        .flat_map(|c| {
            c.get("ports")
                .and_then(|p| p.as_array())
                .into_iter()
                .flatten()
        })
        .find(|p| p.get("name").and_then(|n| n.as_str()) == Some(name))?
        .get("containerPort")?
        .as_u64()
        .and_then(|n| u16::try_from(n).ok())
}
