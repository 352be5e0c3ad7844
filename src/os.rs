//! Whether a file the daemon trusts (config, profiles, token files, the signing key) could have
//! been written by someone else. The daemon refuses to start on any such file, naming it.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

const STICKY: u32 = 0o1000;

/// This process's effective uid: the owner of `/proc/self` (no `unsafe` libc call needed).
pub fn effective_uid() -> u32 {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX)
}

fn dir_is_safe(dir: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mode = meta.permissions().mode();
    if mode & 0o022 != 0 && mode & STICKY == 0 {
        return Err(format!(
            "{} can be changed by group or others",
            dir.display()
        ));
    }
    let me = crate::os::effective_uid();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(format!("{} belongs to uid {}", dir.display(), meta.uid()));
    }
    Ok(())
}

/// The real path of `path` if it is a regular file that only root or the daemon's user can
/// write (the file itself; the callers check the directories).
fn safe_regular_file(path: &Path, what: &str) -> Result<std::path::PathBuf, String> {
    let shown = path.display();
    let real = std::fs::canonicalize(path).map_err(|e| format!("{what} {shown}: {e}"))?;
    let meta = std::fs::metadata(&real).map_err(|e| format!("{what} {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{what} {shown} is not a regular file"));
    }
    if meta.permissions().mode() & 0o022 != 0 {
        return Err(format!(
            "{what} {shown} is writable by group or others; run chmod go-w on it"
        ));
    }
    let me = crate::os::effective_uid();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(format!(
            "{what} {shown} belongs to uid {}; it must belong to root or to the daemon's user (uid {me})",
            meta.uid()
        ));
    }
    Ok(real)
}

/// Refuses `path` (described as `what`) if it, its directory, or (for a symlink) the link's
/// directory or its target's directory can be written by anyone but root and the daemon's user.
pub fn trusted_file(path: &Path, what: &str) -> Result<(), String> {
    let shown = path.display();
    let real = safe_regular_file(path, what)?;
    let mut dirs = vec![real.parent().map(Path::to_path_buf)];
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        dirs.push(
            std::path::absolute(path)
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf)),
        );
    }
    for dir in dirs.into_iter().flatten() {
        dir_is_safe(&dir).map_err(|why| format!("{what} {shown} is not safe: {why}"))?;
    }
    Ok(())
}

/// The whole environment of every helper the daemon runs (`[audit] checkpoint_command`,
/// `[notify] command`): never the daemon's own, which may hold the base credentials.
pub const HELPER_ENV: [(&str, &str); 2] = [
    ("PATH", "/usr/local/bin:/usr/bin:/bin"),
    ("LANG", "C.UTF-8"),
];

/// A helper's command: `argv` with [`HELPER_ENV`] as its whole environment, run in `/`, with
/// stdin piped and its output discarded. The one place that decides what a helper inherits.
pub fn helper_command(program: &str, args: &[String]) -> std::process::Command {
    let mut c = std::process::Command::new(program);
    c.args(args)
        .env_clear()
        .envs(HELPER_ENV)
        .current_dir("/")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    c
}

/// Resolves a helper program (a bare name is looked up in [`HELPER_ENV`]'s PATH, like the
/// helper itself would be) and refuses it, naming it, if the program or any directory above it
/// could be changed by anyone but root and the daemon's user: the helper runs as the daemon's
/// uid, which can read the signing key and write the approval store. Returns the absolute path
/// that was checked, which is the one to run.
/// [`trusted_program`] for a whole helper argv: the program, the interpreter its `#!` line
/// names, and every argument that names an existing file (`["python3", "/opt/ship.py"]`: the
/// script is code run as the daemon's uid too). Returns the program's checked path.
pub fn trusted_helper(argv: &[String], what: &str) -> Result<std::path::PathBuf, String> {
    let Some((program, args)) = argv.split_first() else {
        return Err(format!("{what} is empty"));
    };
    let real = trusted_program(program, what)?;
    if let Ok(head) = std::fs::read(&real).map(|b| b.into_iter().take(256).collect::<Vec<u8>>())
        && let Some(line) = head.strip_prefix(b"#!")
    {
        let line = String::from_utf8_lossy(line);
        if let Some(interp) = line
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().next())
        {
            trusted_program(interp, &format!("{what} interpreter"))?;
        }
    }
    for a in args {
        let p = Path::new(a);
        if p.is_absolute() && p.is_file() {
            trusted_program(a, &format!("{what} argument"))?;
        }
    }
    Ok(real)
}

pub fn trusted_program(program: &str, what: &str) -> Result<std::path::PathBuf, String> {
    let path = if program.contains('/') {
        std::path::PathBuf::from(program)
    } else {
        HELPER_ENV[0]
            .1
            .split(':')
            .map(|d| Path::new(d).join(program))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                format!(
                    "{what} {program:?} is not in {} (give an absolute path)",
                    HELPER_ENV[0].1
                )
            })?
    };
    let shown = path.display();
    let real = safe_regular_file(&path, what)?;
    // Every directory above the program (and above the link, for a symlink), up to the root.
    let mut dirs: Vec<&Path> = real.ancestors().skip(1).collect();
    let link = std::path::absolute(&path).unwrap_or_else(|_| path.clone());
    if link != real {
        dirs.extend(link.ancestors().skip(1));
    }
    for dir in dirs {
        dir_is_safe(dir).map_err(|why| format!("{what} {shown} is not safe: {why}"))?;
    }
    Ok(real)
}

/// Creates `dir` (and missing parents) with mode 0700 whatever the umask; an existing
/// directory is left as it is.
pub fn create_private_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.exists() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("cannot chmod {}: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn private() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        d
    }

    #[test]
    fn refusals_name_the_file() {
        let d = private();
        let f = d.path().join("broker.toml");
        std::fs::write(&f, "x").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(trusted_file(&f, "config").is_ok());
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o664)).unwrap();
        assert_eq!(
            trusted_file(&f, "config").unwrap_err(),
            format!(
                "config {} is writable by group or others; run chmod go-w on it",
                f.display()
            )
        );
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        // A symlink into a directory others can write.
        let open = tempfile::tempdir().unwrap();
        std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let target = open.path().join("evil.toml");
        std::fs::write(&target, "x").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        let link = d.path().join("profile.toml");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = trusted_file(&link, "profile").unwrap_err();
        assert!(
            e.starts_with(&format!("profile {} is not safe: ", link.display())),
            "{e}"
        );
        assert!(e.ends_with("can be changed by group or others"), "{e}");
        // A sticky, world-writable directory (like /tmp) is fine: nobody else can replace files.
        std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(trusted_file(&link, "profile").is_ok());
    }

    #[test]
    fn helper_programs_are_checked_up_to_the_root() {
        // A system program, by name and by path, resolves to its real path.
        let sh = trusted_program("sh", "notify command").unwrap();
        assert!(sh.is_absolute(), "{sh:?}");
        assert!(trusted_program("/bin/sh", "notify command").is_ok());
        assert_eq!(
            trusted_program("no-such-helper-xyz", "notify command").unwrap_err(),
            "notify command \"no-such-helper-xyz\" is not in /usr/local/bin:/usr/bin:/bin (give an absolute path)"
        );
        // A program two levels below a directory others can write: refused, naming it.
        let open = tempfile::tempdir().unwrap();
        std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let inner = open.path().join("bin");
        std::fs::create_dir(&inner).unwrap();
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o755)).unwrap();
        let prog = inner.join("ship");
        std::fs::write(&prog, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = trusted_program(prog.to_str().unwrap(), "checkpoint command").unwrap_err();
        assert_eq!(
            e,
            format!(
                "checkpoint command {} is not safe: {} can be changed by group or others",
                prog.display(),
                open.path().display()
            )
        );
        // Private all the way up: accepted. The program itself group-writable: refused.
        std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            trusted_program(prog.to_str().unwrap(), "x").unwrap(),
            prog.canonicalize().unwrap()
        );
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o775)).unwrap();
        assert!(
            trusted_program(prog.to_str().unwrap(), "x")
                .unwrap_err()
                .ends_with("is writable by group or others; run chmod go-w on it")
        );
    }
}
