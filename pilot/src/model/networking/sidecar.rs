//! Sidecar: narrows what a workload's proxy listens on (ingress listeners)
//! and which services it can reach (egress hosts), and its outbound policy
//! for unknown destinations.

use serde::{Deserialize, Serialize};

use super::common::{
    ConnectionPoolSettings, Destination, Port, ServerTlsSettings, WorkloadSelector, check_protocol,
    check_workload_selector,
};
use crate::model::validate::{Errors, check_namespaced_host, check_port};

/// How traffic is captured for a listener.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CaptureMode {
    /// The environment's default.
    #[default]
    Default,
    /// iptables redirection.
    Iptables,
    /// No capture: the application connects to the listener itself.
    None,
}

/// What happens to traffic for destinations outside the registry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundTrafficPolicyMode {
    /// Block it.
    RegistryOnly,
    /// Pass it through (Istio's default).
    #[default]
    AllowAny,
}

/// Proxy configuration of the selected workloads.
#[derive(kube::CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "Sidecar",
    namespaced,
    schema = "disabled",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SidecarSpec {
    /// Workloads this applies to; the whole namespace when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<WorkloadSelector>,
    /// Inbound listeners.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<IstioIngressListener>,
    /// Outbound listeners and the hosts reachable through them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<IstioEgressListener>,
    /// Connection pool for all inbound connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound_connection_pool: Option<ConnectionPoolSettings>,
    /// Policy for unknown destinations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
}

/// An inbound listener.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioIngressListener {
    /// Port to listen on; required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<Port>,
    /// Address to bind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,
    /// Capture mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture_mode: Option<CaptureMode>,
    /// Where the application listens: `127.0.0.1:PORT`, `0.0.0.0:PORT`,
    /// `[::1]:PORT`, `[::]:PORT` or `unix://...`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_endpoint: Option<String>,
    /// TLS termination on this listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTlsSettings>,
    /// Connection pool for this listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPoolSettings>,
}

/// An outbound listener.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioEgressListener {
    /// Port; unset means all ports of the hosts (the catch-all listener).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<Port>,
    /// Address to bind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,
    /// Capture mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture_mode: Option<CaptureMode>,
    /// Reachable services as `namespace/dnsName` (`*/`, `./`, `~/` allowed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
}

/// Outbound traffic policy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutboundTrafficPolicy {
    /// Mode; ALLOW_ANY when unset.
    #[serde(default)]
    pub mode: OutboundTrafficPolicyMode,
    /// Where ALLOW_ANY traffic goes instead of passthrough.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_proxy: Option<Destination>,
}

fn check_bind(errs: &mut Errors, path: &str, bind: &Option<String>) {
    if let Some(b) = bind
        && !b.starts_with("unix://")
        && b.parse::<std::net::IpAddr>().is_err()
    {
        errs.at(
            path,
            format!("invalid bind {b:?}: must be an IP address or unix:// socket path"),
        );
    }
}

fn check_listener_port(errs: &mut Errors, path: &str, port: &Port, bind: &Option<String>) {
    let unix = bind.as_deref().is_some_and(|b| b.starts_with("unix://"));
    if !unix || port.number != 0 {
        check_port(errs, &format!("{path}.number"), port.number);
    }
    if !port.protocol.is_empty() {
        check_protocol(errs, &format!("{path}.protocol"), &port.protocol);
    }
}

fn default_endpoint_error(ep: &str) -> Option<String> {
    if let Some(sock) = ep.strip_prefix("unix://") {
        return (!(sock.starts_with('/') || sock.starts_with('@'))).then(|| {
            format!("invalid defaultEndpoint {ep:?}: a unix:// socket must be an absolute path or @abstract name")
        });
    }
    let port = ["127.0.0.1:", "0.0.0.0:", "[::1]:", "[::]:"]
        .iter()
        .find_map(|p| ep.strip_prefix(p));
    match port.map(str::parse::<u32>) {
        Some(Ok(p)) if (1..=65535).contains(&p) => None,
        Some(_) => Some(format!(
            "invalid defaultEndpoint {ep:?}: the port must be a number between 1 and 65535"
        )),
        None => Some(format!(
            "invalid defaultEndpoint {ep:?}: must be 127.0.0.1:PORT, 0.0.0.0:PORT, [::1]:PORT, [::]:PORT or unix://PATH"
        )),
    }
}

impl SidecarSpec {
    /// Records every semantic error, with paths rooted at `spec`.
    pub fn validate(&self, errs: &mut Errors) {
        if self.ingress.is_empty()
            && self.egress.is_empty()
            && self.inbound_connection_pool.is_none()
            && self.outbound_traffic_policy.is_none()
        {
            errs.at("spec", "empty Sidecar: set at least one of ingress, egress, inboundConnectionPool or outboundTrafficPolicy");
        }
        if let Some(sel) = &self.workload_selector {
            check_workload_selector(errs, "spec.workloadSelector", sel);
        }
        let mut ingress_ports = Vec::new();
        for (i, l) in self.ingress.iter().enumerate() {
            let p = format!("spec.ingress[{i}]");
            match &l.port {
                None => errs.at(
                    format!("{p}.port"),
                    "port is required for ingress listeners",
                ),
                Some(port) => {
                    check_listener_port(errs, &format!("{p}.port"), port, &l.bind);
                    let key = (port.number, l.bind.clone());
                    if ingress_ports.contains(&key) {
                        errs.at(
                            format!("{p}.port.number"),
                            format!("port {} is used by another ingress listener on the same bind address", port.number),
                        );
                    }
                    ingress_ports.push(key);
                }
            }
            check_bind(errs, &format!("{p}.bind"), &l.bind);
            if let Some(ep) = &l.default_endpoint
                && let Some(msg) = default_endpoint_error(ep)
            {
                errs.at(format!("{p}.defaultEndpoint"), msg);
            }
            if let Some(tls) = &l.tls {
                tls.validate(errs, &format!("{p}.tls"));
            }
            if let Some(cp) = &l.connection_pool {
                cp.validate(errs, &format!("{p}.connectionPool"));
            }
        }
        let mut catch_all = false;
        for (i, l) in self.egress.iter().enumerate() {
            let p = format!("spec.egress[{i}]");
            match &l.port {
                None => {
                    if catch_all {
                        errs.at(
                            format!("{p}.port"),
                            "only one egress listener may omit port (the catch-all listener)",
                        );
                    }
                    catch_all = true;
                }
                Some(port) => check_listener_port(errs, &format!("{p}.port"), port, &l.bind),
            }
            check_bind(errs, &format!("{p}.bind"), &l.bind);
            if l.hosts.is_empty() {
                errs.at(format!("{p}.hosts"), "at least one host is required");
            }
            for (j, h) in l.hosts.iter().enumerate() {
                check_namespaced_host(errs, &format!("{p}.hosts[{j}]"), h, true, true);
            }
        }
        if let Some(cp) = &self.inbound_connection_pool {
            cp.validate(errs, "spec.inboundConnectionPool");
        }
        if let Some(otp) = &self.outbound_traffic_policy
            && let Some(proxy) = &otp.egress_proxy
        {
            let p = "spec.outboundTrafficPolicy.egressProxy";
            if otp.mode != OutboundTrafficPolicyMode::AllowAny {
                errs.at(p, "egressProxy is only allowed with mode ALLOW_ANY");
            }
            proxy.validate(errs, p);
        }
    }
}
