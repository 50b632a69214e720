//! Reading Envoy v3 configuration: a static bootstrap file (YAML or JSON) is
//! parsed into the `envoy-types` protos, and every set field is checked
//! against what weft-proxy implements.
//!
//! Why `prost-reflect`: the `envoy-types` structs are plain prost types
//! without serde, while Envoy's YAML is the proto3 JSON mapping (field names,
//! `"@type"` in `Any`, `"1.5s"` durations, enum names). A descriptor pool built
//! from the very descriptors `envoy-types` was generated from (see build.rs)
//! gives that mapping exactly, including unknown-field errors, and the same
//! dynamic message can be walked field by field to refuse what we do not
//! implement with its path. The checked message is then transcoded (protobuf
//! encode/decode) into the `envoy-types` struct, which is what the compiler
//! (`crate::model`) reads; xDS resources later take the same walk.
//!
//! This module does no I/O beyond reading the bootstrap file.

mod support;

use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};
use std::path::Path;
use std::sync::OnceLock;

pub use support::check_supported;

/// An error in configuration; the message names the source and the field path.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{origin}: cannot read: {source}")]
    Read {
        origin: String,
        source: std::io::Error,
    },
    #[error("{origin}: {path}: {message}")]
    Parse {
        origin: String,
        path: String,
        message: String,
    },
    #[error("{origin}: {path}: unsupported{detail}")]
    Unsupported {
        origin: String,
        path: String,
        detail: String,
    },
    #[error("{origin}: {path}: {message}")]
    Invalid {
        origin: String,
        path: String,
        message: String,
    },
}

impl ConfigError {
    /// Builds an `Invalid` error for compiled objects.
    pub fn invalid(origin: &str, path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            origin: origin.to_owned(),
            path: path.into(),
            message: message.into(),
        }
    }
    /// Builds an `Unsupported` error with a detail such as the bad value.
    pub fn unsupported(origin: &str, path: impl Into<String>, detail: impl AsRef<str>) -> Self {
        let detail = detail.as_ref();
        ConfigError::Unsupported {
            origin: origin.to_owned(),
            path: path.into(),
            detail: if detail.is_empty() {
                String::new()
            } else {
                format!(" ({detail})")
            },
        }
    }
}

static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptors.bin"));

/// The descriptor pool of the Envoy messages weft-proxy reads.
pub fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(DESCRIPTORS).expect("the embedded Envoy descriptor set is valid")
    })
}

fn descriptor(name: &str) -> MessageDescriptor {
    pool()
        .get_message_by_name(name)
        .unwrap_or_else(|| panic!("{name} is in the descriptor set"))
}

/// A bootstrap file after parsing and checking.
#[derive(Debug, Clone)]
pub struct LoadedBootstrap {
    /// Where it came from (a file name), for error messages.
    pub origin: String,
    pub bootstrap: Bootstrap,
    /// The bootstrap in proto3 JSON form, for `/config_dump`.
    /// Compact JSON text (parsed again only when an admin asks for it).
    pub json: std::sync::Arc<str>,
}

/// Reads, parses and checks a bootstrap file.
pub fn load_file(path: &Path) -> Result<LoadedBootstrap, ConfigError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        origin: origin.clone(),
        source,
    })?;
    load_str(&text, &origin)
}

/// Parses and checks a bootstrap given as YAML (JSON is valid YAML).
pub fn load_str(text: &str, origin: &str) -> Result<LoadedBootstrap, ConfigError> {
    let desc = descriptor("envoy.config.bootstrap.v3.Bootstrap");
    let msg = parse_yaml(desc, text, origin)?;
    check_supported(&msg, origin)?;
    let bootstrap: Bootstrap = msg.transcode_to().map_err(|e| ConfigError::Parse {
        origin: origin.to_owned(),
        path: String::new(),
        message: format!("transcoding to envoy-types: {e}"),
    })?;
    let json: std::sync::Arc<str> = serde_json::to_string(&msg)
        .unwrap_or_else(|_| "null".into())
        .into();
    Ok(LoadedBootstrap {
        origin: origin.to_owned(),
        bootstrap,
        json,
    })
}

fn parse_yaml(
    desc: MessageDescriptor,
    text: &str,
    origin: &str,
) -> Result<DynamicMessage, ConfigError> {
    let opts = prost_reflect::DeserializeOptions::new().deny_unknown_fields(true);
    let de = serde_yaml::Deserializer::from_str(text);
    let mut track = serde_path_to_error::Track::new();
    let tracked = serde_path_to_error::Deserializer::new(de, &mut track);
    match DynamicMessage::deserialize_with_options(desc, tracked, &opts) {
        Ok(m) => Ok(m),
        Err(e) => Err(ConfigError::Parse {
            origin: origin.to_owned(),
            path: track.path().to_string(),
            message: e.to_string(),
        }),
    }
}
