//! Injection settings: the injection config (policy, selectors, templates),
//! Helm-style values and Istio's MeshConfig, with Weft's defaults and the
//! parsing of the files `weft kube-inject` and weftd accept.
//!
//! Values and mesh config stay untyped (`serde_json::Value`) because the
//! templates read arbitrary keys from them; user files are deep-merged over
//! the defaults, so a file only needs the keys it changes.

use crate::error::InjectError;
use crate::selector::LabelSelector;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// The default sidecar template (Weft's own, rendered with minijinja).
pub const SIDECAR_TEMPLATE: &str = include_str!("../templates/sidecar.yaml.j2");
/// Template for gateways (`inject.istio.io/templates: gateway`).
pub const GATEWAY_TEMPLATE: &str = include_str!("../templates/gateway.yaml.j2");
/// Template mounting the SPIFFE CSI driver socket (`spire`).
pub const SPIRE_TEMPLATE: &str = include_str!("../templates/spire.yaml.j2");

/// The container image Weft's default template uses for the proxy and the init step.
pub const DEFAULT_HUB: &str = "ghcr.io/weft-mesh";
/// Image name (without hub and tag) of weft-proxy.
pub const DEFAULT_PROXY_IMAGE: &str = "weft-proxy";

/// `policy` of the injection config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Inject unless the object opts out.
    #[default]
    Enabled,
    /// Inject only when the object opts in.
    Disabled,
}

/// The injection config: what Istio keeps in the `config` key of the
/// `istio-sidecar-injector` ConfigMap (templates are Weft's own syntax).
#[derive(Debug, Clone)]
pub struct InjectionConfig {
    /// Default decision for objects that say nothing.
    pub policy: Policy,
    /// Objects whose labels match one of these are injected (if they say nothing).
    pub always_inject_selector: Vec<LabelSelector>,
    /// Objects whose labels match one of these are not injected (if they say nothing).
    pub never_inject_selector: Vec<LabelSelector>,
    /// Annotations added to every injected pod.
    pub injected_annotations: BTreeMap<String, String>,
    /// Named templates.
    pub templates: BTreeMap<String, String>,
    /// Templates applied when the pod does not name any.
    pub default_templates: Vec<String>,
    /// Template aliases (`name -> [templates]`).
    pub aliases: BTreeMap<String, Vec<String>>,
}

impl Default for InjectionConfig {
    fn default() -> Self {
        let mut templates = BTreeMap::new();
        templates.insert("sidecar".to_string(), SIDECAR_TEMPLATE.to_string());
        templates.insert("gateway".to_string(), GATEWAY_TEMPLATE.to_string());
        templates.insert("spire".to_string(), SPIRE_TEMPLATE.to_string());
        InjectionConfig {
            policy: Policy::Enabled,
            always_inject_selector: Vec::new(),
            never_inject_selector: Vec::new(),
            injected_annotations: BTreeMap::new(),
            templates,
            default_templates: vec!["sidecar".to_string()],
            aliases: BTreeMap::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct InjectionConfigFile {
    #[serde(default)]
    policy: Option<Policy>,
    #[serde(default)]
    always_inject_selector: Vec<LabelSelector>,
    #[serde(default)]
    never_inject_selector: Vec<LabelSelector>,
    #[serde(default)]
    injected_annotations: BTreeMap<String, String>,
    #[serde(default)]
    template: Option<String>,
    #[serde(default)]
    templates: BTreeMap<String, String>,
    #[serde(default)]
    default_templates: Vec<String>,
    #[serde(default)]
    aliases: BTreeMap<String, Vec<String>>,
}

impl InjectionConfig {
    /// Parse an injection config file (YAML). `template` replaces the
    /// `sidecar` template; `templates` add or replace named templates.
    pub fn parse(source_name: &str, text: &str) -> Result<Self, InjectError> {
        // The istio-sidecar-injector ConfigMap itself: use its `config` key.
        let inner = configmap_key(source_name, text, "config")?;
        let text = inner.as_deref().unwrap_or(text);
        let file: InjectionConfigFile =
            serde_yaml::from_str(text).map_err(|e| InjectError::Config {
                source_name: source_name.to_string(),
                message: format!("invalid injection config: {e}"),
            })?;
        let mut config = InjectionConfig::default();
        if let Some(policy) = file.policy {
            config.policy = policy;
        }
        config.always_inject_selector = file.always_inject_selector;
        config.never_inject_selector = file.never_inject_selector;
        config.injected_annotations = file.injected_annotations;
        if let Some(t) = file.template {
            config.templates.insert("sidecar".to_string(), t);
        }
        config.templates.extend(file.templates);
        if !file.default_templates.is_empty() {
            config.default_templates = file.default_templates;
        }
        config.aliases = file.aliases;
        for name in &config.default_templates {
            if !config.templates.contains_key(name) {
                return Err(InjectError::Config {
                    source_name: source_name.to_string(),
                    message: format!("defaultTemplates names unknown template {name:?}"),
                });
            }
        }
        Ok(config)
    }
}

/// Everything the injection needs besides the object and its namespace.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Policy, selectors and templates.
    pub config: InjectionConfig,
    /// Helm-style values (`global.proxy.*`, `global.hub`, ...), defaults merged in.
    pub values: Value,
    /// Istio MeshConfig (`defaultConfig`, `enablePrometheusMerge`, ...), defaults merged in.
    pub mesh: Value,
    /// The control-plane revision doing the injection (`default` when unset).
    pub revision: String,
    /// Compiled templates (rebuilt when `config.templates` changes).
    pub compiled: crate::template::TemplateCache,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            config: InjectionConfig::default(),
            values: default_values(),
            mesh: default_mesh(),
            revision: "default".to_string(),
            compiled: Default::default(),
        }
    }
}

impl Settings {
    /// Merge a values document (YAML or JSON) over the current values. An
    /// IstioOperator document contributes its `spec.values` and `spec.meshConfig`.
    pub fn merge_values(&mut self, source_name: &str, text: &str) -> Result<(), InjectError> {
        // The istio-sidecar-injector ConfigMap: its `values` key (JSON).
        let inner = configmap_key(source_name, text, "values")?;
        let doc = parse_yaml_value(source_name, inner.as_deref().unwrap_or(text))?;
        if doc.get("kind").and_then(Value::as_str) == Some("IstioOperator") {
            return self.merge_operator(&doc);
        }
        merge_into(&mut self.values, &doc);
        self.pick_up_values_templates();
        Ok(())
    }

    /// Merge a MeshConfig document (YAML) over the current mesh config.
    pub fn merge_mesh(&mut self, source_name: &str, text: &str) -> Result<(), InjectError> {
        let doc = parse_yaml_value(source_name, text)?;
        // Istio's mesh ConfigMap keeps the MeshConfig under the `mesh` key as a string.
        let doc = match doc
            .get("data")
            .and_then(|d| d.get("mesh"))
            .and_then(Value::as_str)
        {
            Some(inner) => parse_yaml_value(source_name, inner)?,
            None => doc,
        };
        merge_into(&mut self.mesh, &doc);
        Ok(())
    }

    /// Apply an IstioOperator's `spec.values` and `spec.meshConfig`.
    pub fn merge_operator(&mut self, iop: &Value) -> Result<(), InjectError> {
        let spec = iop.get("spec").cloned().unwrap_or(Value::Null);
        if let Some(values) = spec.get("values") {
            merge_into(&mut self.values, values);
        }
        if let Some(mesh) = spec.get("meshConfig") {
            merge_into(&mut self.mesh, mesh);
        }
        self.pick_up_values_templates();
        Ok(())
    }

    /// `sidecarInjectorWebhook.templates` in values adds named templates,
    /// as Istio's chart does.
    fn pick_up_values_templates(&mut self) {
        if let Some(t) = self
            .values
            .pointer("/sidecarInjectorWebhook/templates")
            .and_then(Value::as_object)
        {
            for (name, body) in t {
                if let Some(body) = body.as_str() {
                    self.config.templates.insert(name.clone(), body.to_string());
                }
            }
        }
    }

    /// The mesh-wide proxy config (`defaultConfig`).
    pub fn default_proxy_config(&self) -> Value {
        self.mesh
            .get("defaultConfig")
            .cloned()
            .unwrap_or_else(|| json!({}))
    }
}

/// When `text` is a ConfigMap, the string under `data.<key>` (an error
/// naming the key when missing); otherwise None.
fn configmap_key(source_name: &str, text: &str, key: &str) -> Result<Option<String>, InjectError> {
    let Ok(doc) = serde_yaml::from_str::<Value>(text) else {
        return Ok(None);
    };
    if doc.get("kind").and_then(Value::as_str) != Some("ConfigMap") {
        return Ok(None);
    }
    doc.pointer(&format!("/data/{key}"))
        .and_then(Value::as_str)
        .map(|s| Some(s.to_string()))
        .ok_or_else(|| InjectError::Config {
            source_name: source_name.to_string(),
            message: format!("ConfigMap has no data.{key}"),
        })
}

/// Parse YAML into a JSON value, naming the source on error.
pub fn parse_yaml_value(source_name: &str, text: &str) -> Result<Value, InjectError> {
    let v: Value = serde_yaml::from_str(text).map_err(|e| InjectError::Config {
        source_name: source_name.to_string(),
        message: format!("not valid YAML: {e}"),
    })?;
    match v {
        Value::Null => Ok(json!({})),
        Value::Object(_) => Ok(v),
        other => Err(InjectError::Config {
            source_name: source_name.to_string(),
            message: format!("expected a mapping at the top level, found {other}"),
        }),
    }
}

/// Deep-merge `overlay` into `base`: maps merge key by key, everything else
/// (lists, scalars, null) replaces.
pub fn merge_into(base: &mut Value, overlay: &Value) {
    match (base, overlay) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => {
                        merge_into(existing, v)
                    }
                    _ => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// Weft's default values (the subset of Istio's chart values the templates read).
pub fn default_values() -> Value {
    json!({
        "global": {
            "hub": DEFAULT_HUB,
            "tag": env!("CARGO_PKG_VERSION"),
            "imagePullPolicy": "",
            "imagePullSecrets": [],
            "istioNamespace": "istio-system",
            "pilotCertProvider": "istiod",
            "caAddress": "",
            "network": "",
            "meshID": "",
            "trustDomain": "",
            "logAsJson": false,
            "mountMtlsCerts": false,
            "podDNSSearchNamespaces": [],
            "multiCluster": {"clusterName": "Kubernetes"},
            "sds": {"token": {"aud": "istio-ca"}},
            "proxy": {
                "image": DEFAULT_PROXY_IMAGE,
                "clusterDomain": "cluster.local",
                "logLevel": "warning",
                "componentLogLevel": "misc:error",
                "privileged": false,
                "enableCoreDump": false,
                "statusPort": 15020,
                "readinessInitialDelaySeconds": 0,
                "readinessPeriodSeconds": 15,
                "readinessFailureThreshold": 4,
                "startupProbe": {"enabled": true, "failureThreshold": 600},
                "includeIPRanges": "*",
                "excludeIPRanges": "",
                "includeInboundPorts": "*",
                "excludeInboundPorts": "",
                "includeOutboundPorts": "",
                "excludeOutboundPorts": "",
                "holdApplicationUntilProxyStarts": false,
                "resources": {
                    "requests": {"cpu": "100m", "memory": "128Mi"},
                    "limits": {"cpu": "2", "memory": "1Gi"}
                }
            },
            "proxy_init": {"image": DEFAULT_PROXY_IMAGE}
        },
        "istio_cni": {"enabled": false, "provider": "default"},
        "sidecarInjectorWebhook": {"rewriteAppHTTPProbe": true, "nativeSidecar": true},
        "revision": ""
    })
}

/// Weft's default MeshConfig (Istio's defaults for the keys injection reads).
pub fn default_mesh() -> Value {
    json!({
        "trustDomain": "cluster.local",
        "enablePrometheusMerge": true,
        "enableAutoMtls": true,
        "accessLogFile": "",
        "defaultConfig": {
            "discoveryAddress": "weftd.istio-system.svc:15012",
            "statusPort": 15020,
            "proxyMetadata": {}
        }
    })
}

/// A string map out of a JSON object (non-string values are skipped).
pub fn string_map(v: Option<&Value>) -> Map<String, Value> {
    v.and_then(Value::as_object).cloned().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_replaces_lists_and_merges_maps() {
        let mut base = json!({"a": {"b": 1, "c": [1, 2]}, "d": 1});
        merge_into(&mut base, &json!({"a": {"c": [3], "e": null}}));
        assert_eq!(base, json!({"a": {"b": 1, "c": [3], "e": null}, "d": 1}));
    }

    #[test]
    fn configmaps_are_unwrapped() {
        let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio-sidecar-injector}\ndata:\n  config: |\n    policy: disabled\n  values: '{\"global\": {\"proxy\": {\"statusPort\": 1234}}}'\n";
        let c = InjectionConfig::parse("cm.yaml", cm).expect("config key");
        assert_eq!(c.policy, Policy::Disabled);
        let mut s = Settings::default();
        s.merge_values("cm.yaml", cm).expect("values key");
        assert_eq!(
            s.values.pointer("/global/proxy/statusPort"),
            Some(&json!(1234))
        );
        let err = InjectionConfig::parse("cm.yaml", "kind: ConfigMap\ndata: {}\n").unwrap_err();
        assert!(err.to_string().contains("data.config"), "{err}");
    }

    #[test]
    fn injection_config_parses_policy_and_selectors() {
        let c = InjectionConfig::parse(
            "cfg.yaml",
            "policy: disabled\nneverInjectSelector:\n- matchLabels: {a: b}\n",
        )
        .expect("valid config");
        assert_eq!(c.policy, Policy::Disabled);
        assert_eq!(c.never_inject_selector.len(), 1);
        let err = InjectionConfig::parse("cfg.yaml", "policy: sometimes\n").unwrap_err();
        assert!(err.to_string().contains("cfg.yaml"), "{err}");
    }
}
