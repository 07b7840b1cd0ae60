//! `keelctl validate` on real directories: pilot's messages, exit status.

use std::path::Path;
use std::process::Command;

fn keelctl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_keelctl"))
        .args(args)
        .output()
        .expect("keelctl runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn testdata(dir: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../pilot/tests/testdata")
        .join(dir)
}

#[test]
fn a_valid_directory_passes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let case = "sidecar-canary.yaml";
    std::fs::copy(testdata("golden").join(case), dir.path().join(case)).expect("copy");
    let path = dir.path().display().to_string();
    let (code, out, err) = keelctl(&["validate", &path]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("1 file, no errors"), "{out}");
}

#[test]
fn errors_are_pilots_own_messages_and_exit_1() {
    // Every invalid case pilot's tests keep, each with its expected lines.
    let invalid = testdata("invalid");
    let mut checked = 0;
    for entry in std::fs::read_dir(&invalid).expect("testdata/invalid") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let name = path.file_name().expect("name");
        std::fs::copy(&path, dir.path().join(name)).expect("copy");
        let (code, out, err) = keelctl(&["validate", &dir.path().display().to_string()]);
        assert_eq!(code, 1, "{name:?} passed: {out}");
        let expected = std::fs::read_to_string(path.with_extension("expected")).expect("expected");
        let got: Vec<&str> = err.lines().collect();
        let want: Vec<&str> = expected.lines().collect();
        assert_eq!(got, want, "{name:?}");
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} invalid cases");
}

#[test]
fn a_missing_directory_is_an_error_naming_it() {
    let (code, _, err) = keelctl(&["validate", "/nonexistent/keel-config"]);
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent/keel-config"), "{err}");
}
