//! Istio-compatible resource types (`networking.istio.io`, `security.istio.io`),
//! Kubernetes core objects Weft reads, MeshConfig, and validation that reports
//! every invalid field with its path.
//!
//! Filled by the control-plane issue.
