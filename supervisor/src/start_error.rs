//! Why a worker program could not be executed, in words that say what to fix.
//!
//! exec's errors mislead: a script whose `#!` interpreter is missing fails with
//! "No such file or directory" although the script is right there, and a file without
//! its execute bit says only "Permission denied".

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// `err`, from executing `program`, with what to fix appended where the OS error alone
/// would mislead: not executable, a missing `#!` interpreter, not on `PATH`, a
/// directory, not a program at all. Other errors come back unchanged.
pub fn explain_start_error(program: &OsStr, err: io::Error) -> io::Error {
    match diagnose(program, &err) {
        Some(hint) => io::Error::new(err.kind(), format!("{err}: {hint}")),
        None => err,
    }
}

/// `err`, from creating a worker process (by `fork` or to execute a program), with
/// what to do appended when it is EAGAIN: the kernel's word for a limit on processes,
/// which its text ("Resource temporarily unavailable") does not name.
pub(crate) fn explain_process_limit(err: io::Error) -> io::Error {
    if err.raw_os_error() != Some(libc::EAGAIN) {
        return err;
    }
    io::Error::new(
        err.kind(),
        format!(
            "{err}: a limit on processes is reached (`ulimit -u`, a cgroup's pids.max, \
             kernel.pid_max or kernel.threads-max); run fewer --procs or raise the limit"
        ),
    )
}

fn diagnose(program: &OsStr, err: &io::Error) -> Option<String> {
    let name = program.to_string_lossy();
    let has_slash = program.as_bytes().contains(&b'/');
    let path = if has_slash {
        Some(PathBuf::from(program)).filter(|path| path.exists())
    } else {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(program))
                .find(|candidate| candidate.is_file())
        })
    };
    let Some(path) = path else {
        // A missing path is what the OS error says already; a bare name needs PATH.
        return (!has_slash).then(|| format!("{name} is not a command on PATH"));
    };
    let shown = path.display();
    if path.is_dir() {
        return Some(format!("{shown} is a directory, not a program"));
    }
    let executable = std::fs::metadata(&path).is_ok_and(|m| m.permissions().mode() & 0o111 != 0);
    if err.kind() == io::ErrorKind::PermissionDenied && !executable {
        return Some(format!(
            "{shown} is not executable: `chmod +x {shown}`, or name its interpreter (--child 'python3 {shown}')"
        ));
    }
    match shebang_interpreter(&path) {
        Some(interpreter)
            if err.kind() == io::ErrorKind::NotFound && !Path::new(&interpreter).exists() =>
        {
            Some(format!(
                "{shown} exists, but the interpreter on its #! line, {interpreter}, does not; fix the #! line or name the interpreter (--child 'python3 {shown}')"
            ))
        }
        None if err.raw_os_error() == Some(libc::ENOEXEC) => Some(format!(
            "{shown} is not a program this system can execute (no #! line?)"
        )),
        _ => None,
    }
}

/// The interpreter named on a script's `#!` line.
fn shebang_interpreter(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut head = [0u8; 256];
    let read = std::fs::File::open(path)
        .and_then(|mut file| file.read(&mut head))
        .ok()?;
    let line = head[..read].strip_prefix(b"#!")?;
    let line = line.split(|&b| b == b'\n').next().unwrap_or_default();
    Some(
        String::from_utf8_lossy(line)
            .split_whitespace()
            .next()?
            .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn explain(program: &Path, kind: io::ErrorKind) -> String {
        explain_start_error(program.as_os_str(), io::Error::from(kind)).to_string()
    }

    #[test]
    fn a_refused_fork_names_the_process_limits() {
        let limit = explain_process_limit(io::Error::from_raw_os_error(libc::EAGAIN));
        assert_eq!(limit.raw_os_error(), None, "the text is new");
        let text = limit.to_string();
        assert!(
            text.starts_with("Resource temporarily unavailable"),
            "{text}"
        );
        assert!(text.contains("pids.max"), "{text}");
        let other = explain_process_limit(io::Error::from_raw_os_error(libc::ENOMEM));
        assert_eq!(other.raw_os_error(), Some(libc::ENOMEM));
    }

    #[test]
    fn names_what_to_fix() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("w.py");
        std::fs::write(&script, "#!/no/such/python9\n").unwrap();
        assert!(explain(&script, io::ErrorKind::NotFound)
            .contains("the interpreter on its #! line, /no/such/python9, does not"));
        assert!(explain(&script, io::ErrorKind::PermissionDenied).contains("is not executable"));
        assert!(explain(dir.path(), io::ErrorKind::PermissionDenied).contains("is a directory"));
        let missing = dir.path().join("missing");
        assert_eq!(
            explain(&missing, io::ErrorKind::NotFound),
            io::Error::from(io::ErrorKind::NotFound).to_string(),
            "the OS error says it all"
        );
        assert!(
            explain(Path::new("no-such-command-here"), io::ErrorKind::NotFound)
                .ends_with("no-such-command-here is not a command on PATH")
        );
    }
}
