//! Supported fields of the RBAC filters (`crate::rbac`): the HTTP and
//! network filters' configs, policies, permissions, principals and the
//! matchers only they use.

/// The RBAC filters' messages.
pub(super) const RBAC: &[(&str, &[&str])] = &[
    (
        "envoy.extensions.filters.http.rbac.v3.RBAC",
        &[
            "rules",
            "rules_stat_prefix",
            "shadow_rules",
            "shadow_rules_stat_prefix",
        ],
    ),
    (
        "envoy.extensions.filters.http.rbac.v3.RBACPerRoute",
        &["rbac"],
    ),
    (
        "envoy.extensions.filters.network.rbac.v3.RBAC",
        &[
            "rules",
            "shadow_rules",
            "shadow_rules_stat_prefix",
            "stat_prefix",
            "enforcement_type",
        ],
    ),
    ("envoy.config.rbac.v3.RBAC", &["action", "policies"]),
    (
        "envoy.config.rbac.v3.Policy",
        &["permissions", "principals"],
    ),
    (
        "envoy.config.rbac.v3.Permission",
        &[
            "and_rules",
            "or_rules",
            "any",
            "header",
            "url_path",
            "destination_ip",
            "destination_port",
            "destination_port_range",
            "metadata",
            "not_rule",
            "requested_server_name",
            "sourced_metadata",
        ],
    ),
    ("envoy.config.rbac.v3.Permission.Set", &["rules"]),
    (
        "envoy.config.rbac.v3.Principal",
        &[
            "and_ids",
            "or_ids",
            "any",
            "authenticated",
            "source_ip",
            "direct_remote_ip",
            "remote_ip",
            "header",
            "url_path",
            "metadata",
            "not_id",
            "sourced_metadata",
        ],
    ),
    ("envoy.config.rbac.v3.Principal.Set", &["ids"]),
    (
        "envoy.config.rbac.v3.Principal.Authenticated",
        &["principal_name"],
    ),
    (
        "envoy.config.rbac.v3.SourcedMetadata",
        &["metadata_matcher", "metadata_source"],
    ),
    ("envoy.type.matcher.v3.PathMatcher", &["path"]),
    (
        "envoy.type.matcher.v3.MetadataMatcher",
        &["filter", "path", "value", "invert"],
    ),
];
