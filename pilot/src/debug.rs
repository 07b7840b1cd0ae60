//! The monitoring and debug HTTP server (Istio's 15014): `/metrics`,
//! `/ready`, `/debug/syncz`, `/debug/configz` and
//! `/debug/config_dump?proxyID=…`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use keel_proto::any::{CLUSTER, ENDPOINT, LISTENER, ROUTE};
use keel_proto::envoy::admin::v3::{
    ClustersConfigDump, ConfigDump, EndpointsConfigDump, ListenersConfigDump, RoutesConfigDump,
    clusters_config_dump::DynamicCluster,
    endpoints_config_dump::DynamicEndpointConfig,
    listeners_config_dump::{DynamicListener, DynamicListenerState},
    routes_config_dump::DynamicRouteConfig,
};
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::model::store::{ConfigStore, Snapshot};
use crate::xds::Generator;
use crate::xds::ads::AdsServer;
use crate::xds::generator::KeelGenerator;

/// What the debug endpoints read.
pub struct DebugState {
    /// Pilot's metrics.
    pub metrics: Arc<Metrics>,
    /// The config store (file status and errors).
    pub store: Arc<Mutex<ConfigStore>>,
    /// The snapshot being served.
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    /// The ADS server (connected clients).
    pub ads: AdsServer<KeelGenerator>,
    /// The generator, to render a client's resources.
    pub generator: Arc<KeelGenerator>,
}

/// The HTTP routes.
pub fn router(state: Arc<DebugState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/ready", get(ready))
        .route("/debug/syncz", get(syncz))
        .route("/debug/configz", get(configz))
        .route("/debug/config_dump", get(config_dump))
        .with_state(state)
}

async fn metrics(State(s): State<Arc<DebugState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.encode(),
    )
        .into_response()
}

async fn ready() -> &'static str {
    // Pilot binds its listeners only after the first snapshot is built.
    "ready\n"
}

async fn syncz(State(s): State<Arc<DebugState>>) -> Response {
    axum::Json(s.ads.clients()).into_response()
}

async fn configz(State(s): State<Arc<DebugState>>) -> Response {
    let snapshot = s.snapshots.borrow().clone();
    let files = {
        let store = s.store.lock().unwrap_or_else(|e| e.into_inner());
        store.status()
    };
    let c = &snapshot.config;
    let mut resources: Vec<serde_json::Value> = Vec::new();
    macro_rules! push {
        ($($field:ident),+) => {$(
            for o in &c.$field {
                resources.push(serde_json::to_value(o.as_ref()).unwrap_or_else(|e| serde_json::json!({"error": e.to_string()})));
            }
        )+};
    }
    push!(
        virtual_services,
        destination_rules,
        gateways,
        service_entries,
        workload_entries,
        sidecars,
        peer_authentications,
        authorization_policies,
        request_authentications,
        services,
        pods,
        namespaces,
        endpoint_slices
    );
    axum::Json(serde_json::json!({
        "generation": snapshot.generation,
        "files": files,
        "resources": resources,
        "services": snapshot.registry.services.values().collect::<Vec<_>>(),
    }))
    .into_response()
}

async fn config_dump(
    State(s): State<Arc<DebugState>>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let Some(id) = q.get("proxyID") else {
        return (
            StatusCode::BAD_REQUEST,
            "missing query parameter proxyID (a connected client's node id, see /debug/syncz)\n",
        )
            .into_response();
    };
    let Some(node) = s.ads.node(id) else {
        return (
            StatusCode::NOT_FOUND,
            format!(
                "no connected client has node id {id:?}; see /debug/syncz for connected clients\n"
            ),
        )
            .into_response();
    };
    let snapshot = s.snapshots.borrow().clone();
    let generate = |t: &str| s.generator.generate(&snapshot, &node, t, None);
    let dump = ConfigDump {
        configs: vec![
            keel_proto::any::pack(&ClustersConfigDump {
                version_info: snapshot.generation.to_string(),
                dynamic_active_clusters: generate(CLUSTER)
                    .into_values()
                    .map(|r| DynamicCluster {
                        version_info: r.version,
                        cluster: Some(Arc::unwrap_or_clone(r.any)),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
            keel_proto::any::pack(&ListenersConfigDump {
                version_info: snapshot.generation.to_string(),
                dynamic_listeners: generate(LISTENER)
                    .into_values()
                    .map(|r| DynamicListener {
                        name: r.name,
                        active_state: Some(DynamicListenerState {
                            version_info: r.version,
                            listener: Some(Arc::unwrap_or_clone(r.any)),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
            keel_proto::any::pack(&RoutesConfigDump {
                dynamic_route_configs: generate(ROUTE)
                    .into_values()
                    .map(|r| DynamicRouteConfig {
                        version_info: r.version,
                        route_config: Some(Arc::unwrap_or_clone(r.any)),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
            keel_proto::any::pack(&EndpointsConfigDump {
                dynamic_endpoint_configs: generate(ENDPOINT)
                    .into_values()
                    .map(|r| DynamicEndpointConfig {
                        version_info: r.version,
                        endpoint_config: Some(Arc::unwrap_or_clone(r.any)),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
        ],
    };
    match keel_proto::json::to_json(&dump) {
        Ok(json) => axum::Json(json).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}
