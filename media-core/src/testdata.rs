//! Locating the shared external test vectors (read in place, never copied).
//!
//! They live in `../shared/testdata` next to the project checkout; set
//! `SHARED_TESTDATA` to read them from elsewhere. A missing file fails the test
//! loudly: a vector test that silently skips would prove nothing.

use std::path::PathBuf;

/// The shared test-data folder.
pub fn dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SHARED_TESTDATA") {
        return PathBuf::from(d);
    }
    // media-core/ -> workspace root -> its sibling `shared/`.
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata")
}

/// Path of `rel` inside the shared test data.
pub fn path(rel: &str) -> PathBuf {
    dir().join(rel)
}

/// Reads `rel`, panicking with a clear message when it is absent.
pub fn read(rel: &str) -> Vec<u8> {
    let p = path(rel);
    std::fs::read(&p).unwrap_or_else(|e| {
        panic!(
            "shared test vector {} unreadable ({e}); set SHARED_TESTDATA to the shared/testdata folder",
            p.display()
        )
    })
}
