//! Finding and reading profile files: a profile by name in a directory, the files `profiles
//! check` is given, and one file read and parsed.

use std::fs;
use std::path::{Path, PathBuf};

use super::{MAX_PROFILE_BYTES, Profile, ProfileError, ProfileName, parse};
use crate::diag::Diagnostic;

/// The path of profile `name` in `dir`. The name is validated first, so it cannot escape `dir`.
pub fn locate(dir: &Path, name: &str) -> Result<PathBuf, ProfileError> {
    ProfileName::parse(name).map_err(ProfileError::BadName)?;
    let path = dir.join(format!("{name}.toml"));
    if path.is_file() {
        return Ok(path);
    }
    let stems: Vec<String> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".toml"))
                .map(str::to_owned)
        })
        .collect();
    let hint = crate::suggest::closest(name, stems.iter().map(String::as_str))
        .map(|c| format!("; did you mean {c:?}?"))
        .unwrap_or_default();
    Err(ProfileError::NotFound {
        name: name.to_owned(),
        dir: dir.to_owned(),
        hint,
    })
}

/// Expands the paths given to `profiles check`: directories to their `*.toml` files (sorted),
/// files as they are.
pub fn discover(paths: &[PathBuf]) -> Result<Vec<PathBuf>, ProfileError> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let entries = fs::read_dir(p).map_err(|e| ProfileError::Io {
                path: p.clone(),
                source: e,
            })?;
            let mut found = Vec::new();
            for e in entries {
                let e = e.map_err(|e| ProfileError::Io {
                    path: p.clone(),
                    source: e,
                })?;
                let path = e.path();
                if path.extension().is_some_and(|x| x == "toml") && path.is_file() {
                    found.push(path);
                }
            }
            if found.is_empty() {
                return Err(ProfileError::EmptyDir(p.clone()));
            }
            found.sort();
            out.extend(found);
        } else if p.is_file() {
            out.push(p.clone());
        } else if !p.exists() {
            return Err(ProfileError::Io {
                path: p.clone(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        } else {
            return Err(ProfileError::NotAProfilePath(p.clone()));
        }
    }
    Ok(out)
}

/// Reads and parses one profile file; its name is the file stem.
pub fn load(path: &Path) -> Result<Profile, ProfileError> {
    let label = path.display().to_string();
    let meta = fs::metadata(path).map_err(|e| ProfileError::Io {
        path: path.into(),
        source: e,
    })?;
    if meta.len() > MAX_PROFILE_BYTES as u64 {
        return Err(ProfileError::Invalid(vec![Diagnostic::whole_file(
            &label,
            format!(
                "the file is {} bytes; profiles are limited to {MAX_PROFILE_BYTES}",
                meta.len()
            ),
        )]));
    }
    let bytes = fs::read(path).map_err(|e| ProfileError::Io {
        path: path.into(),
        source: e,
    })?;
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    parse(&label, &stem, &bytes).map_err(ProfileError::Invalid)
}
