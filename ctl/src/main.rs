//! keelctl: the operator's command line.
//!
//! - `keelctl up`: the whole mesh on this machine (keel-pilot, and every
//!   Pod of the config as keel-echo plus its keel-proxy sidecar), until
//!   Ctrl-C.
//! - `keelctl validate DIR`: the validation keel-pilot applies to a config
//!   directory, with the same messages; exit status 1 on any error.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod up;
mod validate;

/// Keel's command line.
#[derive(Debug, Parser)]
#[command(name = "keelctl", version, about = "Keel's command line")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the whole mesh on this machine, no Kubernetes and no root:
    /// keel-pilot on the config directory, and each Pod in it (its
    /// `status.podIP` a loopback address) as a keel-echo app with its own
    /// keel-proxy sidecar. Prints what runs where and a `curl` through the
    /// mesh; Ctrl-C stops everything.
    Up {
        /// The config directory: Istio and Kubernetes YAML, as keel-pilot
        /// reads it.
        #[arg(long, default_value = "examples/bookinfo")]
        config_dir: PathBuf,
    },
    /// Checks a directory of Istio/Kubernetes YAML as keel-pilot would
    /// load it: prints every error (file, document, object, field path,
    /// reason) and exits 1 if there is any.
    Validate {
        /// The config directory (read recursively: *.yaml, *.yml, *.json).
        dir: PathBuf,
        /// The cluster domain suffix (keel-pilot's `--domain-suffix`).
        #[arg(long, default_value = "cluster.local")]
        domain_suffix: String,
        /// The mesh root namespace (keel-pilot's `--root-namespace`).
        #[arg(long, default_value = "istio-system")]
        root_namespace: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Up { config_dir } => up::run(&config_dir),
        Command::Validate {
            dir,
            domain_suffix,
            root_namespace,
        } => validate::run(&dir, &domain_suffix, &root_namespace),
    }
}
