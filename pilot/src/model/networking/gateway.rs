//! Gateway: a load balancer at the edge of the mesh (the ingress or egress
//! gateway workloads picked by `selector`), described as servers: port,
//! hosts and TLS. Routing for those hosts comes from VirtualServices bound to
//! the gateway.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::common::{Port, ServerTlsSettings, check_protocol, is_tls_protocol};
use crate::model::validate::{Errors, check_labels, check_namespaced_host, check_port};

/// A set of servers on the selected gateway workloads.
#[derive(kube::CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "Gateway",
    namespaced,
    schema = "disabled",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewaySpec {
    /// Servers (listeners) of the gateway.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<Server>,
    /// Labels of the gateway pods this applies to.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
}

/// One listener: a port, the hosts it serves and its TLS settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Server {
    /// Port, protocol and name; required.
    pub port: Port,
    /// Address or `unix://` socket to bind; all addresses when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,
    /// Hosts served, as `host` or `namespace/host` (namespace restricts which
    /// VirtualServices may bind).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// TLS settings; required for HTTPS and TLS ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTlsSettings>,
    /// Deprecated, ignored by Istio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_endpoint: Option<String>,
    /// Server name, used in stats and for binding from Gateway API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl GatewaySpec {
    /// Records every semantic error, with paths rooted at `spec`.
    pub fn validate(&self, errs: &mut Errors) {
        check_labels(errs, "spec.selector", &self.selector);
        if self.servers.is_empty() {
            errs.at("spec.servers", "at least one server is required");
        }
        let mut port_names: Vec<&str> = Vec::new();
        for (i, s) in self.servers.iter().enumerate() {
            let p = format!("spec.servers[{i}]");
            s.validate(errs, &p);
            if !s.port.name.is_empty() {
                if port_names.contains(&s.port.name.as_str()) {
                    errs.at(
                        format!("{p}.port.name"),
                        format!("port name {:?} is used by another server: server port names must be unique", s.port.name),
                    );
                }
                port_names.push(&s.port.name);
            }
        }
    }
}

impl Server {
    fn validate(&self, errs: &mut Errors, path: &str) {
        let unix = self
            .bind
            .as_deref()
            .is_some_and(|b| b.starts_with("unix://"));
        if !(unix && self.port.number == 0) {
            check_port(errs, &format!("{path}.port.number"), self.port.number);
        }
        check_protocol(errs, &format!("{path}.port.protocol"), &self.port.protocol);
        if self.port.name.is_empty() {
            errs.at(format!("{path}.port.name"), "port name is required");
        }
        if let Some(b) = &self.bind
            && !unix
            && b.parse::<std::net::IpAddr>().is_err()
        {
            errs.at(
                format!("{path}.bind"),
                format!("invalid bind {b:?}: must be an IP address or unix:// socket path"),
            );
        }
        if self.hosts.is_empty() {
            errs.at(format!("{path}.hosts"), "at least one host is required");
        }
        for (j, h) in self.hosts.iter().enumerate() {
            check_namespaced_host(errs, &format!("{path}.hosts[{j}]"), h, false, false);
        }
        let tls_port = is_tls_protocol(&self.port.protocol);
        match &self.tls {
            None if tls_port => errs.at(
                format!("{path}.tls"),
                format!(
                    "tls is required for {} servers (set tls.mode)",
                    self.port.protocol
                ),
            ),
            None => {}
            Some(tls) => {
                let redirect_only = tls.https_redirect == Some(true);
                if !tls_port && !redirect_only {
                    errs.at(
                        format!("{path}.tls"),
                        format!("tls settings are only allowed on HTTPS and TLS servers, or with httpsRedirect on {} servers", self.port.protocol),
                    );
                }
                if tls_port {
                    tls.validate(errs, &format!("{path}.tls"));
                }
            }
        }
    }
}
