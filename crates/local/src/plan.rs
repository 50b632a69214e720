//! The pure planning core: manifests in, a [`Plan`] out — namespaces, the
//! Services with their local VIPs, the pods to run (replicas and names as
//! Kubernetes' controllers would make them, injected by the same core as
//! `weft kube-inject`), and the objects weftd serves. A bad object gives a
//! [`PlanError`] and is left out; everything else is still planned.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde_json::{Map, Value, json};

use crate::error::PlanError;
use crate::manifest::{self, Document};
use crate::workload;

pub use crate::workload::PodPlan;

/// Settings of the planner.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// Injection settings (mesh config with the discovery and CA addresses).
    pub settings: weft_inject::Settings,
    /// First address of the Service VIP range.
    pub vip_base: Ipv4Addr,
    /// Number of addresses in the VIP range.
    pub vip_count: u32,
    /// VIPs handed out by an earlier plan (`namespace/name` → VIP), kept stable.
    pub previous_vips: BTreeMap<String, Ipv4Addr>,
    /// The node's name (`spec.nodeName`).
    pub node_name: String,
}

/// The local VIP range: 10.96.0.0/16, Kubernetes' usual service range.
pub const VIP_BASE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
/// Addresses in [`VIP_BASE`]'s range.
pub const VIP_COUNT: u32 = 65_534;

impl PlanOptions {
    /// Options for a node whose weftd serves xDS on `discovery` and the CA on
    /// `ca` (`HOST:PORT`). With `dns_capture`, proxies get Istio's DNS
    /// capture (`ISTIO_META_DNS_CAPTURE=true` in the mesh config's proxy
    /// metadata, which also turns on `--redirect-dns` in the init step).
    pub fn local(discovery: &str, ca: &str, dns_capture: bool) -> Self {
        let mut settings = weft_inject::Settings::default();
        let metadata = if dns_capture {
            json!({"ISTIO_META_DNS_CAPTURE": "true"})
        } else {
            json!({})
        };
        let mesh = json!({
            "defaultConfig": {
                "discoveryAddress": discovery,
                "proxyMetadata": metadata,
            }
        });
        let values = json!({"global": {"caAddress": ca}});
        settings
            .merge_mesh("weft up", &mesh.to_string())
            .expect("the built-in mesh config parses");
        settings
            .merge_values("weft up", &values.to_string())
            .expect("the built-in values parse");
        PlanOptions {
            settings,
            vip_base: VIP_BASE,
            vip_count: VIP_COUNT,
            previous_vips: BTreeMap::new(),
            node_name: "weft-node".into(),
        }
    }
}

/// A Service and its VIP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePlan {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The VIP (`None` for headless and ExternalName services).
    pub vip: Option<Ipv4Addr>,
    /// Its ports.
    pub ports: Vec<ServicePortPlan>,
    /// Its pod selector.
    pub selector: BTreeMap<String, String>,
}

/// One port of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePortPlan {
    /// Port name.
    pub name: String,
    /// The service port.
    pub port: u16,
    /// `TCP` or `UDP`.
    pub protocol: String,
    /// The target: a number, or a container port name.
    pub target: Target,
}

/// A Service port's target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A port number.
    Number(u16),
    /// A named container port.
    Named(String),
}

/// Everything `weft up` runs for a set of manifests.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Namespaces and their labels.
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// Services, sorted by namespace and name.
    pub services: Vec<ServicePlan>,
    /// Pods, sorted by namespace and name.
    pub pods: Vec<PodPlan>,
    /// Objects for weftd (Services carry their VIP; workloads are left out:
    /// the runtime publishes each pod once it is ready).
    pub config: Vec<Document>,
    /// Problems; the objects they name are not planned.
    pub errors: Vec<PlanError>,
}

impl Plan {
    /// The service `namespace/name`.
    pub fn service(&self, namespace: &str, name: &str) -> Option<&ServicePlan> {
        self.services
            .iter()
            .find(|s| s.namespace == namespace && s.name == name)
    }

    /// VIPs by `namespace/name`, for the next plan's `previous_vips`.
    pub fn vips(&self) -> BTreeMap<String, Ipv4Addr> {
        self.services
            .iter()
            .filter_map(|s| Some((format!("{}/{}", s.namespace, s.name), s.vip?)))
            .collect()
    }
}

/// Plans a set of manifest files (file name → text).
pub fn plan_files(files: &BTreeMap<String, String>, opts: &PlanOptions) -> Plan {
    let (docs, mut errors) = manifest::parse_files(files);
    // Istio resources get weftd's own validation, with lines.
    for p in weft_api::analyze_files(files).problems {
        // YAML syntax errors are reported once, by `parse_files`.
        if !p.is_error()
            || p.error.message.starts_with("not valid YAML")
            || p.error.message.starts_with("invalid YAML")
        {
            continue;
        }
        errors.push(PlanError {
            file: match p.line() {
                0 => p.origin.file.clone(),
                line => format!("{}:{line}", p.origin.file),
            },
            document: p.origin.doc,
            kind: p
                .object
                .as_ref()
                .map(|k| k.kind.to_string())
                .unwrap_or_default(),
            name: p
                .object
                .as_ref()
                .map(|k| {
                    if k.namespace.is_empty() {
                        k.name.clone()
                    } else {
                        format!("{}/{}", k.namespace, k.name)
                    }
                })
                .unwrap_or_default(),
            field: p.error.path.clone(),
            message: p.error.message.clone(),
        });
    }
    let mut plan = plan_documents(docs, opts);
    errors.append(&mut plan.errors);
    plan.errors = errors;
    plan
}

/// Plans parsed documents.
pub fn plan_documents(docs: Vec<Document>, opts: &PlanOptions) -> Plan {
    let mut plan = Plan::default();
    let mut seen: BTreeSet<(String, String, String)> = BTreeSet::new();
    let mut kept = Vec::new();
    for doc in docs {
        if doc.name().is_empty() {
            plan.errors
                .push(PlanError::new(&doc, "metadata.name", "missing"));
            continue;
        }
        let key = (
            doc.kind().to_owned(),
            doc.namespace().to_owned(),
            doc.name().to_owned(),
        );
        if !seen.insert(key) {
            plan.errors.push(PlanError::new(
                &doc,
                "metadata.name",
                "another document already defines this object; this one is ignored",
            ));
            continue;
        }
        kept.push(doc);
    }
    for doc in &kept {
        if doc.kind() == "Namespace" {
            let labels = workload::string_map(doc.value.pointer("/metadata/labels"));
            plan.namespaces.insert(doc.name().to_owned(), labels);
        }
    }
    for doc in &kept {
        if doc.kind() != "Namespace" && doc.kind() != "List" {
            plan.namespaces
                .entry(doc.namespace().to_owned())
                .or_default();
        }
    }

    let mut used: BTreeSet<Ipv4Addr> = BTreeSet::new();
    // Explicit and previous VIPs first, so new services never take them.
    let mut services: Vec<(&Document, ServicePlan)> = Vec::new();
    for doc in kept.iter().filter(|d| d.kind() == "Service") {
        match service(doc) {
            Ok(svc) => {
                if let Some(vip) = svc.vip {
                    used.insert(vip);
                }
                services.push((doc, svc));
            }
            Err(e) => plan.errors.push(e),
        }
    }
    for (_, svc) in &mut services {
        if svc.vip.is_some() {
            continue;
        }
        if let Some(prev) = opts
            .previous_vips
            .get(&format!("{}/{}", svc.namespace, svc.name))
            && !used.contains(prev)
        {
            svc.vip = Some(*prev);
            used.insert(*prev);
        }
    }
    for (doc, svc) in &mut services {
        if svc.vip.is_none() && wants_vip(doc) {
            let vip = allocate(opts, &format!("{}/{}", svc.namespace, svc.name), &used);
            used.insert(vip);
            svc.vip = Some(vip);
        }
    }

    let mut config = Vec::new();
    for doc in &kept {
        if weft_inject::objects::pod_template_pointer(doc.kind()).is_some() {
            let ns_labels: Map<String, Value> = plan
                .namespaces
                .get(doc.namespace())
                .map(|l| {
                    l.iter()
                        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                        .collect()
                })
                .unwrap_or_default();
            match workload::pods_of(doc, &ns_labels, opts) {
                Ok(mut pods) => plan.pods.append(&mut pods),
                Err(e) => plan.errors.push(e),
            }
            continue;
        }
        let mut doc = doc.clone();
        if doc.kind() == "Service"
            && let Some((_, svc)) = services
                .iter()
                .find(|(_, s)| s.namespace == doc.namespace() && s.name == doc.name())
            && let Some(vip) = svc.vip
            && let Some(spec) = doc.value.get_mut("spec").and_then(Value::as_object_mut)
        {
            spec.insert("clusterIP".into(), json!(vip.to_string()));
            spec.insert("clusterIPs".into(), json!([vip.to_string()]));
        }
        config.push(doc);
    }
    plan.config = config;
    plan.services = services.into_iter().map(|(_, s)| s).collect();
    plan.services
        .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    plan.pods
        .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    // Pod names are unique per namespace (two workloads may collide).
    let mut names = BTreeSet::new();
    let mut errors = Vec::new();
    plan.pods.retain(|p| {
        let fresh = names.insert((p.namespace.clone(), p.name.clone()));
        if !fresh {
            errors.push(PlanError {
                file: p.source.0.clone(),
                document: p.source.1,
                kind: p.owner_kind.clone(),
                name: format!("{}/{}", p.namespace, p.owner_name),
                field: "metadata.name".into(),
                message: format!("pod name {:?} is already taken by another workload", p.name),
            });
        }
        fresh
    });
    plan.errors.append(&mut errors);
    plan
}

fn wants_vip(doc: &Document) -> bool {
    let spec = doc.value.get("spec");
    let ty = spec
        .and_then(|s| s.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP");
    let ip = spec
        .and_then(|s| s.get("clusterIP"))
        .and_then(Value::as_str)
        .unwrap_or("");
    ty != "ExternalName" && ip != "None"
}

/// A VIP for `key`: a stable hash into the range, probing upward past used ones.
fn allocate(opts: &PlanOptions, key: &str, used: &BTreeSet<Ipv4Addr>) -> Ipv4Addr {
    let base = u32::from(opts.vip_base);
    let count = opts.vip_count.max(1);
    let mut slot = workload::fnv1a(key.as_bytes()) % count;
    for _ in 0..count {
        let ip = Ipv4Addr::from(base + slot);
        if !used.contains(&ip) {
            return ip;
        }
        slot = (slot + 1) % count;
    }
    Ipv4Addr::from(base)
}

fn service(doc: &Document) -> Result<ServicePlan, PlanError> {
    let spec = doc.value.get("spec").cloned().unwrap_or(json!({}));
    let vip = match spec.get("clusterIP").and_then(Value::as_str) {
        None | Some("") | Some("None") => None,
        Some(ip) => Some(ip.parse::<Ipv4Addr>().map_err(|_| {
            PlanError::new(
                doc,
                "spec.clusterIP",
                format!("{ip:?} is not an IPv4 address"),
            )
        })?),
    };
    let mut ports = Vec::new();
    for (i, p) in spec
        .get("ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let field = |f: &str| format!("spec.ports[{i}].{f}");
        let port = p
            .get("port")
            .and_then(Value::as_u64)
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                PlanError::new(
                    doc,
                    field("port"),
                    format!(
                        "{} is not a port number",
                        p.get("port").map_or("missing".into(), Value::to_string)
                    ),
                )
            })?;
        let target = match p.get("targetPort") {
            None | Some(Value::Null) => Target::Number(port),
            Some(Value::Number(n)) => Target::Number(
                n.as_u64()
                    .and_then(|n| u16::try_from(n).ok())
                    .filter(|n| *n > 0)
                    .ok_or_else(|| {
                        PlanError::new(doc, field("targetPort"), format!("{n} is not a port"))
                    })?,
            ),
            Some(Value::String(s)) => match s.parse::<u16>() {
                Ok(n) => Target::Number(n),
                Err(_) => Target::Named(s.clone()),
            },
            Some(other) => {
                return Err(PlanError::new(
                    doc,
                    field("targetPort"),
                    format!("{other} is not a port"),
                ));
            }
        };
        ports.push(ServicePortPlan {
            name: p
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            port,
            protocol: p
                .get("protocol")
                .and_then(Value::as_str)
                .unwrap_or("TCP")
                .to_owned(),
            target,
        });
    }
    Ok(ServicePlan {
        namespace: doc.namespace().to_owned(),
        name: doc.name().to_owned(),
        vip,
        ports,
        selector: workload::string_map(spec.get("selector")),
    })
}
