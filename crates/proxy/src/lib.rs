//! The Weft sidecar data plane (istio-proxy's counterpart).
