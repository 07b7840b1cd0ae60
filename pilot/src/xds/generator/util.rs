//! Small builders for Envoy messages that every generator module uses.

use std::collections::{BTreeMap, HashMap};
use std::hash::RandomState;
use std::sync::OnceLock;

use keel_proto::envoy::config::core::v3::{
    Address, HeaderValue, HeaderValueOption, header_value_option,
};
use keel_proto::envoy::config::core::v3::{
    AggregatedConfigSource, ApiVersion, ConfigSource, SocketAddress, address, config_source,
    socket_address,
};
use keel_proto::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher, string_matcher};
use keel_proto::envoy::r#type::v3::{FractionalPercent, fractional_percent::DenominatorType};
use keel_proto::google::protobuf::{
    BoolValue, Duration as PbDuration, Struct, UInt32Value, Value, value::Kind,
};

use crate::model::networking::StringMatch;

/// `ads: {}` with the v3 resource API.
pub fn ads() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        resource_api_version: ApiVersion::V3 as i32,
        ..Default::default()
    }
}

/// A TCP socket address.
pub fn socket(ip: &str, port: u32) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

/// A protobuf duration.
pub fn duration(d: std::time::Duration) -> PbDuration {
    PbDuration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// A `UInt32Value`.
pub fn u32v(value: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value })
}

/// A `BoolValue`.
pub fn boolv(value: bool) -> Option<BoolValue> {
    Some(BoolValue { value })
}

/// A percentage (0–100, fractional) as parts per million.
pub fn fraction(percent: f64) -> FractionalPercent {
    let ppm = (percent.clamp(0.0, 100.0) * 10_000.0).round() as u32;
    FractionalPercent {
        numerator: ppm,
        denominator: DenominatorType::Million as i32,
    }
}

/// An Envoy string matcher from an Istio one.
pub fn string_matcher(m: &StringMatch, ignore_case: bool) -> StringMatcher {
    let pattern = match m {
        StringMatch::Exact(s) => string_matcher::MatchPattern::Exact(s.clone()),
        StringMatch::Prefix(s) => string_matcher::MatchPattern::Prefix(s.clone()),
        StringMatch::Regex(s) => string_matcher::MatchPattern::SafeRegex(regex(s)),
    };
    StringMatcher {
        match_pattern: Some(pattern),
        ignore_case,
    }
}

/// A Google RE2 regex matcher.
pub fn regex(s: &str) -> RegexMatcher {
    RegexMatcher {
        regex: s.to_string(),
        ..Default::default()
    }
}

/// A header to add (`append`) or set (overwrite).
pub fn header(key: &str, value: &str, append: bool) -> HeaderValueOption {
    let action = if append {
        header_value_option::HeaderAppendAction::AppendIfExistsOrAdd
    } else {
        header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd
    };
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_string(),
            value: value.to_string(),
            ..Default::default()
        }),
        append_action: action as i32,
        ..Default::default()
    }
}

/// A protobuf map with a deterministic encoding.
///
/// prost encodes a `HashMap` in iteration order, and a `HashMap` with its own
/// random hasher iterates in an order of its own: the same resource would
/// encode to different bytes, change version, and be pushed again for
/// nothing. Every map in a generated resource is therefore built here, with
/// one hasher for the whole process and keys inserted in sorted order, so
/// equal content encodes to equal bytes.
pub fn map<V>(entries: impl IntoIterator<Item = (String, V)>) -> HashMap<String, V> {
    static HASHER: OnceLock<RandomState> = OnceLock::new();
    let sorted: BTreeMap<String, V> = entries.into_iter().collect();
    let mut out = HashMap::with_capacity_and_hasher(
        sorted.len(),
        HASHER.get_or_init(RandomState::new).clone(),
    );
    out.extend(sorted);
    out
}

/// A protobuf `Struct` of string fields.
pub fn string_struct<'a>(pairs: impl IntoIterator<Item = (&'a str, String)>) -> Struct {
    Struct {
        fields: map(pairs
            .into_iter()
            .map(|(k, v)| (k.to_string(), string_value(v)))),
    }
}

/// A protobuf string `Value`.
pub fn string_value(v: String) -> Value {
    Value {
        kind: Some(Kind::StringValue(v)),
    }
}
