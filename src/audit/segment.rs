//! The log directory and its segment files (`audit-000001.jsonl`, ...).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::AuditError;

pub fn segment_name(n: u32) -> String {
    format!("audit-{n:06}.jsonl")
}

/// The segments of a log directory, in order.
pub fn segments(dir: &Path) -> std::io::Result<Vec<(u32, PathBuf)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        let Some(n) = name
            .to_str()
            .and_then(|s| s.strip_prefix("audit-"))
            .and_then(|s| s.strip_suffix(".jsonl"))
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        out.push((n, e.path()));
    }
    out.sort();
    Ok(out)
}

/// The directory must exist, be ours, and be private: the daemon refuses to start otherwise.
pub fn check_dir(dir: &Path) -> Result<(), AuditError> {
    let err = |reason: String| AuditError::Open {
        path: dir.display().to_string(),
        reason,
    };
    let meta = std::fs::symlink_metadata(dir).map_err(|e| {
        err(format!(
            "{e}; create it with `mandate init` (mode 0700, owned by the daemon's user)"
        ))
    })?;
    if meta.file_type().is_symlink() || !meta.is_dir() {
        return Err(err("not a directory (symlinks are refused)".into()));
    }
    let me = crate::os::effective_uid();
    if meta.uid() != me {
        return Err(err(format!(
            "owned by uid {}, not by the daemon's uid {me}",
            meta.uid()
        )));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(err(format!(
            "mode {:o} lets others in; chmod 700 it",
            meta.permissions().mode() & 0o777
        )));
    }
    Ok(())
}

pub(super) fn open_append(path: &Path) -> std::io::Result<File> {
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(f)
}
