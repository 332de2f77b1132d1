//! Helpers shared by the cross-crate integration tests in `tests/tests/`.

pub mod agent;
pub mod fork_consumer;
pub mod front;
pub mod operator;
pub mod sbc_process;

use std::path::PathBuf;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}
