//! The service registry: every service a proxy may call, with its ports,
//! protocols and endpoints.
//!
//! Services come from Kubernetes Services (endpoints from EndpointSlices, or
//! from the Pods their selector matches when no slice exists) and from
//! ServiceEntries (inline endpoints, WorkloadEntries and Pods picked by
//! `workloadSelector`, or the host itself for DNS resolution). Hosts are FQDNs
//! (`name.namespace.svc.<domain-suffix>`) with short-name aliases. Visibility
//! follows `exportTo` (the `networking.istio.io/exportTo` annotation on
//! Services). The registry is rebuilt from a config snapshot; it is plain data.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::networking::{self, ServiceEntry, WorkloadEntry};
use super::validate::Errors;

/// A port's application protocol, from `appProtocol`, an Istio port-name
/// prefix (`http-`, `grpc-`, …) or a ServiceEntry's `protocol`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Protocol {
    /// HTTP/1.1 (and upgrades).
    Http,
    /// HTTP/2 in cleartext.
    Http2,
    /// gRPC.
    Grpc,
    /// gRPC-Web.
    GrpcWeb,
    /// TLS-wrapped HTTP.
    Https,
    /// Opaque TLS, routed by SNI.
    Tls,
    /// Opaque TCP.
    Tcp,
    /// MongoDB (opaque TCP to the proxy).
    Mongo,
    /// Redis (opaque TCP to the proxy).
    Redis,
    /// MySQL (opaque TCP; the server speaks first).
    Mysql,
    /// UDP: not proxied.
    Udp,
    /// Unknown: the proxy detects HTTP or falls back to TCP.
    Auto,
}

impl Protocol {
    /// Parses Istio's protocol names, case-insensitively (`HTTP`, `http2`, `GRPC-Web`…).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "http" => Self::Http,
            "http2" | "h2c" | "kubernetes.io/h2c" => Self::Http2,
            "grpc" => Self::Grpc,
            "grpc-web" => Self::GrpcWeb,
            "https" => Self::Https,
            "tls" => Self::Tls,
            "tcp" => Self::Tcp,
            "mongo" => Self::Mongo,
            "redis" => Self::Redis,
            "mysql" => Self::Mysql,
            "udp" => Self::Udp,
            "kubernetes.io/ws" | "kubernetes.io/wss" => Self::Http,
            _ => return None,
        })
    }

    /// Protocol of a Kubernetes service port: `appProtocol` first, then the
    /// port name's prefix before `-` (Istio's naming convention), else `Auto`.
    pub fn for_port(name: Option<&str>, app_protocol: Option<&str>) -> Self {
        if let Some(p) = app_protocol.and_then(Self::parse) {
            return p;
        }
        let name = name.unwrap_or_default();
        if let Some(p) = Self::parse(name) {
            return p;
        }
        // The longest known prefix wins: `grpc-web-x` is gRPC-Web, `grpc-x` gRPC.
        if let Some(rest) = name
            .strip_prefix("grpc-web-")
            .or(name.strip_prefix("grpc-web"))
            && (rest.is_empty() || name.starts_with("grpc-web-"))
        {
            return Self::GrpcWeb;
        }
        name.split_once('-')
            .and_then(|(prefix, _)| Self::parse(prefix))
            .unwrap_or(Self::Auto)
    }

    /// True for protocols the proxy routes per request (HTTP routes apply).
    pub fn is_http(self) -> bool {
        matches!(self, Self::Http | Self::Http2 | Self::Grpc | Self::GrpcWeb)
    }

    /// True for protocols forwarded as opaque bytes.
    pub fn is_tcp(self) -> bool {
        matches!(
            self,
            Self::Tcp | Self::Mongo | Self::Redis | Self::Mysql | Self::Tls | Self::Https
        )
    }
}

/// A service port.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Port {
    /// The port's name (may be empty for a single unnamed Kubernetes port).
    pub name: String,
    /// The service port number clients dial.
    pub number: u32,
    /// The application protocol.
    pub protocol: Protocol,
}

/// Where an endpoint runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Locality {
    /// Region.
    pub region: String,
    /// Zone.
    pub zone: String,
    /// Sub-zone.
    pub subzone: String,
}

impl Locality {
    /// Parses Istio's `region/zone/subzone` form (missing parts are empty).
    pub fn parse(s: &str) -> Self {
        let mut parts = s.splitn(3, '/').map(str::to_string);
        Self {
            region: parts.next().unwrap_or_default(),
            zone: parts.next().unwrap_or_default(),
            subzone: parts.next().unwrap_or_default(),
        }
    }
}

/// One instance of a service.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Endpoint {
    /// IP address, or a hostname for DNS-resolved ServiceEntries.
    pub address: String,
    /// Service port number → the port this endpoint listens on.
    pub ports: BTreeMap<u32, u32>,
    /// The workload's labels (subsets select on these).
    pub labels: BTreeMap<String, String>,
    /// The workload's service account.
    pub service_account: String,
    /// Where it runs.
    pub locality: Locality,
    /// Load-balancing weight (1 unless set).
    pub weight: u32,
    /// False for endpoints that are not ready.
    pub healthy: bool,
    /// The workload's name (pod or WorkloadEntry), for telemetry.
    pub workload: String,
}

/// Who may see a service, from `exportTo`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum ExportTo {
    /// Every namespace (`*`, the default).
    All,
    /// Only these namespaces (`.` resolved to the service's own).
    Namespaces(BTreeSet<String>),
}

impl ExportTo {
    /// Parses an `exportTo` list for an object in namespace `ns`.
    pub fn parse(list: &[String], ns: &str) -> Self {
        if list.is_empty() || list.iter().any(|e| e == "*") {
            return Self::All;
        }
        Self::Namespaces(
            list.iter()
                .filter(|e| *e != "~")
                .map(|e| if e == "." { ns.to_string() } else { e.clone() })
                .collect(),
        )
    }

    /// True when a proxy in `ns` may see the object.
    pub fn allows(&self, ns: &str) -> bool {
        match self {
            Self::All => true,
            Self::Namespaces(set) => set.contains(ns),
        }
    }
}

/// Where a service was declared.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum ServiceSource {
    /// A Kubernetes Service.
    Kubernetes,
    /// A ServiceEntry: its location and resolution.
    ServiceEntry {
        /// Inside or outside the mesh.
        mesh_external: bool,
        /// How endpoints are found.
        resolution: networking::Resolution,
    },
}

/// A service in the registry.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ServiceInfo {
    /// The FQDN (`reviews.default.svc.cluster.local`) or ServiceEntry host.
    pub hostname: String,
    /// The declaring object's name.
    pub name: String,
    /// The declaring object's namespace.
    pub namespace: String,
    /// Virtual IPs (cluster IPs or ServiceEntry addresses).
    pub addresses: Vec<String>,
    /// Ports, in declaration order.
    pub ports: Vec<Port>,
    /// Instances.
    pub endpoints: Vec<Endpoint>,
    /// Visibility.
    pub export_to: ExportTo,
    /// Kubernetes or ServiceEntry.
    pub source: ServiceSource,
}

impl ServiceInfo {
    /// Names a proxy in `from_ns` may use for this service (without ports):
    /// the hostname, and for Kubernetes services `name.ns.svc`, `name.ns`
    /// and, from the same namespace, `name`.
    pub fn aliases(&self, from_ns: &str) -> Vec<String> {
        let mut out = vec![self.hostname.clone()];
        if self.source == ServiceSource::Kubernetes {
            out.push(format!("{}.{}.svc", self.name, self.namespace));
            out.push(format!("{}.{}", self.name, self.namespace));
            if from_ns == self.namespace {
                out.push(self.name.clone());
            }
        }
        out
    }

    /// The port with this number.
    pub fn port(&self, number: u32) -> Option<&Port> {
        self.ports.iter().find(|p| p.number == number)
    }
}

/// Every service, by hostname.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Registry {
    /// Services keyed by hostname. A host declared twice keeps the first
    /// (Kubernetes Services first, then ServiceEntries in name order).
    pub services: BTreeMap<String, Arc<ServiceInfo>>,
}

/// The objects the registry is built from.
#[derive(Default)]
pub struct Inputs<'a> {
    /// Kubernetes Services.
    pub services: Vec<&'a Service>,
    /// Pods.
    pub pods: Vec<&'a Pod>,
    /// EndpointSlices.
    pub slices: Vec<&'a EndpointSlice>,
    /// ServiceEntries.
    pub service_entries: Vec<&'a ServiceEntry>,
    /// WorkloadEntries.
    pub workload_entries: Vec<&'a WorkloadEntry>,
}

/// The inputs indexed by namespace and name, so building each service looks
/// at its own namespace's objects only.
struct Lookup<'a> {
    pods_by_ns: HashMap<&'a str, Vec<&'a Pod>>,
    pod_by_name: HashMap<(&'a str, &'a str), &'a Pod>,
    slices_by_service: HashMap<(&'a str, &'a str), Vec<&'a EndpointSlice>>,
    workload_entries_by_ns: HashMap<&'a str, Vec<&'a WorkloadEntry>>,
}

fn ns_or_default(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or("default")
}

impl<'a> Lookup<'a> {
    fn new(inputs: &Inputs<'a>) -> Self {
        let mut l = Self {
            pods_by_ns: HashMap::new(),
            pod_by_name: HashMap::new(),
            slices_by_service: HashMap::new(),
            workload_entries_by_ns: HashMap::new(),
        };
        for pod in &inputs.pods {
            let ns = ns_or_default(&pod.metadata);
            l.pods_by_ns.entry(ns).or_default().push(pod);
            if let Some(name) = pod.metadata.name.as_deref() {
                l.pod_by_name.insert((ns, name), pod);
            }
        }
        for slice in &inputs.slices {
            let service = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("kubernetes.io/service-name"));
            if let Some(service) = service {
                l.slices_by_service
                    .entry((ns_or_default(&slice.metadata), service.as_str()))
                    .or_default()
                    .push(slice);
            }
        }
        for we in &inputs.workload_entries {
            l.workload_entries_by_ns
                .entry(ns_or_default(&we.metadata))
                .or_default()
                .push(we);
        }
        l
    }

    fn pods(&self, ns: &str) -> &[&'a Pod] {
        self.pods_by_ns.get(ns).map_or(&[], Vec::as_slice)
    }
}

impl Registry {
    /// Builds the registry.
    pub fn build(inputs: &Inputs<'_>, domain_suffix: &str) -> Self {
        let mut services = BTreeMap::new();
        let lookup = Lookup::new(inputs);
        for svc in &inputs.services {
            if let Some(info) = from_kubernetes(svc, &lookup, domain_suffix) {
                services
                    .entry(info.hostname.clone())
                    .or_insert_with(|| Arc::new(info));
            }
        }
        for se in &inputs.service_entries {
            for info in from_service_entry(se, &lookup) {
                services
                    .entry(info.hostname.clone())
                    .or_insert_with(|| Arc::new(info));
            }
        }
        Self { services }
    }

    /// The service with this hostname, if `from_ns` may see it.
    pub fn get(&self, hostname: &str, from_ns: &str) -> Option<&Arc<ServiceInfo>> {
        self.services
            .get(hostname)
            .filter(|s| s.export_to.allows(from_ns))
    }

    /// Services visible from namespace `ns`.
    pub fn visible(&self, ns: &str) -> impl Iterator<Item = &Arc<ServiceInfo>> {
        self.services
            .values()
            .filter(move |s| s.export_to.allows(ns))
    }

    /// Services whose hostname matches `host`, which may be a wildcard
    /// (`*.example.com`, `*`), visible from `ns`.
    pub fn matching<'a>(
        &'a self,
        host: &'a str,
        ns: &'a str,
    ) -> impl Iterator<Item = &'a Arc<ServiceInfo>> {
        self.visible(ns)
            .filter(move |s| host_matches(host, &s.hostname))
    }
}

/// Resolves a host as written in config in namespace `ns`: a short name
/// without dots becomes `name.ns.svc.<domain>`; anything else is kept.
pub fn resolve_host(host: &str, ns: &str, domain_suffix: &str) -> String {
    if host.contains('.') || host.contains('*') || host.contains('/') {
        host.to_string()
    } else {
        format!("{host}.{ns}.svc.{domain_suffix}")
    }
}

/// Whether `pattern` (possibly `*` or `*.suffix`) matches `host`.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => host.ends_with(suffix) && host.len() > suffix.len(),
        None => pattern == host,
    }
}

fn labels_match(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn export_annotation(svc: &Service, ns: &str) -> ExportTo {
    let list: Vec<String> = svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("networking.istio.io/exportTo"))
        .map(|v| v.split(',').map(|s| s.trim().to_string()).collect())
        .unwrap_or_default();
    ExportTo::parse(&list, ns)
}

fn pod_locality(pod: &Pod) -> Locality {
    let labels = pod.metadata.labels.as_ref();
    labels
        .and_then(|l| l.get("istio-locality"))
        .map(|l| Locality::parse(&l.replace('.', "/")))
        .unwrap_or_default()
}

fn pod_container_port(pod: &Pod, name: &str) -> Option<u32> {
    pod.spec.as_ref()?.containers.iter().find_map(|c| {
        c.ports
            .as_ref()?
            .iter()
            .find(|p| p.name.as_deref() == Some(name))
            .map(|p| p.container_port as u32)
    })
}

fn pod_endpoint(pod: &Pod, address: String, ports: BTreeMap<u32, u32>, healthy: bool) -> Endpoint {
    Endpoint {
        address,
        ports,
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        service_account: pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        locality: pod_locality(pod),
        weight: 1,
        healthy,
        workload: pod.metadata.name.clone().unwrap_or_default(),
    }
}

fn from_kubernetes(svc: &Service, lookup: &Lookup<'_>, domain: &str) -> Option<ServiceInfo> {
    let name = svc.metadata.name.clone()?;
    let ns = svc
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let spec = svc.spec.as_ref()?;
    let k8s_ports: Vec<_> = spec
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") != "UDP")
        .collect();
    let ports: Vec<Port> = k8s_ports
        .iter()
        .map(|p| Port {
            name: p.name.clone().unwrap_or_default(),
            number: p.port as u32,
            protocol: Protocol::for_port(p.name.as_deref(), p.app_protocol.as_deref()),
        })
        .collect();
    let addresses = spec
        .cluster_ips
        .clone()
        .or_else(|| spec.cluster_ip.clone().map(|ip| vec![ip]))
        .unwrap_or_default()
        .into_iter()
        .filter(|ip| ip.parse::<IpAddr>().is_ok())
        .collect();

    let pod_by_name = |pod_name: &str| lookup.pod_by_name.get(&(ns.as_str(), pod_name)).copied();
    let mut endpoints = Vec::new();
    let slices = lookup
        .slices_by_service
        .get(&(ns.as_str(), name.as_str()))
        .map_or(&[][..], Vec::as_slice);
    if !slices.is_empty() {
        for slice in slices {
            for ep in &slice.endpoints {
                let Some(address) = ep.addresses.first() else {
                    continue;
                };
                let mut port_map = BTreeMap::new();
                for sp in &k8s_ports {
                    let found = slice.ports.iter().flatten().find(|p| p.name == sp.name);
                    if let Some(port) = found.and_then(|p| p.port) {
                        port_map.insert(sp.port as u32, port as u32);
                    }
                }
                let healthy = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                let pod = ep
                    .target_ref
                    .as_ref()
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                    .and_then(|r| r.name.as_deref())
                    .and_then(pod_by_name);
                let mut e = match pod {
                    Some(pod) => pod_endpoint(pod, address.clone(), port_map, healthy),
                    None => Endpoint {
                        address: address.clone(),
                        ports: port_map,
                        labels: BTreeMap::new(),
                        service_account: "default".into(),
                        locality: Locality::default(),
                        weight: 1,
                        healthy,
                        workload: String::new(),
                    },
                };
                if let Some(zone) = &ep.zone {
                    e.locality.zone.clone_from(zone);
                }
                endpoints.push(e);
            }
        }
    } else if let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) {
        for pod in lookup.pods(&ns) {
            let Some(labels) = pod.metadata.labels.as_ref() else {
                continue;
            };
            if !labels_match(selector, labels) {
                continue;
            }
            let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.clone()) else {
                continue;
            };
            let mut port_map = BTreeMap::new();
            for sp in &k8s_ports {
                let target = match &sp.target_port {
                    None => Some(sp.port as u32),
                    Some(IntOrString::Int(n)) => Some(*n as u32),
                    Some(IntOrString::String(s)) => pod_container_port(pod, s),
                };
                if let Some(t) = target {
                    port_map.insert(sp.port as u32, t);
                }
            }
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            let healthy = matches!(phase, None | Some("Running"));
            endpoints.push(pod_endpoint(pod, ip, port_map, healthy));
        }
    }
    Some(ServiceInfo {
        hostname: format!("{name}.{ns}.svc.{domain}"),
        export_to: export_annotation(svc, &ns),
        name,
        namespace: ns,
        addresses,
        ports,
        endpoints,
        source: ServiceSource::Kubernetes,
    })
}

fn from_service_entry(se: &ServiceEntry, lookup: &Lookup<'_>) -> Vec<ServiceInfo> {
    let spec = &se.spec;
    let ns = se
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = se.metadata.name.clone().unwrap_or_default();
    let resolution = spec.resolution;
    let ports: Vec<Port> = spec
        .ports
        .iter()
        .map(|p| Port {
            name: p.name.clone(),
            number: p.number,
            protocol: p
                .protocol
                .as_deref()
                .and_then(Protocol::parse)
                .unwrap_or(Protocol::Tcp),
        })
        .collect();
    let port_map = |named: &BTreeMap<String, u32>| -> BTreeMap<u32, u32> {
        spec.ports
            .iter()
            .map(|p| {
                let target = named
                    .get(&p.name)
                    .copied()
                    .or(p.target_port)
                    .unwrap_or(p.number);
                (p.number, target)
            })
            .collect()
    };
    let from_workload = |we: &networking::WorkloadEntrySpec, workload: String| Endpoint {
        address: we.address.clone().unwrap_or_default(),
        ports: port_map(&we.ports),
        labels: we.labels.clone(),
        service_account: we
            .service_account
            .clone()
            .unwrap_or_else(|| "default".into()),
        locality: we
            .locality
            .as_deref()
            .map(Locality::parse)
            .unwrap_or_default(),
        weight: we.weight.unwrap_or(1).max(1),
        healthy: true,
        workload,
    };
    let mut endpoints: Vec<Endpoint> = spec
        .endpoints
        .iter()
        .map(|we| from_workload(we, name.clone()))
        .collect();
    if let Some(sel) = &spec.workload_selector {
        let entries = lookup.workload_entries_by_ns.get(ns.as_str());
        for we in entries.into_iter().flatten() {
            if labels_match(&sel.labels, &we.spec.labels) {
                endpoints.push(from_workload(
                    &we.spec,
                    we.metadata.name.clone().unwrap_or_default(),
                ));
            }
        }
        for pod in lookup.pods(&ns) {
            let Some(labels) = pod.metadata.labels.as_ref() else {
                continue;
            };
            if !labels_match(&sel.labels, labels) {
                continue;
            }
            if let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.clone()) {
                endpoints.push(pod_endpoint(pod, ip, port_map(&BTreeMap::new()), true));
            }
        }
    }
    spec.hosts
        .iter()
        .map(|host| {
            let mut eps = endpoints.clone();
            if eps.is_empty()
                && matches!(
                    resolution,
                    networking::Resolution::Dns | networking::Resolution::DnsRoundRobin
                )
                && !host.starts_with('*')
            {
                // DNS resolution without endpoints: the host itself is the endpoint.
                eps.push(Endpoint {
                    address: host.clone(),
                    ports: port_map(&BTreeMap::new()),
                    labels: BTreeMap::new(),
                    service_account: String::new(),
                    locality: Locality::default(),
                    weight: 1,
                    healthy: true,
                    workload: String::new(),
                });
            }
            ServiceInfo {
                hostname: host.clone(),
                name: name.clone(),
                namespace: ns.clone(),
                addresses: spec.addresses.clone(),
                ports: ports.clone(),
                endpoints: eps,
                export_to: ExportTo::parse(&spec.export_to, &ns),
                source: ServiceSource::ServiceEntry {
                    mesh_external: spec.location == networking::Location::MeshExternal,
                    resolution,
                },
            }
        })
        .collect()
}

/// Validates a Kubernetes Service as far as the registry relies on it.
pub fn validate_service(svc: &Service, errs: &mut Errors) {
    let Some(spec) = &svc.spec else { return };
    let mut names = BTreeSet::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        if !(1..=65535).contains(&p.port) {
            errs.at(
                format!("spec.ports[{i}].port"),
                format!("port number must be between 1 and 65535, got {}", p.port),
            );
        }
        if let Some(n) = &p.name
            && !names.insert(n.clone())
        {
            errs.at(
                format!("spec.ports[{i}].name"),
                format!("port name {n:?} is used twice"),
            );
        }
    }
}

/// Validates an EndpointSlice as far as the registry relies on it.
pub fn validate_endpoint_slice(slice: &EndpointSlice, errs: &mut Errors) {
    for (i, ep) in slice.endpoints.iter().enumerate() {
        for (j, a) in ep.addresses.iter().enumerate() {
            if slice.address_type != "FQDN" && a.parse::<IpAddr>().is_err() {
                errs.at(
                    format!("endpoints[{i}].addresses[{j}]"),
                    format!("{a:?} is not an IP address"),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_from_names_and_app_protocol() {
        assert_eq!(Protocol::for_port(Some("http"), None), Protocol::Http);
        assert_eq!(Protocol::for_port(Some("http-web"), None), Protocol::Http);
        assert_eq!(Protocol::for_port(Some("grpc-api"), None), Protocol::Grpc);
        assert_eq!(
            Protocol::for_port(Some("grpc-web-x"), None),
            Protocol::GrpcWeb
        );
        assert_eq!(Protocol::for_port(Some("tcp-db"), None), Protocol::Tcp);
        assert_eq!(Protocol::for_port(Some("web"), None), Protocol::Auto);
        assert_eq!(
            Protocol::for_port(Some("web"), Some("grpc")),
            Protocol::Grpc
        );
        assert_eq!(
            Protocol::for_port(None, Some("kubernetes.io/h2c")),
            Protocol::Http2
        );
    }

    #[test]
    fn hosts_resolve_and_match() {
        assert_eq!(
            resolve_host("reviews", "default", "cluster.local"),
            "reviews.default.svc.cluster.local"
        );
        assert_eq!(
            resolve_host("reviews.prod", "default", "cluster.local"),
            "reviews.prod"
        );
        assert!(host_matches("*.example.com", "a.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(host_matches("*", "anything"));
    }

    #[test]
    fn export_to() {
        assert!(ExportTo::parse(&[], "a").allows("b"));
        assert!(ExportTo::parse(&[".".into()], "a").allows("a"));
        assert!(!ExportTo::parse(&[".".into()], "a").allows("b"));
        assert!(!ExportTo::parse(&["~".into()], "a").allows("a"));
    }
}
