//! A file a run writes at its end (`--out`), claimed before any work starts.
//!
//! Claiming creates a temporary file beside the target, so a directory that takes no
//! files, a missing directory or a target that is a directory fails the run before a
//! single task (exit 2), not after an hour of work. The result is written into the
//! temporary file and renamed over the target only once it is whole: a full disk or
//! a failed run leaves the target as it was (absent, or the old file), never a
//! truncated file with a valid header. The temporary file is removed unless renamed.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

pub struct OutFile {
    target: PathBuf,
    /// `.NAME.procpool-PID.tmp` in the target's directory; `None` once renamed.
    temp: Option<PathBuf>,
}

impl OutFile {
    /// Claims `target` for writing at the end of the run.
    pub fn claim(target: &Path) -> Result<OutFile> {
        let shown = target.display();
        if target.is_dir() {
            bail!("--out {shown} is a directory; name a file");
        }
        let Some(name) = target.file_name() else {
            bail!("--out {shown} names no file");
        };
        let dir = match target.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(".procpool-{}.tmp", std::process::id()));
        let temp = dir.join(temp_name);
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .with_context(|| format!("--out {shown}: cannot create a file in {}", dir.display()))?;
        Ok(OutFile {
            target: target.to_path_buf(),
            temp: Some(temp),
        })
    }

    /// Where to write the result before [`commit`](OutFile::commit).
    pub fn temp_path(&self) -> &Path {
        self.temp.as_deref().expect("not yet committed")
    }

    /// The result in the temporary file is whole: it becomes the target.
    pub fn commit(mut self) -> Result<()> {
        let temp = self.temp.take().expect("committed once");
        fs::rename(&temp, &self.target).with_context(|| {
            let _ = fs::remove_file(&temp);
            format!("renaming the finished file to {}", self.target.display())
        })
    }
}

impl Drop for OutFile {
    fn drop(&mut self) {
        if let Some(temp) = self.temp.take() {
            let _ = fs::remove_file(temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_committed_file_replaces_the_target_and_an_abandoned_one_leaves_it() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("c.npy");
        fs::write(&target, "old").unwrap();
        let abandoned = OutFile::claim(&target).unwrap();
        fs::write(abandoned.temp_path(), "half").unwrap();
        drop(abandoned);
        assert_eq!(fs::read_to_string(&target).unwrap(), "old");
        let out = OutFile::claim(&target).unwrap();
        fs::write(out.temp_path(), "new").unwrap();
        out.commit().unwrap();
        assert_eq!(fs::read_to_string(&target).unwrap(), "new");
        let left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file left: {left:?}");
    }

    #[test]
    fn a_directory_or_a_missing_one_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let err = OutFile::claim(dir.path()).err().unwrap().to_string();
        assert!(err.contains("is a directory"), "{err}");
        let missing = dir.path().join("no/such/dir/c.npy");
        let err = format!("{:#}", OutFile::claim(&missing).err().unwrap());
        assert!(err.contains("cannot create a file in"), "{err}");
    }
}
