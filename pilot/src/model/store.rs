//! The validated config of many files, and the snapshots served from it.
//!
//! Each file is loaded on its own. A file that fails validation is rejected
//! alone: its last good version keeps serving and its errors are kept for the
//! debug endpoint. Checks that span objects (the same object declared twice, a
//! route to a subset no DestinationRule defines) run over the union of every
//! file's candidate version; a file whose objects fail them is rejected the
//! same way, and the union is checked again until it is consistent.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use super::load::{ConfigError, FileResult, Loaded, Object, Origin, load_str};
use super::networking::{
    Destination, DestinationRule, Gateway, ServiceEntry, Sidecar, VirtualService,
    VirtualServiceSpec, WorkloadEntry,
};
use super::registry::{Inputs, Registry, resolve_host};
use super::security::{AuthorizationPolicy, PeerAuthentication, RequestAuthentication};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// Accepted objects, by kind, in `namespace/name` order.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// VirtualServices.
    pub virtual_services: Vec<Arc<VirtualService>>,
    /// DestinationRules.
    pub destination_rules: Vec<Arc<DestinationRule>>,
    /// Gateways.
    pub gateways: Vec<Arc<Gateway>>,
    /// ServiceEntries.
    pub service_entries: Vec<Arc<ServiceEntry>>,
    /// WorkloadEntries.
    pub workload_entries: Vec<Arc<WorkloadEntry>>,
    /// Sidecars.
    pub sidecars: Vec<Arc<Sidecar>>,
    /// PeerAuthentications.
    pub peer_authentications: Vec<Arc<PeerAuthentication>>,
    /// AuthorizationPolicies.
    pub authorization_policies: Vec<Arc<AuthorizationPolicy>>,
    /// RequestAuthentications.
    pub request_authentications: Vec<Arc<RequestAuthentication>>,
    /// Kubernetes Services.
    pub services: Vec<Arc<Service>>,
    /// Pods.
    pub pods: Vec<Arc<Pod>>,
    /// Namespaces.
    pub namespaces: Vec<Arc<Namespace>>,
    /// EndpointSlices.
    pub endpoint_slices: Vec<Arc<EndpointSlice>>,
}

impl Config {
    fn from_objects(objects: &[&Loaded]) -> Self {
        let mut sorted: Vec<&Loaded> = objects.to_vec();
        sorted.sort_by(|a, b| {
            (a.object.namespace(), a.object.name()).cmp(&(b.object.namespace(), b.object.name()))
        });
        let mut c = Self::default();
        for l in sorted {
            match &l.object {
                Object::VirtualService(o) => c.virtual_services.push(o.clone()),
                Object::DestinationRule(o) => c.destination_rules.push(o.clone()),
                Object::Gateway(o) => c.gateways.push(o.clone()),
                Object::ServiceEntry(o) => c.service_entries.push(o.clone()),
                Object::WorkloadEntry(o) => c.workload_entries.push(o.clone()),
                Object::Sidecar(o) => c.sidecars.push(o.clone()),
                Object::PeerAuthentication(o) => c.peer_authentications.push(o.clone()),
                Object::AuthorizationPolicy(o) => c.authorization_policies.push(o.clone()),
                Object::RequestAuthentication(o) => c.request_authentications.push(o.clone()),
                Object::Service(o) => c.services.push(o.clone()),
                Object::Pod(o) => c.pods.push(o.clone()),
                Object::Namespace(o) => c.namespaces.push(o.clone()),
                Object::EndpointSlice(o) => c.endpoint_slices.push(o.clone()),
            }
        }
        c
    }
}

/// Objects indexed by the hosts they name (resolved to FQDNs), so that
/// finding the rules for one host does not scan every rule.
#[derive(Clone, Debug, Default)]
pub struct HostIndex {
    exact: HashMap<String, Vec<usize>>,
    wildcard: Vec<(String, usize)>,
}

impl HostIndex {
    fn build(hosts: impl Iterator<Item = (usize, Vec<String>)>) -> Self {
        let mut index = Self::default();
        for (i, list) in hosts {
            for h in list {
                if h.starts_with('*') {
                    index.wildcard.push((h, i));
                } else {
                    index.exact.entry(h).or_default().push(i);
                }
            }
        }
        index
    }

    /// Positions of the objects naming `hostname`, exactly or by wildcard, in
    /// ascending order without repeats.
    pub fn candidates(&self, hostname: &str) -> Vec<usize> {
        let mut out: Vec<usize> = self.exact.get(hostname).cloned().unwrap_or_default();
        out.extend(
            self.wildcard
                .iter()
                .filter(|(pattern, _)| super::registry::host_matches(pattern, hostname))
                .map(|(_, i)| *i),
        );
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// One immutable generation of config, as the xDS generator reads it.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Identifies the store that built this snapshot (unique in the process).
    pub store_id: u64,
    /// Increases with every change.
    pub generation: u64,
    /// The cluster DNS suffix (`cluster.local`).
    pub domain_suffix: String,
    /// Istio's root namespace for mesh-wide policy (`istio-system`).
    pub root_namespace: String,
    /// Accepted objects.
    pub config: Config,
    /// Services and endpoints.
    pub registry: Registry,
    /// `config.virtual_services` by resolved host.
    pub vs_hosts: HostIndex,
    /// `config.destination_rules` by resolved host.
    pub dr_hosts: HostIndex,
    /// Whether any config selects by workload labels (VirtualService
    /// `sourceLabels`, DestinationRule or Sidecar `workloadSelector`), so
    /// clients with different labels may see different resources.
    pub label_sensitive: bool,
}

impl Snapshot {
    /// Resolves a host written in config in namespace `ns` to an FQDN.
    pub fn resolve(&self, host: &str, ns: &str) -> String {
        resolve_host(host, ns, &self.domain_suffix)
    }
}

/// The state of one file, for the debug endpoint.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FileStatus {
    /// The file.
    pub file: String,
    /// Whether its latest version is the one serving.
    pub accepted: bool,
    /// How many objects its serving version holds.
    pub serving_objects: usize,
    /// Why its latest version was rejected (empty when accepted).
    pub errors: Vec<String>,
    /// Documents skipped (unknown kinds).
    pub warnings: Vec<String>,
}

#[derive(Debug, Default)]
struct FileState {
    latest: FileResult,
    good: Option<Vec<Loaded>>,
    cross_errors: Vec<ConfigError>,
    accepted: bool,
}

/// Every file's config, and the snapshots built from it.
#[derive(Debug)]
pub struct ConfigStore {
    id: u64,
    files: BTreeMap<String, FileState>,
    domain_suffix: String,
    root_namespace: String,
    generation: u64,
}

impl ConfigStore {
    /// An empty store.
    pub fn new(domain_suffix: &str, root_namespace: &str) -> Self {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Self {
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            files: BTreeMap::new(),
            domain_suffix: domain_suffix.to_string(),
            root_namespace: root_namespace.to_string(),
            generation: 0,
        }
    }

    /// Loads (or reloads) one file's text. Returns what loading it found:
    /// its objects, errors and warnings (cross-object errors are found by
    /// [`ConfigStore::snapshot`]).
    pub fn upsert(&mut self, file: &str, text: &str) -> &FileResult {
        let state = self.files.entry(file.to_string()).or_default();
        state.latest = load_str(file, text);
        &state.latest
    }

    /// Forgets a deleted file: its objects stop serving.
    pub fn remove(&mut self, file: &str) -> bool {
        self.files.remove(file).is_some()
    }

    /// The files known, in order.
    pub fn files(&self) -> impl Iterator<Item = &str> {
        self.files.keys().map(String::as_str)
    }

    /// Decides which version of each file serves and builds the snapshot.
    pub fn snapshot(&mut self) -> Snapshot {
        let mut use_latest: BTreeMap<String, bool> = self
            .files
            .iter()
            .map(|(f, s)| (f.clone(), s.latest.errors.is_empty()))
            .collect();
        let mut cross: BTreeMap<String, Vec<ConfigError>> = BTreeMap::new();
        // Each round rejects at least one more file or stops, so this ends.
        for _ in 0..=self.files.len() {
            let union = self.union(&use_latest);
            let errors = cross_check(&union, &self.domain_suffix);
            let mut changed = false;
            for e in errors {
                let file = e.origin.file.clone();
                if use_latest.get(&file) == Some(&true) {
                    use_latest.insert(file.clone(), false);
                    changed = true;
                }
                cross.entry(file).or_default().push(e);
            }
            if !changed {
                break;
            }
        }
        for (file, state) in &mut self.files {
            state.accepted = use_latest.get(file) == Some(&true);
            state.cross_errors = cross.remove(file).unwrap_or_default();
            if state.accepted {
                state.good = Some(state.latest.objects.clone());
            }
        }
        let union = self.union(&use_latest);
        let config = Config::from_objects(&union);
        let registry = Registry::build(
            &Inputs {
                services: config.services.iter().map(AsRef::as_ref).collect(),
                pods: config.pods.iter().map(AsRef::as_ref).collect(),
                slices: config.endpoint_slices.iter().map(AsRef::as_ref).collect(),
                service_entries: config.service_entries.iter().map(AsRef::as_ref).collect(),
                workload_entries: config.workload_entries.iter().map(AsRef::as_ref).collect(),
            },
            &self.domain_suffix,
        );
        self.generation += 1;
        let domain = &self.domain_suffix;
        let vs_hosts =
            HostIndex::build(config.virtual_services.iter().enumerate().map(|(i, vs)| {
                let ns = vs.metadata.namespace.as_deref().unwrap_or("default");
                (
                    i,
                    vs.spec
                        .hosts
                        .iter()
                        .map(|h| resolve_host(h, ns, domain))
                        .collect(),
                )
            }));
        let dr_hosts =
            HostIndex::build(config.destination_rules.iter().enumerate().map(|(i, dr)| {
                let ns = dr.metadata.namespace.as_deref().unwrap_or("default");
                (i, vec![resolve_host(&dr.spec.host, ns, domain)])
            }));
        let label_sensitive = config
            .destination_rules
            .iter()
            .any(|d| d.spec.workload_selector.is_some())
            || config
                .sidecars
                .iter()
                .any(|s| s.spec.workload_selector.is_some())
            || config.virtual_services.iter().any(|vs| {
                vs.spec
                    .http
                    .iter()
                    .flat_map(|r| &r.matches)
                    .any(|m| !m.source_labels.is_empty())
                    || vs
                        .spec
                        .tcp
                        .iter()
                        .flat_map(|r| &r.matches)
                        .any(|m| !m.source_labels.is_empty())
                    || vs
                        .spec
                        .tls
                        .iter()
                        .flat_map(|r| &r.matches)
                        .any(|m| !m.source_labels.is_empty())
            });
        Snapshot {
            store_id: self.id,
            generation: self.generation,
            domain_suffix: self.domain_suffix.clone(),
            root_namespace: self.root_namespace.clone(),
            config,
            registry,
            vs_hosts,
            dr_hosts,
            label_sensitive,
        }
    }

    fn union(&self, use_latest: &BTreeMap<String, bool>) -> Vec<&Loaded> {
        self.files
            .iter()
            .flat_map(|(f, s)| {
                let objs = if use_latest.get(f) == Some(&true) {
                    Some(&s.latest.objects)
                } else {
                    s.good.as_ref()
                };
                objs.into_iter().flatten()
            })
            .collect()
    }

    /// Every file's state, for `/debug/configz`.
    pub fn status(&self) -> Vec<FileStatus> {
        self.files
            .iter()
            .map(|(file, s)| FileStatus {
                file: file.clone(),
                accepted: s.accepted,
                serving_objects: s.good.as_ref().map_or(0, Vec::len),
                errors: s
                    .latest
                    .errors
                    .iter()
                    .chain(&s.cross_errors)
                    .map(ToString::to_string)
                    .collect(),
                warnings: s.latest.warnings.iter().map(ToString::to_string).collect(),
            })
            .collect()
    }

    /// Every error in the latest version of every file.
    pub fn errors(&self) -> Vec<ConfigError> {
        self.files
            .values()
            .flat_map(|s| s.latest.errors.iter().chain(&s.cross_errors).cloned())
            .collect()
    }
}

/// Checks that span objects: duplicate objects, and route destinations naming
/// subsets that no DestinationRule for their host defines.
fn cross_check(objects: &[&Loaded], domain: &str) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut seen: BTreeMap<(String, String, String), &Origin> = BTreeMap::new();
    for l in objects {
        let o = &l.object;
        let key = (
            o.kind().to_string(),
            o.namespace().to_string(),
            o.name().to_string(),
        );
        if let Some(first) = seen.get(&key) {
            errors.push(ConfigError {
                origin: l.origin.clone(),
                object: Some(o.display_name()),
                path: Some("metadata.name".into()),
                message: format!("{} is already defined in {first}", o.display_name()),
            });
        } else {
            seen.insert(key, &l.origin);
        }
    }

    let mut subsets: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    for l in objects {
        if let Object::DestinationRule(dr) = &l.object {
            let host = resolve_host(&dr.spec.host, l.object.namespace(), domain);
            let set = subsets.entry(host).or_default();
            set.extend(dr.spec.subsets.iter().map(|s| s.name.as_str()));
        }
    }
    for l in objects {
        let Object::VirtualService(vs) = &l.object else {
            continue;
        };
        let ns = l.object.namespace();
        for (path, dest) in destinations(&vs.spec) {
            let Some(subset) = dest.subset.as_deref().filter(|s| !s.is_empty()) else {
                continue;
            };
            let host = resolve_host(&dest.host, ns, domain);
            let defined = subsets.get(&host).is_some_and(|s| s.contains(subset));
            if !defined {
                errors.push(ConfigError {
                    origin: l.origin.clone(),
                    object: Some(l.object.display_name()),
                    path: Some(format!("{path}.subset")),
                    message: format!(
                        "subset {subset:?} is not defined by any DestinationRule for host {host}"
                    ),
                });
            }
        }
    }
    errors
}

/// Every destination a VirtualService names, with its field path.
fn destinations(spec: &VirtualServiceSpec) -> Vec<(String, &Destination)> {
    let mut out = Vec::new();
    for (i, r) in spec.http.iter().enumerate() {
        for (j, d) in r.route.iter().enumerate() {
            out.push((
                format!("spec.http[{i}].route[{j}].destination"),
                &d.destination,
            ));
        }
        if let Some(m) = &r.mirror {
            out.push((format!("spec.http[{i}].mirror"), m));
        }
        for (j, m) in r.mirrors.iter().enumerate() {
            out.push((
                format!("spec.http[{i}].mirrors[{j}].destination"),
                &m.destination,
            ));
        }
    }
    for (i, r) in spec.tcp.iter().enumerate() {
        for (j, d) in r.route.iter().enumerate() {
            out.push((
                format!("spec.tcp[{i}].route[{j}].destination"),
                &d.destination,
            ));
        }
    }
    for (i, r) in spec.tls.iter().enumerate() {
        for (j, d) in r.route.iter().enumerate() {
            out.push((
                format!("spec.tls[{i}].route[{j}].destination"),
                &d.destination,
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DR: &str = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
";
    const VS: &str = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v2}
";

    #[test]
    fn bad_file_keeps_last_good_version() {
        let mut store = ConfigStore::new("cluster.local", "istio-system");
        store.upsert("dr.yaml", DR);
        store.upsert("vs.yaml", VS);
        let s = store.snapshot();
        assert_eq!(s.config.virtual_services.len(), 1);
        store.upsert("vs.yaml", "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec: {hosts: [reviews], htp: []}\n");
        let s = store.snapshot();
        assert_eq!(
            s.config.virtual_services.len(),
            1,
            "last good version still serves"
        );
        let status = store.status();
        let vs = status
            .iter()
            .find(|f| f.file == "vs.yaml")
            .expect("vs.yaml");
        assert!(!vs.accepted);
        assert!(
            vs.errors[0].contains("unknown field `htp`"),
            "{:?}",
            vs.errors
        );
    }

    #[test]
    fn undefined_subset_rejects_the_referring_file_until_defined() {
        let mut store = ConfigStore::new("cluster.local", "istio-system");
        store.upsert("vs.yaml", VS);
        let s = store.snapshot();
        assert!(s.config.virtual_services.is_empty());
        let err = store.errors()[0].to_string();
        assert!(
            err.contains("VirtualService default/reviews: spec.http[0].route[0].destination.subset: subset \"v2\" is not defined by any DestinationRule for host reviews.default.svc.cluster.local"),
            "{err}"
        );
        store.upsert("dr.yaml", DR);
        let s = store.snapshot();
        assert_eq!(s.config.virtual_services.len(), 1);
        assert!(store.errors().is_empty());
    }

    #[test]
    fn duplicate_objects_across_files() {
        let mut store = ConfigStore::new("cluster.local", "istio-system");
        store.upsert("a.yaml", DR);
        store.upsert("b.yaml", DR);
        let s = store.snapshot();
        assert_eq!(s.config.destination_rules.len(), 1);
        let err = store.errors()[0].to_string();
        assert!(err.starts_with("b.yaml: document 1: DestinationRule default/reviews: metadata.name: DestinationRule default/reviews is already defined in a.yaml: document 1"), "{err}");
    }
}
