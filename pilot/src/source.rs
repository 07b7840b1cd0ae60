//! Where config comes from. Today: a directory of YAML/JSON files, scanned
//! and watched ([`file`]). A Kubernetes source arrives with the Kubernetes
//! issue and will feed the same [`crate::model::store::ConfigStore`].

pub mod file;
