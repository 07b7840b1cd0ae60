//! Canonical protobuf JSON for xDS messages (config dumps), using the Envoy
//! descriptor set that `envoy-types` ships, located at build time.

use std::sync::OnceLock;

use prost::{Message, Name};
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};

static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptors.bin"));

/// Why a message could not be rendered as JSON.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    /// The build did not find Envoy's descriptor set.
    #[error("Envoy's protobuf descriptors were not available when keel-proto was built")]
    NoDescriptors,
    /// The descriptor set does not know the message.
    #[error("no descriptor for {0}")]
    UnknownType(String),
    /// Decoding or encoding failed.
    #[error("cannot render {type_name} as JSON: {reason}")]
    Render {
        /// The message type.
        type_name: String,
        /// What failed.
        reason: String,
    },
}

fn pool() -> Option<&'static DescriptorPool> {
    static POOL: OnceLock<Option<DescriptorPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        if DESCRIPTORS.is_empty() {
            return None;
        }
        DescriptorPool::decode(DESCRIPTORS).ok()
    })
    .as_ref()
}

/// Renders a message (including any `Any` fields it holds) as canonical
/// protobuf JSON, with `@type` on each `Any`.
pub fn to_json<T: Message + Name>(msg: &T) -> Result<serde_json::Value, JsonError> {
    let pool = pool().ok_or(JsonError::NoDescriptors)?;
    let name = T::full_name();
    let desc = pool
        .get_message_by_name(&name)
        .ok_or_else(|| JsonError::UnknownType(name.clone()))?;
    let render = |reason: String| JsonError::Render {
        type_name: name.clone(),
        reason,
    };
    let dynamic = DynamicMessage::decode(desc, msg.encode_to_vec().as_slice())
        .map_err(|e| render(e.to_string()))?;
    let options = SerializeOptions::new().skip_default_fields(true);
    let mut ser = serde_json::Serializer::new(Vec::new());
    dynamic
        .serialize_with_options(&mut ser, &options)
        .map_err(|e| render(e.to_string()))?;
    serde_json::from_slice(&ser.into_inner()).map_err(|e| render(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::any::pack;
    use crate::envoy::admin::v3::ListenersConfigDump;
    use crate::envoy::admin::v3::listeners_config_dump::DynamicListener;
    use crate::envoy::config::listener::v3::Listener;

    #[test]
    fn renders_nested_any_with_type() {
        let dump = ListenersConfigDump {
            dynamic_listeners: vec![DynamicListener {
                name: "virtualOutbound".into(),
                active_state: Some(
                    crate::envoy::admin::v3::listeners_config_dump::DynamicListenerState {
                        listener: Some(pack(&Listener {
                            name: "virtualOutbound".into(),
                            ..Default::default()
                        })),
                        ..Default::default()
                    },
                ),
                ..Default::default()
            }],
            ..Default::default()
        };
        let json = to_json(&dump).expect("descriptors are found in a normal build");
        let l = &json["dynamicListeners"][0]["activeState"]["listener"];
        assert_eq!(
            l["@type"],
            "type.googleapis.com/envoy.config.listener.v3.Listener"
        );
        assert_eq!(l["name"], "virtualOutbound");
    }
}
