//! Reading data files from disk: existence checks with helpful errors, and transparent gzip.

use crate::{Error, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The two bytes every gzip member starts with.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Checks that `dir` is an existing directory.
pub(crate) fn require_dir(dir: &Path) -> Result<()> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Error::MissingDir {
            path: dir.to_path_buf(),
            hint: "; a file of that name exists, but a directory is needed".into(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::MissingDir {
            path: dir.to_path_buf(),
            hint: String::new(),
        }),
        Err(e) => Err(Error::io("cannot open", dir, e)),
    }
}

/// The first of `names` that exists in `dir`, each also tried with a `.gz` suffix.
pub(crate) fn find_file(dir: &Path, names: &[&str]) -> Result<PathBuf> {
    require_dir(dir)?;
    for name in names {
        for candidate in [dir.join(name), dir.join(format!("{name}.gz"))] {
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    let first = names.first().copied().unwrap_or("");
    Err(Error::MissingFile {
        path: dir.join(first),
        hint: format!("; looked for {} (each raw or .gz)", names.join(", ")),
    })
}

/// Reads a whole file, decompressing it when it is gzip (recognised by its magic bytes, so a
/// misnamed file still works).
pub(crate) fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("cannot read", path, e))?;
    maybe_gunzip(bytes, path)
}

/// Decompresses `bytes` when they are gzip, returns them unchanged otherwise.
pub(crate) fn maybe_gunzip(bytes: Vec<u8>, path: &Path) -> Result<Vec<u8>> {
    if !bytes.starts_with(&GZIP_MAGIC) {
        return Ok(bytes);
    }
    gunzip(&bytes, path)
}

/// Decompresses gzip data (all members, as `gzip -d` does).
pub(crate) fn gunzip(bytes: &[u8], path: &Path) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(bytes.len() * 4);
    flate2::read::MultiGzDecoder::new(bytes)
        .read_to_end(&mut out)
        .map_err(|e| Error::Gzip {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    Ok(out)
}
