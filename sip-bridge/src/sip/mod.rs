//! The SIP core: message handling, transactions (RFC 3261 section 17), dialogs
//! (section 12), transport framing, digest authentication (section 22).

pub mod auth;
pub mod dialog;
pub mod dtmf_info;
pub mod framing;
pub mod message;
pub mod transaction;
