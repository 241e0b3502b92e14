//! Where pictures live: a content-addressed blob store in a directory
//! (`blob:{sha256}`). Products carry a blob reference, never the picture
//! itself; a deployment would put S3 or a CDN behind the same references.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The largest blob read back (a picture bigger than this is refused).
pub const MAX_BLOB_BYTES: u64 = 32 << 20;

/// A blob store in a directory.
#[derive(Debug, Clone)]
pub struct Blobs {
    dir: PathBuf,
}

/// Why a blob could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    /// Not a `blob:{64 hex digits}` reference.
    #[error("not a blob reference (blob:<sha256>): {0:?}")]
    InvalidRef(String),
    /// No blob under that reference.
    #[error("no blob {0}")]
    Missing(String),
    /// Bigger than [`MAX_BLOB_BYTES`].
    #[error("blob {0} is {1} bytes, more than {MAX_BLOB_BYTES}")]
    TooBig(String, u64),
    /// The directory could not be read or written.
    #[error("blob store: {0}")]
    Io(#[from] std::io::Error),
}

/// The hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

impl Blobs {
    /// A store in `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
    /// `INVENTORY_BLOB_DIR`, or `inventory-blobs` in the system's temp dir.
    pub fn from_env() -> Self {
        Self::new(
            std::env::var_os("INVENTORY_BLOB_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| std::env::temp_dir().join("inventory-blobs")),
        )
    }
    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// Stores `bytes`; returns their reference (the same bytes, the same reference).
    pub fn put(&self, bytes: &[u8]) -> Result<String, BlobError> {
        let hex = sha256_hex(bytes);
        let path = self.dir.join(&hex);
        if !path.exists() {
            std::fs::create_dir_all(&self.dir)?;
            let tmp = self.dir.join(format!(".{hex}.{}", std::process::id()));
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, &path)?;
        }
        Ok(format!("blob:{hex}"))
    }
    /// The bytes of `reference`.
    pub fn get(&self, reference: &str) -> Result<Vec<u8>, BlobError> {
        let hex = reference
            .strip_prefix("blob:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
            .ok_or_else(|| BlobError::InvalidRef(reference.to_owned()))?;
        let path = self.dir.join(hex);
        let len = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(BlobError::Missing(reference.to_owned())),
            Err(e) => return Err(e.into()),
        };
        if len > MAX_BLOB_BYTES {
            return Err(BlobError::TooBig(reference.to_owned(), len));
        }
        Ok(std::fs::read(path)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_addressed_and_safe_to_read() {
        let dir = tempfile::tempdir().unwrap();
        let b = Blobs::new(dir.path());
        let r = b.put(b"hello").unwrap();
        assert_eq!(r, format!("blob:{}", sha256_hex(b"hello")));
        assert_eq!(b.put(b"hello").unwrap(), r);
        assert_eq!(b.get(&r).unwrap(), b"hello");
        assert!(matches!(b.get("blob:../../etc/passwd"), Err(BlobError::InvalidRef(_))));
        assert!(matches!(b.get(&format!("blob:{}", "0".repeat(64))), Err(BlobError::Missing(_))));
    }
}
