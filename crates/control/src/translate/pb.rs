//! Small builders for the Envoy/protobuf messages translation writes over
//! and over: addresses, durations, `Any`, structs, ADS config sources.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, SocketAddress,
};
use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;
use envoy_types::pb::google::protobuf::{Any, Duration, ListValue, Struct, Value, value::Kind};

/// `Any` of a message.
pub fn any<M: prost::Name>(m: &M) -> Any {
    weft_xds::names::to_any(m)
}

/// A TCP socket address.
pub fn socket(address: &str, port: u32) -> Address {
    Address {
        address: Some(AddressKind::SocketAddress(SocketAddress {
            address: address.to_string(),
            port_specifier: Some(PortSpecifier::PortValue(port)),
            ..SocketAddress::default()
        })),
    }
}

/// A protobuf duration.
pub fn duration(d: std::time::Duration) -> Duration {
    Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// A protobuf duration from an Istio duration (validated upstream; an
/// unparsable value gives `None`).
pub fn api_duration(d: &weft_api::duration::Duration) -> Option<Duration> {
    d.value().ok().map(duration)
}

/// Whole seconds.
pub fn secs(s: i64) -> Duration {
    Duration {
        seconds: s,
        nanos: 0,
    }
}

/// ADS as config source, API v3 (what Istio writes for RDS and EDS).
pub fn ads() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        resource_api_version: ApiVersion::V3 as i32,
        ..ConfigSource::default()
    }
}

/// A percentage (0..=100, fractions allowed) as Istio writes it: parts per
/// million.
pub fn percent(value: f64) -> FractionalPercent {
    let clamped = value.clamp(0.0, 100.0);
    // 100% = 1_000_000 ppm; rounding keeps 0.01% steps exact.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let numerator = (clamped * 10_000.0).round() as u32;
    FractionalPercent {
        numerator,
        denominator: DenominatorType::Million as i32,
    }
}

/// A string protobuf value.
pub fn string(v: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(v.to_string())),
    }
}

/// A number protobuf value.
pub fn number(v: f64) -> Value {
    Value {
        kind: Some(Kind::NumberValue(v)),
    }
}

/// A list protobuf value.
pub fn list(values: Vec<Value>) -> Value {
    Value {
        kind: Some(Kind::ListValue(ListValue { values })),
    }
}

/// A struct protobuf value.
pub fn struct_value(s: Struct) -> Value {
    Value {
        kind: Some(Kind::StructValue(s)),
    }
}

/// A struct of the given fields.
pub fn structure(fields: BTreeMap<String, Value>) -> Struct {
    Struct {
        fields: fields.into_iter().collect(),
    }
}

/// A struct of string fields, skipping empty values.
pub fn string_struct<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Struct {
    structure(
        pairs
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.to_string(), string(v)))
            .collect(),
    )
}
