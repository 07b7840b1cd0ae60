//! `keelctl validate DIR`: keel-pilot's own loading and validation of a
//! config directory (the same code, so the same messages), without serving
//! anything.

use std::path::Path;
use std::process::ExitCode;

use keel_pilot::model::store::ConfigStore;
use keel_pilot::source::file::FileSource;

/// What validating a directory found.
#[derive(Debug)]
pub struct Report {
    /// Files read.
    pub files: usize,
    /// Every error, one line each, as pilot logs them.
    pub errors: Vec<String>,
}

/// Loads `dir` as pilot does (every file, then the cross-object checks of
/// a snapshot) and collects the errors.
pub fn check(dir: &Path, domain_suffix: &str, root_namespace: &str) -> anyhow::Result<Report> {
    let mut store = ConfigStore::new(domain_suffix, root_namespace);
    FileSource::new(dir).sync(&mut store)?;
    store.snapshot();
    Ok(Report {
        files: store.files().count(),
        errors: store.errors().iter().map(ToString::to_string).collect(),
    })
}

/// Runs the command: errors on stderr, a summary on stdout.
pub fn run(dir: &Path, domain_suffix: &str, root_namespace: &str) -> ExitCode {
    match check(dir, domain_suffix, root_namespace) {
        Ok(r) if r.errors.is_empty() => {
            println!(
                "{}: {} file{}, no errors",
                dir.display(),
                r.files,
                if r.files == 1 { "" } else { "s" }
            );
            ExitCode::SUCCESS
        }
        Ok(r) => {
            for e in &r.errors {
                eprintln!("{e}");
            }
            println!(
                "{}: {} file{}, {} error{}",
                dir.display(),
                r.files,
                if r.files == 1 { "" } else { "s" },
                r.errors.len(),
                if r.errors.len() == 1 { "" } else { "s" }
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("keelctl validate: {e:#}");
            ExitCode::FAILURE
        }
    }
}
