//! Kubernetes-style documents in, typed objects or precise errors out.
//!
//! A file holds one or more YAML documents (or one JSON document, possibly a
//! `kind: List`). Each document is dispatched on `apiVersion`/`kind` to the
//! Istio or Kubernetes type it declares, deserialized with unknown fields
//! rejected, and validated. Every error names the file, the document (counted
//! from 1), `kind namespace/name`, the field path and the reason. Unknown kinds
//! are skipped with a warning. This module does no I/O.

use std::fmt;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::networking::{
    DestinationRule, Gateway, ServiceEntry, Sidecar, VirtualService, WorkloadEntry,
};
use super::security::{AuthorizationPolicy, PeerAuthentication, RequestAuthentication};
use super::validate::Errors;

/// Where an object came from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Origin {
    /// The file, as given to the loader (relative to the config dir).
    pub file: String,
    /// The document within the file, counted from 1.
    pub document: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}", self.file, self.document)
    }
}

/// One problem found in config, located as precisely as it can be.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ConfigError {
    /// File and document.
    pub origin: Origin,
    /// `Kind namespace/name`, once known.
    pub object: Option<String>,
    /// Field path, for example `spec.http[0].route[1].weight`.
    pub path: Option<String>,
    /// What is wrong.
    pub message: String,
}

/// Collapses a multi-line message (a regex parser's caret diagram, say) onto
/// one line, so every error is one log line.
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some(o) = &self.object {
            write!(f, ": {o}")?;
        }
        if let Some(p) = &self.path {
            write!(f, ": {p}")?;
        }
        write!(f, ": {}", one_line(&self.message))
    }
}

macro_rules! objects {
    ($($variant:ident($ty:ty) = $group:literal [$($version:literal),+];)+) => {
        /// A typed config object.
        #[derive(Clone, Debug, PartialEq)]
        pub enum Object {
            $(
                #[doc = concat!("A `", stringify!($variant), "` (", $group, ").")]
                $variant(Arc<$ty>),
            )+
        }

        impl Object {
            /// The object's kind, as written in YAML.
            pub fn kind(&self) -> &'static str {
                match self {
                    $(Self::$variant(_) => stringify!($variant),)+
                }
            }

            /// The object's metadata.
            pub fn metadata(&self) -> &ObjectMeta {
                match self {
                    $(Self::$variant(o) => &o.metadata,)+
                }
            }
        }

        /// Whether `kind` is known, and whether `group/version` is one of its
        /// accepted API versions. `None` means the kind is not one Keel reads.
        fn known(group: &str, version: &str, kind: &str) -> Option<Result<(), String>> {
            match kind {
                $(stringify!($variant) if group == $group => {
                    if [$($version),+].contains(&version) {
                        Some(Ok(()))
                    } else {
                        let accepted = [$($version),+]
                            .iter()
                            .map(|v| if $group.is_empty() { v.to_string() } else { format!("{}/{v}", $group) })
                            .collect::<Vec<_>>();
                        Some(Err(format!("unsupported apiVersion for {kind}; accepted: {}", accepted.join(", "))))
                    }
                })+
                _ => None,
            }
        }

        fn decode(kind: &str, doc: Value, origin: &Origin) -> Result<Object, Vec<ConfigError>> {
            match kind {
                $(stringify!($variant) => decode_one::<$ty>(doc, origin).map(|o| Object::$variant(Arc::new(o))),)+
                other => Err(vec![ConfigError {
                    origin: origin.clone(),
                    object: None,
                    path: Some("kind".into()),
                    message: format!("unknown kind {other}"),
                }]),
            }
        }
    };
}

objects! {
    VirtualService(VirtualService) = "networking.istio.io" ["v1", "v1beta1", "v1alpha3"];
    DestinationRule(DestinationRule) = "networking.istio.io" ["v1", "v1beta1", "v1alpha3"];
    Gateway(Gateway) = "networking.istio.io" ["v1", "v1beta1", "v1alpha3"];
    ServiceEntry(ServiceEntry) = "networking.istio.io" ["v1", "v1beta1", "v1alpha3"];
    WorkloadEntry(WorkloadEntry) = "networking.istio.io" ["v1", "v1beta1", "v1alpha3"];
    Sidecar(Sidecar) = "networking.istio.io" ["v1", "v1beta1", "v1alpha3"];
    PeerAuthentication(PeerAuthentication) = "security.istio.io" ["v1", "v1beta1"];
    AuthorizationPolicy(AuthorizationPolicy) = "security.istio.io" ["v1", "v1beta1"];
    RequestAuthentication(RequestAuthentication) = "security.istio.io" ["v1", "v1beta1"];
    Service(Service) = "" ["v1"];
    Pod(Pod) = "" ["v1"];
    Namespace(Namespace) = "" ["v1"];
    EndpointSlice(EndpointSlice) = "discovery.k8s.io" ["v1"];
}

impl Object {
    /// The object's namespace (`default` when unset; empty for Namespaces).
    pub fn namespace(&self) -> &str {
        match self {
            Self::Namespace(_) => "",
            o => o.metadata().namespace.as_deref().unwrap_or("default"),
        }
    }

    /// The object's name.
    pub fn name(&self) -> &str {
        self.metadata().name.as_deref().unwrap_or_default()
    }

    /// `Kind namespace/name` (or `Kind name` for cluster-scoped kinds), as errors print it.
    pub fn display_name(&self) -> String {
        match self {
            Self::Namespace(_) => format!("Namespace {}", self.name()),
            o => format!("{} {}/{}", o.kind(), o.namespace(), o.name()),
        }
    }
}

/// An object and where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded {
    /// File and document.
    pub origin: Origin,
    /// The typed, validated object.
    pub object: Object,
}

/// What loading one file produced.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FileResult {
    /// Objects that parsed and validated.
    pub objects: Vec<Loaded>,
    /// Problems that make the file invalid.
    pub errors: Vec<ConfigError>,
    /// Documents skipped because Keel does not read their kind.
    pub warnings: Vec<ConfigError>,
}

/// Loads every document in `text`. `file` names the file in messages; a name
/// ending in `.json` is parsed as JSON, anything else as (multi-document) YAML.
pub fn load_str(file: &str, text: &str) -> FileResult {
    let mut result = FileResult::default();
    let docs = match split_documents(file, text) {
        Ok(docs) => docs,
        Err(e) => {
            result.errors.push(e);
            return result;
        }
    };
    for (i, doc) in docs.into_iter().enumerate() {
        let origin = Origin {
            file: file.to_string(),
            document: i + 1,
        };
        load_document(doc, origin, &mut result);
    }
    result
}

fn split_documents(file: &str, text: &str) -> Result<Vec<Value>, ConfigError> {
    let at = |document: usize, message: String| ConfigError {
        origin: Origin {
            file: file.to_string(),
            document,
        },
        object: None,
        path: None,
        message,
    };
    if file.ends_with(".json") {
        let v: Value =
            serde_json::from_str(text).map_err(|e| at(1, format!("malformed JSON: {e}")))?;
        return Ok(vec![v]);
    }
    let mut docs = Vec::new();
    for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let v: Value = serde::Deserialize::deserialize(de)
            .map_err(|e| at(i + 1, format!("malformed YAML: {e}")))?;
        docs.push(v);
    }
    Ok(docs)
}

fn load_document(doc: Value, origin: Origin, result: &mut FileResult) {
    let err = |path: Option<&str>, message: String| ConfigError {
        origin: origin.clone(),
        object: None,
        path: path.map(str::to_string),
        message,
    };
    let map = match doc {
        Value::Null => return, // an empty document, e.g. a trailing `---`
        Value::Object(map) => map,
        other => {
            result.errors.push(err(
                None,
                format!(
                    "a document must be a mapping with apiVersion and kind, got {}",
                    json_type(&other)
                ),
            ));
            return;
        }
    };
    let kind = match map.get("kind") {
        Some(Value::String(k)) => k.clone(),
        _ => {
            result
                .errors
                .push(err(Some("kind"), "required string field is missing".into()));
            return;
        }
    };
    let api_version = match map.get("apiVersion") {
        Some(Value::String(v)) => v.clone(),
        _ => {
            result.errors.push(err(
                Some("apiVersion"),
                "required string field is missing".into(),
            ));
            return;
        }
    };
    if kind == "List" {
        match map.get("items") {
            Some(Value::Array(items)) => {
                for item in items {
                    load_document(item.clone(), origin.clone(), result);
                }
            }
            _ => result
                .errors
                .push(err(Some("items"), "a List must have an items array".into())),
        }
        return;
    }
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", &api_version));
    match known(group, version, &kind) {
        None => {
            result.warnings.push(err(
                None,
                format!("kind {kind} ({api_version}) is not one Keel reads; skipped"),
            ));
        }
        Some(Err(msg)) => result.errors.push(ConfigError {
            object: Some(object_name(&kind, &map)),
            ..err(Some("apiVersion"), msg)
        }),
        Some(Ok(())) => match decode(&kind, Value::Object(map), &origin) {
            Ok(object) => result.objects.push(Loaded { origin, object }),
            Err(errs) => result.errors.extend(errs),
        },
    }
}

/// `Kind namespace/name` from a raw document, for errors found before decoding.
fn object_name(kind: &str, doc: &serde_json::Map<String, Value>) -> String {
    let meta = doc.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("<unnamed>");
    let ns = meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    if kind == "Namespace" {
        format!("Namespace {name}")
    } else {
        format!("{kind} {ns}/{name}")
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Implemented by every kind the loader reads.
trait Kind: DeserializeOwned + Sized {
    /// True for Istio custom resources (strict top level, spec validation).
    const ISTIO: bool;
    /// Validates the decoded object, recording errors against `spec...` paths.
    fn validate(&self, errs: &mut Errors);
    /// The object's metadata.
    fn meta(&self) -> &ObjectMeta;
}

macro_rules! istio_kinds {
    ($($ty:ty),+) => {$(
        impl Kind for $ty {
            const ISTIO: bool = true;
            fn validate(&self, errs: &mut Errors) {
                self.spec.validate(errs);
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
        }
    )+};
}

istio_kinds!(
    VirtualService,
    DestinationRule,
    Gateway,
    ServiceEntry,
    WorkloadEntry,
    Sidecar,
    PeerAuthentication,
    AuthorizationPolicy,
    RequestAuthentication
);

macro_rules! kube_kinds {
    ($($ty:ty => $check:expr),+) => {$(
        impl Kind for $ty {
            const ISTIO: bool = false;
            fn validate(&self, errs: &mut Errors) {
                let check: fn(&$ty, &mut Errors) = $check;
                check(self, errs);
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
        }
    )+};
}

kube_kinds!(
    Service => super::registry::validate_service,
    Pod => |_, _| {},
    Namespace => |_, _| {},
    EndpointSlice => super::registry::validate_endpoint_slice
);

fn decode_one<T: Kind>(doc: Value, origin: &Origin) -> Result<T, Vec<ConfigError>> {
    let object = match &doc {
        Value::Object(map) => {
            let kind = map.get("kind").and_then(Value::as_str).unwrap_or_default();
            Some(object_name(kind, map))
        }
        _ => None,
    };
    let at = |path: Option<String>, message: String| ConfigError {
        origin: origin.clone(),
        object: object.clone(),
        path,
        message,
    };
    let mut errors = Vec::new();
    if let Value::Object(map) = &doc {
        if T::ISTIO {
            for key in map.keys() {
                if !["apiVersion", "kind", "metadata", "spec", "status"].contains(&key.as_str()) {
                    errors.push(at(
                        Some(key.clone()),
                        format!("unknown field `{key}`, expected one of `apiVersion`, `kind`, `metadata`, `spec`"),
                    ));
                }
            }
            if !map.contains_key("spec") {
                errors.push(at(Some("spec".into()), "required field is missing".into()));
            }
        }
        match map.get("metadata").and_then(|m| m.get("name")) {
            Some(Value::String(n)) if is_dns1123_subdomain(n) => {}
            Some(Value::String(n)) => errors.push(at(
                Some("metadata.name".into()),
                format!("{n:?} is not a valid name: use lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253 characters"),
            )),
            _ => errors.push(at(Some("metadata.name".into()), "required field is missing".into())),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut doc = doc;
    if T::ISTIO {
        // The status subresource is the cluster's to write; it is not config.
        if let Value::Object(map) = &mut doc {
            map.remove("status");
        }
    }
    let obj: T = serde_path_to_error::deserialize(doc).map_err(|e| {
        let path = e.path().to_string();
        let path = (path != ".").then_some(path);
        vec![at(path, e.into_inner().to_string())]
    })?;
    let mut errs = Errors::new();
    obj.validate(&mut errs);
    if let Some(lb) = obj
        .meta()
        .annotations
        .as_ref()
        .and_then(|a| a.get(crate::model::networking::KEEL_LB_ANNOTATION))
        && lb != "peak-ewma"
    {
        errs.at(
            format!(
                "metadata.annotations.{}",
                crate::model::networking::KEEL_LB_ANNOTATION
            ),
            format!("unknown load balancer {lb:?}: Keel knows \"peak-ewma\""),
        );
    }
    if let Some(ns) = &obj.meta().namespace
        && !is_dns1123_label(ns)
    {
        errs.at(
            "metadata.namespace",
            format!("{ns:?} is not a valid namespace name"),
        );
    }
    if errs.is_empty() {
        Ok(obj)
    } else {
        Err(errs
            .into_vec()
            .into_iter()
            .map(|fe| at(Some(fe.path), fe.message))
            .collect())
    }
}

/// A DNS-1123 label: lowercase alphanumerics and '-', at most 63, alphanumeric at both ends.
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS-1123 subdomain: dot-separated labels, at most 253 characters.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_yaml_with_unknown_kind_and_empty_docs() {
        let text = "\
apiVersion: v1
kind: ServiceAccount
metadata: {name: reviews}
---
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - name: v1
    labels: {version: v1}
";
        let r = load_str("dr.yaml", text);
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(r.objects.len(), 1);
        assert_eq!(r.objects[0].origin.document, 3);
        assert_eq!(
            r.objects[0].object.display_name(),
            "DestinationRule default/reviews"
        );
        assert_eq!(r.warnings.len(), 1);
        assert!(r.warnings[0].message.contains("ServiceAccount"));
    }

    #[test]
    fn errors_name_file_document_object_and_path() {
        let text = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: prod}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews}
      weigth: 10
";
        let r = load_str("vs.yaml", text);
        assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
        let e = r.errors[0].to_string();
        assert!(
            e.starts_with(
                "vs.yaml: document 1: VirtualService prod/reviews: spec.http[0].route[0]"
            ),
            "{e}"
        );
        assert!(e.contains("unknown field `weigth`"), "{e}");
    }

    #[test]
    fn malformed_yaml_and_bad_api_version() {
        let r = load_str("bad.yaml", "kind: [unclosed");
        assert!(
            r.errors[0]
                .to_string()
                .starts_with("bad.yaml: document 1: malformed YAML")
        );
        let r = load_str(
            "v.yaml",
            "apiVersion: networking.istio.io/v2\nkind: Gateway\nmetadata: {name: g}\nspec: {}\n",
        );
        assert_eq!(r.errors[0].path.as_deref(), Some("apiVersion"));
        assert!(
            r.errors[0].message.contains("networking.istio.io/v1"),
            "{}",
            r.errors[0]
        );
    }

    #[test]
    fn json_list_and_top_level_typos() {
        let text = r#"{"apiVersion":"v1","kind":"List","items":[
            {"apiVersion":"networking.istio.io/v1","kind":"Gateway","metadata":{"name":"g"},"spec":{},"sepc":{}}
        ]}"#;
        let r = load_str("l.json", text);
        assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
        assert_eq!(r.errors[0].path.as_deref(), Some("sepc"));
    }
}
