//! `run tasks --resume`: the output file of an earlier run of the same command says
//! which inputs already ended (each line names its input by `id`, the input's index
//! among the non-blank lines), so only the others run again, and no result is
//! written twice.
//!
//! The output is the record, not a separate log: a result is in the output or it is
//! not, so a run killed between writing a result and noting it elsewhere cannot
//! duplicate it. A last line cut short by the kill is dropped (that task runs again).
//!
//! Without `--ordered`, new results are appended. With `--ordered`, the earlier
//! output is in input order (an interrupted run writes what finished after a gap in
//! order too), so the old lines and the new results are merged, both ascending, into
//! a file beside the output that replaces it at the end ([`OutFile`]): a resumed run
//! killed in turn leaves the earlier output as it was.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::out_file::OutFile;

/// What an earlier run's output holds.
pub struct Previous {
    /// The ids (input indices) that already have a result line.
    pub done: HashSet<u64>,
    /// Bytes of whole lines; anything after is a line cut short.
    whole_len: u64,
}

/// Just the `id` of a result line.
#[derive(Deserialize)]
struct IdOnly {
    id: u64,
}

impl Previous {
    /// Reads the output `path` of an earlier run; a missing file is a run that wrote
    /// nothing yet.
    pub fn read(path: &Path) -> Result<Previous> {
        let mut done = HashSet::new();
        let mut whole_len = 0;
        let file = match File::open(path) {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Previous { done, whole_len })
            }
            Err(err) => {
                return Err(err).with_context(|| format!("--resume: reading {}", path.display()))
            }
        };
        let mut reader = BufReader::new(file);
        let mut line = Vec::new();
        for number in 1.. {
            line.clear();
            let read = reader
                .read_until(b'\n', &mut line)
                .with_context(|| format!("--resume: reading {}", path.display()))?;
            if read == 0 || line.last() != Some(&b'\n') {
                break;
            }
            let IdOnly { id } = serde_json::from_slice(&line).with_context(|| {
                format!(
                    "--resume: line {number} of {} is not a result line of procpool run tasks",
                    path.display()
                )
            })?;
            done.insert(id);
            whole_len += read as u64;
        }
        Ok(Previous { done, whole_len })
    }

    /// The output opened to append new results after the whole lines.
    pub fn append_to(&self, path: &Path) -> Result<File> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("--output {}: cannot open it to append", path.display()))?;
        file.set_len(self.whole_len).with_context(|| {
            format!(
                "--resume: dropping the cut-short last line of {}",
                path.display()
            )
        })?;
        Ok(file)
    }

    /// The earlier lines, to be merged in order with new results, and the file that
    /// replaces the output once the merge is complete.
    pub fn merge_into(&self, path: &Path) -> Result<(KeptLines, OutFile)> {
        let out = OutFile::claim(path)?;
        let old = match File::open(path) {
            Ok(file) => Some(BufReader::new(file.take(self.whole_len))),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
            Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
        };
        Ok((KeptLines { old, next: None }, out))
    }
}

/// The earlier output's lines, in ascending `id`, handed out as the merge reaches them.
pub struct KeptLines {
    old: Option<BufReader<std::io::Take<File>>>,
    /// A line read ahead, with its id.
    next: Option<(u64, Vec<u8>)>,
}

impl KeptLines {
    /// Writes every kept line with an id below `id`.
    pub fn write_before(&mut self, id: u64, out: &mut impl Write) -> Result<()> {
        while let Some((kept, line)) = self.peek()? {
            if *kept >= id {
                break;
            }
            out.write_all(line)?;
            self.next = None;
        }
        Ok(())
    }

    /// Writes what is left.
    pub fn write_rest(&mut self, out: &mut impl Write) -> Result<()> {
        self.write_before(u64::MAX, out)
    }

    fn peek(&mut self) -> Result<Option<&(u64, Vec<u8>)>> {
        if self.next.is_none() {
            let Some(old) = &mut self.old else {
                return Ok(None);
            };
            let mut line = Vec::new();
            if old.read_until(b'\n', &mut line)? == 0 {
                self.old = None;
                return Ok(None);
            }
            let IdOnly { id } = serde_json::from_slice(&line)?;
            self.next = Some((id, line));
        }
        Ok(self.next.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_short_last_line_is_not_done_and_is_dropped_on_append() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        std::fs::write(
            &path,
            "{\"id\":0,\"output\":1}\n{\"id\":2,\"output\":1}\n{\"id\":1,\"out",
        )
        .unwrap();
        let previous = Previous::read(&path).unwrap();
        assert_eq!(previous.done, HashSet::from([0, 2]));
        let mut file = previous.append_to(&path).unwrap();
        file.write_all(b"{\"id\":1,\"output\":1}\n").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(text.ends_with("{\"id\":1,\"output\":1}\n"), "{text}");
    }

    #[test]
    fn kept_lines_merge_in_id_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        std::fs::write(&path, "{\"id\":0}\n{\"id\":3}\n{\"id\":4}\n").unwrap();
        let previous = Previous::read(&path).unwrap();
        let (mut kept, out) = previous.merge_into(&path).unwrap();
        let mut merged = Vec::new();
        for new in [1u64, 2, 5] {
            kept.write_before(new, &mut merged).unwrap();
            writeln!(merged, "{{\"id\":{new}}}").unwrap();
        }
        kept.write_rest(&mut merged).unwrap();
        std::fs::write(out.temp_path(), &merged).unwrap();
        out.commit().unwrap();
        let ids: Vec<String> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        assert_eq!(
            ids.join(","),
            r#"{"id":0},{"id":1},{"id":2},{"id":3},{"id":4},{"id":5}"#
        );
    }

    #[test]
    fn a_line_that_is_no_result_refuses_the_resume() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        std::fs::write(&path, "{\"id\":0}\nhello\n").unwrap();
        let err = format!("{:#}", Previous::read(&path).err().unwrap());
        assert!(err.contains("line 2 of"), "{err}");
    }
}
