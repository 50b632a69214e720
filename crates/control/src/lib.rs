//! weftd, the control plane: config store, service registry, translation of
//! Istio resources into xDS, push, the CA and the admission webhooks.
