//! Command-line tools built on `media-core` (`sbc media ...`): offline audio
//! work, apart from the server's per-call media (`media_task`).

pub mod transcode;
