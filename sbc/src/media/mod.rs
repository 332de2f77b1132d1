//! Media tools built on `media-core`.

pub mod transcode;
