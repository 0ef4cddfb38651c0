//! Input files checked before they are opened, so a directory, a FIFO (which would block the
//! open), a device or a dangling link is named as what it is rather than "not found".

use crate::error::{Error, Result};
use std::io::{Error as IoError, ErrorKind};
use std::path::Path;

/// Fails unless `path`, its symlinks followed, is a regular file; the error says what it is.
pub fn require_regular_file(path: &Path) -> Result<()> {
    let problem = match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => return Ok(()),
        Ok(meta) if meta.is_dir() => "is a directory, not a file",
        Ok(_) => "is not a regular file (a FIFO, socket or device)",
        Err(e) if e.kind() == ErrorKind::NotFound => match std::fs::symlink_metadata(path) {
            Ok(_) => "is a symlink to nothing",
            Err(_) => "file not found",
        },
        // A symlink loop, a permission error: the system's own words.
        Err(e) => return Err(Error::io(path, e)),
    };
    Err(Error::io(
        path,
        IoError::new(ErrorKind::InvalidInput, problem),
    ))
}

/// Whether anything (a file, a folder, a link, even a dangling one) is at `path`.
pub fn exists_in_any_form(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

/// `text` without a leading UTF-8 byte order mark (some Windows editors write one).
pub fn without_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_path_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        assert!(require_regular_file(&file).is_ok());
        let message = |p: &Path| require_regular_file(p).unwrap_err().to_string();
        assert!(message(dir.path()).contains("is a directory"));
        assert!(message(&dir.path().join("none")).contains("file not found"));
        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink("none", &dangling).unwrap();
        assert!(message(&dangling).contains("symlink to nothing"));
        let looped = dir.path().join("loop");
        std::os::unix::fs::symlink("loop", &looped).unwrap();
        assert!(
            message(&looped).contains("symbolic links"),
            "{}",
            message(&looped)
        );
        assert!(message(Path::new("/dev/null")).contains("not a regular file"));
        assert_eq!(without_bom("\u{feff}{}"), "{}");
    }
}
