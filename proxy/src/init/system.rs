//! Applying rules to the real nat table with `iptables-save` and
//! `iptables-restore`, and the privilege checks that explain failures.

use super::*;

/// Reads and changes the nat table.
pub trait Netfilter {
    /// The nat table, as `iptables-save -t nat` prints it.
    fn save_nat(&mut self) -> Result<String, InitError>;
    /// Applies one `iptables-restore --noflush` batch, atomically.
    fn restore_nat(&mut self, input: &str) -> Result<(), InitError>;
}

/// The real nat table, through `iptables-save` and `iptables-restore` on
/// `PATH` (whichever backend, nft or legacy, they are).
#[derive(Debug, Default)]
pub struct SystemIptables {
    checked: bool,
}

impl SystemIptables {
    /// Both tools on `PATH` and `CAP_NET_ADMIN` in hand, checked once.
    fn preflight(&mut self) -> Result<(), InitError> {
        if self.checked {
            return Ok(());
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        for tool in ["iptables-save", "iptables-restore"] {
            if find_on_path(tool, &path).is_none() {
                return Err(InitError::MissingTool {
                    tool,
                    path: path.to_string_lossy().into_owned(),
                });
            }
        }
        if let Ok(status) = std::fs::read_to_string("/proc/self/status")
            && let Some(caps) = effective_caps(&status)
            && caps & (1 << CAP_NET_ADMIN) == 0
        {
            return Err(InitError::Privileges {
                detail: format!(
                    "this process (uid {}) has no CAP_NET_ADMIN in its effective capabilities \
                     ({caps:#x})",
                    own_uid(&status).unwrap_or_else(|| "?".into())
                ),
            });
        }
        self.checked = true;
        Ok(())
    }

    fn run(&mut self, tool: &'static str, args: &[&str], input: &str) -> Result<String, InitError> {
        self.preflight()?;
        let mut child = Command::new(tool)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| spawn_error(tool, source))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(input.as_bytes())
                .map_err(|source| InitError::Spawn { tool, source })?;
        }
        let out = child
            .wait_with_output()
            .map_err(|source| InitError::Spawn { tool, source })?;
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if !out.status.success() {
            if is_permission_error(&stderr) {
                // The legacy backend talks to the kernel over a raw socket.
                let raw = std::fs::read_to_string("/proc/self/status")
                    .ok()
                    .and_then(|s| effective_caps(&s))
                    .is_some_and(|caps| caps & (1 << CAP_NET_RAW) == 0);
                let hint = if raw {
                    " (this process also lacks CAP_NET_RAW, which the legacy iptables backend needs)"
                } else {
                    ""
                };
                return Err(InitError::Privileges {
                    detail: format!("{tool}: {}{hint}", first_line(&stderr)),
                });
            }
            return Err(InitError::Iptables {
                tool,
                status: out.status.to_string(),
                stderr,
                input: input.to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Netfilter for SystemIptables {
    fn save_nat(&mut self) -> Result<String, InitError> {
        self.run("iptables-save", &["-t", "nat"], "")
    }

    fn restore_nat(&mut self, input: &str) -> Result<(), InitError> {
        self.run("iptables-restore", &["--noflush", "--wait=10"], input)
            .map(drop)
    }
}

/// `CAP_NET_ADMIN`'s bit in the capability sets.
pub(super) const CAP_NET_ADMIN: u32 = 12;
/// `CAP_NET_RAW`'s bit.
pub(super) const CAP_NET_RAW: u32 = 13;

/// The effective capability set from `/proc/self/status`.
pub(super) fn effective_caps(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// The effective uid from `/proc/self/status`.
pub(super) fn own_uid(status: &str) -> Option<String> {
    let uids = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    uids.split_whitespace().nth(1).map(str::to_string)
}

pub(super) fn is_permission_error(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    s.contains("permission denied") || s.contains("operation not permitted")
}

pub(super) fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

pub(super) fn spawn_error(tool: &'static str, source: io::Error) -> InitError {
    if source.kind() == io::ErrorKind::NotFound {
        InitError::MissingTool {
            tool,
            path: std::env::var("PATH").unwrap_or_default(),
        }
    } else if source.kind() == io::ErrorKind::PermissionDenied {
        InitError::Privileges {
            detail: format!("{tool}: {source}"),
        }
    } else {
        InitError::Spawn { tool, source }
    }
}

pub(super) fn find_on_path(tool: &str, path: &std::ffi::OsStr) -> Option<PathBuf> {
    std::env::split_paths(path)
        .map(|dir| dir.join(tool))
        .find(|p| is_executable(p))
}

pub(super) fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
