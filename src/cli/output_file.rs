//! Where `--output` writes (`logits`, batch `generate`, `bench --plot`), without ever destroying
//! what the user did not ask to replace:
//! - `-` is stdout; a FIFO or a device is opened and written as it is;
//! - a symlink is followed, so its target is written and the link stays a link;
//! - a regular file (or a new one) is written to a hidden temporary beside it and renamed over it
//!   on [`OutputFile::commit`], so a failed run leaves the old file as it was;
//! - an output that is the same file as one of the command's inputs is refused.
//!
//! Every error names the path the user gave, not the temporary.

use mla_rt::error::{Error, Result};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Most symlinks followed from `--output` to the file it names (Linux's own limit).
const MAX_LINKS: usize = 40;

/// An open output; dropped without [`OutputFile::commit`], it leaves the target untouched (a
/// regular file) or with what was written so far (stdout, a FIFO, a device).
pub struct OutputFile {
    /// The path as the user gave it, for messages.
    shown: PathBuf,
    sink: Sink,
}

enum Sink {
    Stdout,
    /// A FIFO or a device, written in place.
    Direct(File),
    /// A regular file: `file` is the temporary at `temporary`, renamed to `target` on commit.
    Replace {
        file: BufWriter<File>,
        temporary: PathBuf,
        target: PathBuf,
    },
    /// Committed: nothing left to clean up.
    Done,
}

impl OutputFile {
    /// Opens `path` for writing, refusing it where it is one of `inputs`.
    pub fn create(path: &Path, inputs: &[PathBuf]) -> Result<OutputFile> {
        let shown = path.to_path_buf();
        if path.as_os_str() == "-" {
            return Ok(OutputFile {
                shown: "<stdout>".into(),
                sink: Sink::Stdout,
            });
        }
        // The kernel follows the links, /proc's magic ones included (`/dev/stdout` to a pipe).
        let existing = match std::fs::metadata(path) {
            Ok(meta) => Some(meta),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(path, e)),
        };
        if let Some(meta) = &existing {
            for input in inputs {
                if let Ok(input_meta) = std::fs::metadata(input) {
                    if (input_meta.dev(), input_meta.ino()) == (meta.dev(), meta.ino()) {
                        return Err(Error::InvalidInput(format!(
                            "{}: the output is the same file as the input {}; give another \
                             --output",
                            path.display(),
                            input.display()
                        )));
                    }
                }
            }
        }
        let sink = match existing {
            Some(meta) if meta.is_dir() => {
                return Err(Error::InvalidInput(format!(
                    "{}: is a directory; --output needs a file path",
                    path.display()
                )))
            }
            Some(meta) if !meta.is_file() => Sink::Direct(
                OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|e| Error::io(path, e))?,
            ),
            existing => {
                // A regular file is replaced where it lies, its links left as they are.
                let target = follow_links(path)?;
                let name = target.file_name().ok_or_else(|| {
                    Error::InvalidInput(format!("{}: not a file path", path.display()))
                })?;
                let temporary = target.with_file_name(format!(
                    ".{}.{}.partial",
                    name.to_string_lossy(),
                    std::process::id()
                ));
                let file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&temporary)
                    .map_err(|e| Error::io(path, e))?;
                // The replacement keeps the permissions of the file it replaces.
                if let Some(meta) = existing {
                    let _ = file.set_permissions(meta.permissions());
                }
                Sink::Replace {
                    file: BufWriter::new(file),
                    temporary,
                    target,
                }
            }
        };
        Ok(OutputFile { shown, sink })
    }

    /// The path as the user gave it (`<stdout>` for `-`).
    pub fn shown(&self) -> &Path {
        &self.shown
    }

    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let shown = &self.shown;
        match &mut self.sink {
            Sink::Stdout => super::output::say_bytes(bytes),
            Sink::Direct(file) => file.write_all(bytes).map_err(|e| Error::io(shown, e)),
            Sink::Replace { file, .. } => file.write_all(bytes).map_err(|e| Error::io(shown, e)),
            Sink::Done => Ok(()),
        }
    }

    /// Flushes everything written (and, for a regular file, syncs it and renames it into place).
    pub fn commit(mut self) -> Result<()> {
        let shown = self.shown.clone();
        match std::mem::replace(&mut self.sink, Sink::Done) {
            Sink::Stdout | Sink::Done => Ok(()),
            Sink::Direct(mut file) => file.flush().map_err(|e| Error::io(&shown, e)),
            Sink::Replace {
                file,
                temporary,
                target,
            } => {
                let done = file
                    .into_inner()
                    .map_err(|e| e.into_error())
                    .and_then(|f| f.sync_all())
                    .and_then(|()| std::fs::rename(&temporary, &target));
                done.map_err(|e| {
                    let _ = std::fs::remove_file(&temporary);
                    Error::io(&shown, e)
                })
            }
        }
    }
}

impl Drop for OutputFile {
    fn drop(&mut self) {
        if let Sink::Replace { temporary, .. } = &self.sink {
            let _ = std::fs::remove_file(temporary);
        }
    }
}

/// The file `path` names once its symlinks are followed (it need not exist).
fn follow_links(path: &Path) -> Result<PathBuf> {
    let mut at = path.to_path_buf();
    for _ in 0..MAX_LINKS {
        match std::fs::symlink_metadata(&at) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let link = std::fs::read_link(&at).map_err(|e| Error::io(path, e))?;
                at = match at.parent() {
                    Some(parent) => parent.join(link),
                    None => link,
                };
            }
            _ => return Ok(at),
        }
    }
    Err(Error::InvalidInput(format!(
        "{}: more than {MAX_LINKS} symlinks to follow",
        path.display()
    )))
}
