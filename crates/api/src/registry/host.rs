//! Host names as Istio resolves them.
//!
//! Two different resolutions exist in Istio and both are here:
//! - in configuration (`destination.host`, `DestinationRule.host`), a name
//!   without dots is short for `name.<namespace of the referencing object>.svc.<domain>`,
//!   and any name with a dot is taken as written ([`resolve_config_host`]);
//! - for a request's `Host`/`:authority`, every alias a client in the
//!   namespace may use reaches the service (`reviews`, `reviews.default`,
//!   `reviews.default.svc`, the FQDN), as DNS search paths would
//!   ([`service_aliases`], [`search_candidates`]).

/// The default cluster domain.
pub const DEFAULT_DOMAIN: &str = "cluster.local";

/// Resolves a host written in config relative to `namespace`, as Istio's
/// `ResolveShortnameToFQDN`: wildcards and names with a dot are kept; a bare
/// name becomes `name.namespace.svc.domain`.
pub fn resolve_config_host(host: &str, namespace: &str, domain: &str) -> String {
    if host.starts_with('*') || host.contains('.') {
        return host.to_string();
    }
    format!("{host}.{namespace}.svc.{domain}")
}

/// The FQDN of a Kubernetes service.
pub fn kube_fqdn(name: &str, namespace: &str, domain: &str) -> String {
    format!("{name}.{namespace}.svc.{domain}")
}

/// Whether `pattern` (possibly `*` or `*.suffix`) covers `host`.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    if pattern.eq_ignore_ascii_case(host) {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => {
            host.len() > suffix.len()
                && host
                    .to_ascii_lowercase()
                    .ends_with(&suffix.to_ascii_lowercase())
        }
        None => false,
    }
}

/// The names a client in `client_namespace` may use for the Kubernetes
/// service `name.namespace`: `name` (same namespace only), `name.namespace`,
/// `name.namespace.svc` and the FQDN.
pub fn service_aliases(
    name: &str,
    namespace: &str,
    domain: &str,
    client_namespace: &str,
) -> Vec<String> {
    let mut out = Vec::with_capacity(4);
    if namespace == client_namespace {
        out.push(name.to_string());
    }
    out.push(format!("{name}.{namespace}"));
    out.push(format!("{name}.{namespace}.svc"));
    out.push(kube_fqdn(name, namespace, domain));
    out
}

/// The FQDNs a name typed by a client in `namespace` may mean, in the order a
/// Kubernetes resolver tries them (search path `ns.svc.domain`, `svc.domain`,
/// `domain`, then the name as written).
pub fn search_candidates(name: &str, namespace: &str, domain: &str) -> Vec<String> {
    let name = name.trim_end_matches('.');
    let mut out = vec![
        format!("{name}.{namespace}.svc.{domain}"),
        format!("{name}.svc.{domain}"),
        format!("{name}.{domain}"),
        name.to_string(),
    ];
    if name.ends_with(domain) {
        out.rotate_right(1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_hosts_resolve_like_istio() {
        assert_eq!(
            resolve_config_host("reviews", "bookinfo", DEFAULT_DOMAIN),
            "reviews.bookinfo.svc.cluster.local"
        );
        assert_eq!(
            resolve_config_host("reviews.default", "bookinfo", DEFAULT_DOMAIN),
            "reviews.default"
        );
        assert_eq!(
            resolve_config_host("*.example.com", "x", DEFAULT_DOMAIN),
            "*.example.com"
        );
    }

    #[test]
    fn wildcards_match_suffixes() {
        assert!(host_matches("*.example.com", "api.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(host_matches("*", "anything"));
        assert!(host_matches(
            "Reviews.default.svc.cluster.local",
            "reviews.default.svc.cluster.local"
        ));
    }

    #[test]
    fn aliases_depend_on_client_namespace() {
        assert_eq!(
            service_aliases("reviews", "default", DEFAULT_DOMAIN, "default"),
            [
                "reviews",
                "reviews.default",
                "reviews.default.svc",
                "reviews.default.svc.cluster.local"
            ]
        );
        assert_eq!(
            service_aliases("reviews", "default", DEFAULT_DOMAIN, "other").len(),
            3
        );
    }
}
