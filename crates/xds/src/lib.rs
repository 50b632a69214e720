//! Aggregated Discovery Service plumbing shared by weftd and weft-proxy:
//! type URLs, version and nonce bookkeeping, ACK/NACK.
//!
//! Filled by the control-plane issue.
