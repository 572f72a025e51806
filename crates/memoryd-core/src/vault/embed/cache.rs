//! The on-disk vector cache: one append-only file under the state dir,
//! `MDVEC01\n` then records `key (32) | dim (u32 LE) | dim × f32 LE |
//! check (8)`, the check being the start of the SHA-256 of the rest of the
//! record. A record is appended only after its batch was answered, so a
//! kill mid-write leaves at worst a torn last record: loading stops at the
//! first record that is short or fails its check (it is never trusted,
//! its note is embedded again), and the file is then rewritten whole
//! (tmp + rename) before anything is appended after the tear. The cache
//! holds only the vault's notes: [`VectorCache::rewrite`] drops the rest
//! once they outnumber the live entries.

use super::{Key, MAX_DIMENSION};
use crate::host::files::{FileError, FileGuard};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

const MAGIC: &[u8; 8] = b"MDVEC01\n";
const CHECK: usize = 8;

/// What a load found.
#[derive(Debug, Default)]
pub struct Loaded {
    pub vectors: HashMap<Key, Arc<[f32]>>,
    /// Records read, duplicates and stale ones included.
    pub records: usize,
    /// A record failed its check (or the file is not a cache): the file
    /// must be rewritten before it is appended to.
    pub torn: bool,
}

/// The cache file and the guard its writes go through.
#[derive(Debug, Clone)]
pub struct VectorCache {
    pub path: PathBuf,
    files: FileGuard,
}

fn record(key: &Key, vector: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + 4 + vector.len() * 4 + CHECK);
    out.extend_from_slice(key);
    out.extend_from_slice(&(vector.len() as u32).to_le_bytes());
    for x in vector {
        out.extend_from_slice(&x.to_le_bytes());
    }
    let check = Sha256::digest(&out);
    out.extend_from_slice(&check[..CHECK]);
    out
}

/// Decodes a cache file's bytes.
pub fn decode(bytes: &[u8]) -> Loaded {
    let mut loaded = Loaded::default();
    let Some(mut rest) = bytes.strip_prefix(MAGIC) else {
        loaded.torn = !bytes.is_empty();
        return loaded;
    };
    while !rest.is_empty() {
        let Some(dim) = rest.get(32..36).map(|d| u32::from_le_bytes([d[0], d[1], d[2], d[3]]) as usize) else {
            loaded.torn = true;
            break;
        };
        let body = 36 + dim * 4;
        let whole = (1..=MAX_DIMENSION).contains(&dim) && rest.len() >= body + CHECK;
        if !whole || Sha256::digest(&rest[..body])[..CHECK] != rest[body..body + CHECK] {
            loaded.torn = true;
            break;
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(&rest[..32]);
        let vector: Arc<[f32]> =
            rest[36..body].chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        loaded.vectors.insert(key, vector);
        loaded.records += 1;
        rest = &rest[body + CHECK..];
    }
    loaded
}

impl VectorCache {
    pub fn new(path: PathBuf, files: FileGuard) -> VectorCache {
        VectorCache { path, files }
    }

    /// Reads the cache; a missing file is an empty cache.
    pub fn load(&self) -> Result<Loaded, FileError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => Ok(decode(&bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Loaded::default()),
            Err(e) => Err(FileError::io("read", &self.path)(e)),
        }
    }

    /// Appends one batch's vectors in one write.
    pub fn append<'a>(&self, entries: impl IntoIterator<Item = (&'a Key, &'a [f32])>) -> Result<(), FileError> {
        let mut file = self.files.open_append(&self.path)?;
        let fresh = file.metadata().map_err(FileError::io("stat", &self.path))?.len() == 0;
        let mut bytes = if fresh { MAGIC.to_vec() } else { Vec::new() };
        for (key, vector) in entries {
            bytes.extend(record(key, vector));
        }
        file.write_all(&bytes).map_err(FileError::io("append to", &self.path))
    }

    /// Replaces the file with these entries only (tmp + rename).
    pub fn rewrite<'a>(&self, entries: impl IntoIterator<Item = (&'a Key, &'a [f32])>) -> Result<(), FileError> {
        let mut bytes = MAGIC.to_vec();
        for (key, vector) in entries {
            bytes.extend(record(key, vector));
        }
        self.files.write_atomic(&self.path, &bytes, Some(0o600))
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests write their fixtures directly
mod tests {
    use super::*;
    use std::path::Path;

    fn cache(dir: &Path) -> VectorCache {
        VectorCache::new(dir.join("vectors.cache"), FileGuard::refusing(&[dir]))
    }

    #[test]
    fn a_torn_or_corrupt_record_is_never_trusted_and_the_rest_survives() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path());
        assert!(c.load().unwrap().vectors.is_empty(), "no file, empty cache");
        let (a, b, d) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        c.append([(&a, &[1.0f32, 0.0][..]), (&b, &[0.0, 1.0][..])]).unwrap();
        c.append([(&d, &[0.6f32, 0.8][..])]).unwrap();
        let loaded = c.load().unwrap();
        assert_eq!((loaded.vectors.len(), loaded.records, loaded.torn), (3, 3, false));
        assert_eq!(&*loaded.vectors[&d], &[0.6, 0.8]);

        let bytes = std::fs::read(&c.path).unwrap();
        // Every cut inside the last record: the first two stay, the torn one goes.
        let last = record(&d, &[0.6, 0.8]).len();
        for cut in 1..last {
            let torn = decode(&bytes[..bytes.len() - cut]);
            assert!(torn.torn, "cut {cut}");
            assert_eq!(torn.vectors.len(), 2, "cut {cut}");
            assert!(!torn.vectors.contains_key(&d));
        }
        // A flipped bit in a vector fails its check; nothing after it is read.
        let mut flipped = bytes.clone();
        flipped[MAGIC.len() + 36] ^= 0x40;
        let bad = decode(&flipped);
        assert!(bad.torn && bad.vectors.is_empty(), "{:?}", bad.vectors.keys().collect::<Vec<_>>());
        assert!(decode(b"not a cache").torn);

        // A rewrite keeps what is asked and leaves a clean file.
        std::fs::write(&c.path, &bytes[..bytes.len() - 3]).unwrap();
        let loaded = c.load().unwrap();
        c.rewrite(loaded.vectors.iter().filter(|(k, _)| **k == a).map(|(k, v)| (k, &v[..]))).unwrap();
        c.append([(&d, &[0.6f32, 0.8][..])]).unwrap();
        let loaded = c.load().unwrap();
        assert_eq!((loaded.vectors.len(), loaded.torn), (2, false));
        assert!(loaded.vectors.contains_key(&a) && loaded.vectors.contains_key(&d));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&c.path).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
