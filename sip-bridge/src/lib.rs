//! Sans-IO SIP/WebRTC bridge. Built up by the SIP core, browser and bridge issues.
