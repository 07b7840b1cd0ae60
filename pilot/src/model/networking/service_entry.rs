//! ServiceEntry (services outside the Kubernetes registry: external APIs,
//! VMs, other clusters) and WorkloadEntry (one non-Kubernetes workload, also
//! the type of a ServiceEntry's inline `endpoints`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::common::{WorkloadSelector, check_protocol, check_workload_selector};
use crate::model::validate::{
    Errors, check_export_to, check_labels, check_port, fqdn_error, is_dns1123_label, is_ip_or_cidr,
    wildcard_host_error,
};

/// Prefix marking a Unix domain socket address.
pub const UNIX_ADDRESS_PREFIX: &str = "unix://";

/// Whether a ServiceEntry's service is part of the mesh.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Location {
    /// Outside the mesh: no mTLS, no sidecar (the default).
    #[default]
    MeshExternal,
    /// Part of the mesh (VMs, other clusters).
    MeshInternal,
}

/// How endpoints of a ServiceEntry are found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Resolution {
    /// Forward to the connection's original destination (the default).
    #[default]
    None,
    /// Use the listed endpoint IPs.
    Static,
    /// Resolve hosts (or endpoint names) by DNS, all addresses.
    Dns,
    /// Resolve by DNS, first address only.
    DnsRoundRobin,
    /// Resolve the request's host at request time (wildcard hosts).
    DynamicDns,
}

/// A port of a ServiceEntry's service.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    /// Port number, 1–65535, unique in the entry.
    #[serde(default)]
    pub number: u32,
    /// Protocol (HTTP, HTTPS, GRPC, HTTP2, MONGO, TCP, TLS, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Port name, unique in the entry; endpoints refer to it.
    #[serde(default)]
    pub name: String,
    /// Port on the endpoints, when different from `number`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u32>,
}

/// Services added to the mesh's registry.
#[derive(kube::CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "ServiceEntry",
    namespaced,
    schema = "disabled",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEntrySpec {
    /// Host names of the service; required, may start with `*.`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Virtual IPs or CIDRs of the service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// Service ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ServicePort>,
    /// Inside or outside the mesh.
    #[serde(default)]
    pub location: Location,
    /// How endpoints are found.
    #[serde(default)]
    pub resolution: Resolution,
    /// Inline endpoints; exclusive with `workloadSelector`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<WorkloadEntrySpec>,
    /// Select WorkloadEntries and pods as endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<WorkloadSelector>,
    /// Namespaces that may see this entry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
    /// Identities the service's workloads may present.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
}

/// A workload outside Kubernetes (VM, bare metal), or an inline endpoint.
#[derive(kube::CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "WorkloadEntry",
    namespaced,
    schema = "disabled",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadEntrySpec {
    /// IP, DNS name or `unix://` socket; required unless `network` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Port name (of the service) → port number on this workload.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, u32>,
    /// Labels of the workload.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Network the workload is on (for multi-network meshes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Locality, `region/zone/subzone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<String>,
    /// Load balancing weight (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// Service account of the workload (in the entry's namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
}

/// Load balancing weight of an endpoint without `weight`.
pub const DEFAULT_ENDPOINT_WEIGHT: u32 = 1;

impl WorkloadEntrySpec {
    /// Records every semantic error, with paths rooted at `spec`.
    pub fn validate(&self, errs: &mut Errors) {
        self.validate_at(errs, "spec");
    }

    fn validate_at(&self, errs: &mut Errors, path: &str) {
        match self.address.as_deref() {
            None | Some("") => {
                if self.network.is_none() {
                    errs.at(format!("{path}.address"), "address is required (or set network for a workload reached through a gateway)");
                }
            }
            Some(a) => {
                if let Some(sock) = a.strip_prefix(UNIX_ADDRESS_PREFIX) {
                    if !(sock.starts_with('/') || sock.starts_with('@')) || sock.ends_with('/') {
                        errs.at(
                            format!("{path}.address"),
                            format!("invalid socket {a:?}: must be an absolute file path or @abstract name, not a directory"),
                        );
                    }
                    if !self.ports.is_empty() {
                        errs.at(
                            format!("{path}.ports"),
                            "a unix:// address cannot have ports",
                        );
                    }
                } else if a.parse::<std::net::IpAddr>().is_err() && fqdn_error(a).is_some() {
                    errs.at(
                        format!("{path}.address"),
                        format!("invalid address {a:?}: must be an IP address, a DNS name or a unix:// socket"),
                    );
                }
            }
        }
        for (name, port) in &self.ports {
            let p = format!("{path}.ports.{name}");
            if !is_dns1123_label(name) {
                errs.at(
                    &p,
                    format!("invalid port name {name:?}: must be a lowercase DNS-1123 label"),
                );
            }
            check_port(errs, &p, *port);
        }
        check_labels(errs, &format!("{path}.labels"), &self.labels);
    }
}

impl ServiceEntrySpec {
    /// Records every semantic error, with paths rooted at `spec`.
    pub fn validate(&self, errs: &mut Errors) {
        let dns = matches!(self.resolution, Resolution::Dns | Resolution::DnsRoundRobin);
        if self.hosts.is_empty() {
            errs.at("spec.hosts", "at least one host is required");
        }
        for (i, h) in self.hosts.iter().enumerate() {
            let p = format!("spec.hosts[{i}]");
            if h == "*" {
                errs.at(
                    &p,
                    "host \"*\" is not allowed: name the hosts, or use \"*.domain\"",
                );
            } else if let Some(msg) = wildcard_host_error(h) {
                errs.at(&p, msg);
            } else if dns && self.endpoints.is_empty() && h.starts_with('*') {
                errs.at(
                    &p,
                    format!("wildcard host {h:?} cannot be resolved with {} resolution: list endpoints, or use NONE or DYNAMIC_DNS", if self.resolution == Resolution::Dns { "DNS" } else { "DNS_ROUND_ROBIN" }),
                );
            }
            if self.hosts[..i].contains(h) {
                errs.at(&p, format!("host {h:?} is listed twice"));
            }
        }
        for (i, a) in self.addresses.iter().enumerate() {
            let p = format!("spec.addresses[{i}]");
            if !is_ip_or_cidr(a) {
                errs.at(
                    &p,
                    format!("invalid address {a:?}: must be an IP address or CIDR"),
                );
            } else if a.contains('/')
                && !matches!(self.resolution, Resolution::None | Resolution::Static)
            {
                errs.at(
                    &p,
                    format!("CIDR address {a:?} is only allowed with NONE or STATIC resolution"),
                );
            }
        }
        let mut numbers = Vec::new();
        let mut names = Vec::new();
        for (i, port) in self.ports.iter().enumerate() {
            let p = format!("spec.ports[{i}]");
            check_port(errs, &format!("{p}.number"), port.number);
            if numbers.contains(&port.number) {
                errs.at(
                    format!("{p}.number"),
                    format!("port number {} is listed twice", port.number),
                );
            }
            numbers.push(port.number);
            if port.name.is_empty() {
                errs.at(format!("{p}.name"), "port name is required");
            } else if names.contains(&port.name.as_str()) {
                errs.at(
                    format!("{p}.name"),
                    format!("port name {:?} is listed twice", port.name),
                );
            }
            names.push(port.name.as_str());
            if let Some(proto) = &port.protocol {
                check_protocol(errs, &format!("{p}.protocol"), proto);
            }
            if let Some(tp) = port.target_port {
                check_port(errs, &format!("{p}.targetPort"), tp);
            }
        }
        if let Some(sel) = &self.workload_selector {
            check_workload_selector(errs, "spec.workloadSelector", sel);
            if !self.endpoints.is_empty() {
                errs.at(
                    "spec",
                    "only one of endpoints or workloadSelector may be set",
                );
            }
        }
        match self.resolution {
            Resolution::None | Resolution::DynamicDns if !self.endpoints.is_empty() => {
                errs.at(
                    "spec.endpoints",
                    "endpoints are not allowed with NONE or DYNAMIC_DNS resolution",
                );
            }
            Resolution::Static if self.endpoints.is_empty() && self.workload_selector.is_none() => {
                errs.at(
                    "spec.endpoints",
                    "STATIC resolution needs endpoints or a workloadSelector",
                );
            }
            Resolution::DnsRoundRobin if self.endpoints.len() > 1 => {
                errs.at(
                    "spec.endpoints",
                    format!(
                        "DNS_ROUND_ROBIN resolution allows at most one endpoint, got {}",
                        self.endpoints.len()
                    ),
                );
            }
            _ => {}
        }
        for (i, ep) in self.endpoints.iter().enumerate() {
            let p = format!("spec.endpoints[{i}]");
            ep.validate_at(errs, &p);
            if let Some(a) = &ep.address
                && self.resolution == Resolution::Static
                && !a.starts_with(UNIX_ADDRESS_PREFIX)
                && a.parse::<std::net::IpAddr>().is_err()
            {
                errs.at(
                    format!("{p}.address"),
                    format!("invalid address {a:?}: STATIC resolution needs IP addresses or unix:// sockets"),
                );
            }
            for name in ep.ports.keys() {
                if !self.ports.iter().any(|sp| &sp.name == name) {
                    errs.at(
                        format!("{p}.ports.{name}"),
                        format!("port name {name:?} is not one of the service entry's ports"),
                    );
                }
            }
        }
        check_export_to(errs, "spec.exportTo", &self.export_to);
        for (i, san) in self.subject_alt_names.iter().enumerate() {
            if san.is_empty() {
                errs.at(format!("spec.subjectAltNames[{i}]"), "must not be empty");
            }
        }
    }
}
