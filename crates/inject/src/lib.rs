//! Sidecar injection: the pure decision and patch function shared by
//! `weft kube-inject` and weftd's `/inject` webhook.
