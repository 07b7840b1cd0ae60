//! Files in the state directory, written atomically (a temporary file
//! renamed into place), private keys readable by the owner only.

use std::io::Write as _;
use std::path::Path;

use crate::ca::CaError;

/// Writes a private key (mode 0600).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), CaError> {
    write(path, bytes, 0o600)
}

/// Writes a certificate (mode 0644).
pub fn write_public(path: &Path, bytes: &[u8]) -> Result<(), CaError> {
    write(path, bytes, 0o644)
}

fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CaError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let io = |source| CaError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io)
}
