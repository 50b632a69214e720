//! Shared by the translation tests: loads a golden scenario (config
//! snapshot + proxy node), translates it, and prints resources in the proto3
//! JSON mapping using every descriptor `envoy-types` was generated from.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use weft_api::store::{StoreOptions, build_snapshot};
use weft_control::translate::{MeshView, ProxyNode, ProxyResources, TranslateOptions};

pub fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

pub fn scenarios() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(golden_dir())
        .expect("tests/golden exists")
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('_'))
        .collect();
    out.sort();
    out
}

fn yaml_files(dir: &Path, into: &mut BTreeMap<String, String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for p in paths {
        if p.extension().is_some_and(|e| e == "yaml")
            && p.file_name() != Some("proxy.yaml".as_ref())
        {
            let text = std::fs::read_to_string(&p).unwrap();
            let rel = p.strip_prefix(golden_dir()).unwrap().display().to_string();
            into.insert(rel, text);
        }
    }
}

fn string_value(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_string())),
    }
}

/// The Envoy node of a scenario's `proxy.yaml` (Istio's metadata keys).
pub fn node_of(path: &Path) -> Node {
    let text = std::fs::read_to_string(path).unwrap();
    let doc: BTreeMap<String, serde_yaml::Value> = serde_yaml::from_str(&text).unwrap();
    let mut fields: HashMap<String, Value> = HashMap::new();
    let mut id = String::new();
    for (k, v) in doc {
        match (k.as_str(), v) {
            ("id", serde_yaml::Value::String(s)) => id = s,
            (_, serde_yaml::Value::Mapping(m)) => {
                let s = Struct {
                    fields: m
                        .into_iter()
                        .map(|(k, v)| {
                            (
                                k.as_str().unwrap().to_string(),
                                string_value(v.as_str().unwrap()),
                            )
                        })
                        .collect(),
                };
                fields.insert(
                    k,
                    Value {
                        kind: Some(Kind::StructValue(s)),
                    },
                );
            }
            (_, serde_yaml::Value::String(s)) => {
                fields.insert(k, string_value(&s));
            }
            (k, other) => panic!("{}: {k}: unexpected value {other:?}", path.display()),
        }
    }
    Node {
        id,
        metadata: Some(Struct { fields }),
        ..Node::default()
    }
}

/// The config snapshot of a scenario.
pub fn snapshot_of(name: &str) -> weft_api::store::Snapshot {
    let dir = golden_dir().join(name);
    let mut files = BTreeMap::new();
    if !dir.join("NO_BASE").exists() {
        yaml_files(&golden_dir().join("_base"), &mut files);
    }
    yaml_files(&dir.join("config"), &mut files);
    let snapshot = build_snapshot(&files, Vec::new(), None, &StoreOptions::default());
    let errors: Vec<String> = snapshot
        .problems
        .iter()
        .filter(|p| p.is_error())
        .map(|p| p.to_json().to_string())
        .collect();
    assert!(
        errors.is_empty(),
        "scenario {name} has invalid config: {errors:#?}"
    );
    snapshot
}

/// The resources of a scenario for its proxy.
pub fn translate_scenario(name: &str) -> ProxyResources {
    let dir = golden_dir().join(name);
    let snapshot = snapshot_of(name);
    let proxy_file = if dir.join("proxy.yaml").exists() {
        dir.join("proxy.yaml")
    } else {
        golden_dir().join("_base/proxy.yaml")
    };
    let node = ProxyNode::from_node(&node_of(&proxy_file)).expect("proxy.yaml is a valid node");
    MeshView::new(&snapshot, TranslateOptions::default()).translate(&node)
}

// === proto3 JSON with every Envoy type ===

fn envoy_types_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("WEFT_ENVOY_TYPES_DIR") {
        return PathBuf::from(dir);
    }
    let lock =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.lock"))
            .expect("reading Cargo.lock");
    let mut lines = lock.lines();
    let mut version = None;
    while let Some(line) = lines.next() {
        if line.trim() == "name = \"envoy-types\"" {
            version = lines
                .next()
                .and_then(|v| v.trim().strip_prefix("version = \""))
                .and_then(|v| v.strip_suffix('"'))
                .map(str::to_owned);
            break;
        }
    }
    let version = version.expect("envoy-types in Cargo.lock");
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .expect("CARGO_HOME or HOME");
    for entry in std::fs::read_dir(home.join("registry/src"))
        .expect("cargo registry")
        .flatten()
    {
        let dir = entry.path().join(format!("envoy-types-{version}"));
        if dir.join("src/generated/types.bin").exists() {
            return dir;
        }
    }
    panic!(
        "envoy-types-{version} source not found under {}; set WEFT_ENVOY_TYPES_DIR",
        home.display()
    );
}

/// Every descriptor envoy-types was generated from, so that any `Any`
/// translation writes can be printed.
pub fn full_pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let bin = envoy_types_dir().join("src/generated/types.bin");
        let bytes = std::fs::read(&bin).unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
        DescriptorPool::decode(bytes.as_slice()).expect("envoy-types descriptor set")
    })
}

pub fn sorted(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => {
            let mut entries: Vec<_> = m.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            serde_json::Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        serde_json::Value::Array(a) => {
            serde_json::Value::Array(a.into_iter().map(sorted).collect())
        }
        other => other,
    }
}

pub fn to_json<M: prost::Name>(m: &M, pool: &DescriptorPool) -> serde_json::Value {
    let desc = pool
        .get_message_by_name(&M::full_name())
        .unwrap_or_else(|| panic!("{} in the descriptor pool", M::full_name()));
    let dynamic = DynamicMessage::decode(desc, m.encode_to_vec().as_slice()).unwrap();
    let mut ser = serde_json::Serializer::new(Vec::new());
    dynamic
        .serialize_with_options(&mut ser, &SerializeOptions::new())
        .unwrap();
    sorted(serde_json::from_slice(&ser.into_inner()).unwrap())
}

pub fn all_json<M: prost::Name>(items: &[M]) -> String {
    let pool = full_pool();
    let list: Vec<serde_json::Value> = items.iter().map(|m| to_json(m, pool)).collect();
    serde_json::to_string_pretty(&list).unwrap() + "\n"
}

pub fn check_golden(scenario: &str, kind: &str, actual: &str, failures: &mut Vec<String>) {
    let path = golden_dir().join(scenario).join(format!("{kind}.json"));
    let update = std::env::var("WEFT_UPDATE_GOLDEN").is_ok_and(|v| v == "1");
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    if expected == actual {
        return;
    }
    if update {
        std::fs::write(&path, actual).unwrap();
        eprintln!("updated {}", path.display());
        return;
    }
    let diff = pretty_assertions::StrComparison::new(&expected, actual).to_string();
    failures.push(format!(
        "{} differs (WEFT_UPDATE_GOLDEN=1 rewrites it):\n{}",
        path.display(),
        diff.lines().take(80).collect::<Vec<_>>().join("\n")
    ));
}
