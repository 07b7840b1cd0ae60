//! Istio's `security.istio.io/v1` kinds: PeerAuthentication (mTLS mode of
//! workloads), RequestAuthentication (JWT validation) and AuthorizationPolicy
//! (allow/deny/audit/custom rules), with each spec's semantic validation.
//!
//! Types only: no I/O, no knowledge of xDS or certificates.

pub mod authentication;
pub mod authorization;

use serde::{Deserialize, Serialize};

pub use crate::model::networking::LabelSelector;
pub use authentication::*;
pub use authorization::*;

use crate::model::validate::{Errors, check_labels};

/// A reference to the resource (a Gateway or Service) a policy attaches to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyTargetReference {
    /// API group of the target (`gateway.networking.k8s.io`, `""` for core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Kind of the target (`Gateway`, `Service`, `ServiceEntry`).
    pub kind: String,
    /// Name of the target.
    pub name: String,
    /// Must be the policy's own namespace when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Records errors shared by policies that select workloads: the selector's
/// labels, and that `selector`, `targetRef` and `targetRefs` are exclusive.
fn check_policy_target(
    errs: &mut Errors,
    selector: &Option<LabelSelector>,
    target_ref: &Option<PolicyTargetReference>,
    target_refs: &[PolicyTargetReference],
) {
    if let Some(sel) = selector {
        check_labels(errs, "spec.selector.matchLabels", &sel.match_labels);
        for k in sel.match_labels.keys() {
            if k.contains('*') {
                errs.at(
                    format!("spec.selector.matchLabels.{k}"),
                    "wildcards are not allowed in label keys",
                );
            }
        }
    }
    let set = [
        selector.is_some(),
        target_ref.is_some(),
        !target_refs.is_empty(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if set > 1 {
        errs.at(
            "spec",
            "only one of selector, targetRef or targetRefs may be set",
        );
    }
    let refs = target_ref
        .iter()
        .map(|r| ("spec.targetRef".to_string(), r))
        .chain(
            target_refs
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("spec.targetRefs[{i}]"), r)),
        );
    for (p, r) in refs {
        if r.kind.is_empty() {
            errs.at(format!("{p}.kind"), "kind is required");
        }
        if r.name.is_empty() {
            errs.at(format!("{p}.name"), "name is required");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
