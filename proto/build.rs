//! Compiles Keel's own `.proto` files with protox (a pure-Rust protobuf
//! compiler), so building Keel never needs a system `protoc`, and locates
//! the Envoy descriptor set that `envoy-types` ships, so xDS resources can be
//! rendered as canonical protobuf JSON (config dumps).

use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/istio/v1/auth/ca.proto",
        "proto/keel/echo/v1/echo.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;

    let out = PathBuf::from(std::env::var("OUT_DIR")?).join("envoy_descriptors.bin");
    match find_envoy_descriptors() {
        Some(path) => {
            println!("cargo:rerun-if-changed={}", path.display());
            std::fs::copy(&path, &out)?;
        }
        None => {
            println!(
                "cargo:warning=envoy-types' descriptor set (src/generated/types.bin) was not found; config dumps will carry raw bytes instead of JSON"
            );
            std::fs::write(&out, [])?;
        }
    }
    Ok(())
}

/// Finds `envoy-types-<version>/src/generated/types.bin` in cargo's registry
/// sources or a `vendor/` directory, for the version in Cargo.lock.
fn find_envoy_descriptors() -> Option<PathBuf> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").ok()?);
    let workspace = manifest.parent()?;
    let lock = std::fs::read_to_string(workspace.join("Cargo.lock")).ok()?;
    let version = lock
        .split("[[package]]")
        .find(|p| p.contains("name = \"envoy-types\""))?
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))?
        .trim_end_matches('"')
        .to_string();
    let dir_name = format!("envoy-types-{version}");
    let rel = Path::new("src/generated/types.bin");
    let vendored = workspace.join("vendor/envoy-types").join(rel);
    if vendored.exists() {
        return Some(vendored);
    }
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    let registries = std::fs::read_dir(cargo_home.join("registry/src")).ok()?;
    registries
        .flatten()
        .map(|r| r.path().join(&dir_name).join(rel))
        .find(|p| p.exists())
}
