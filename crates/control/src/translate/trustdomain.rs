//! Trust domain migration of AuthorizationPolicy rules (Istio's
//! `trustdomain.Bundle`): a principal written with `cluster.local` (which
//! in a policy means "the local trust domain") or with one of the mesh's
//! trust domain aliases matches the same identity in every trust domain of
//! the mesh; `trustDomains` values naming one of them stand for all.

use weft_api::security::Rule;

/// `principal` (`TD/ns/NS/sa/SA`) for every trust domain of the mesh when
/// its own trust domain is one of them or `cluster.local` (which in a
/// policy means "the local trust domain"); unchanged otherwise (Istio's
/// `ReplaceTrustDomainAliases`).
fn principal_aliases(principal: &str, trust_domains: &[String]) -> Vec<String> {
    let parts: Vec<&str> = principal.split('/').collect();
    if parts.len() != 5 || parts[0] == "*" {
        return vec![principal.to_string()];
    }
    let td = parts[0];
    if td != "cluster.local" && !trust_domains.iter().any(|t| t == td) {
        return vec![principal.to_string()];
    }
    let mut out: Vec<String> = Vec::new();
    for t in trust_domains {
        let p = if t.ends_with(td) {
            principal.to_string()
        } else {
            format!("{t}/{}", parts[1..].join("/"))
        };
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

fn principals_with_aliases(values: &[String], trust_domains: &[String]) -> Vec<String> {
    values
        .iter()
        .flat_map(|v| principal_aliases(v, trust_domains))
        .collect()
}

/// `trustDomains` values naming one of the mesh's trust domains stand for
/// all of them (Istio's `ExpandTrustDomainAliases`).
fn trust_domains_expanded(values: &[String], trust_domains: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for v in values {
        let expanded: Vec<String> = if trust_domains.contains(v) {
            trust_domains.to_vec()
        } else {
            vec![v.clone()]
        };
        for e in expanded {
            if !out.contains(&e) {
                out.push(e);
            }
        }
    }
    out
}

/// `rule` with principals and trust domains rewritten for the mesh's trust
/// domain and aliases (`trust_domains[0]` is the mesh's own).
pub fn migrate_trust_domain(rule: &Rule, trust_domains: &[String]) -> Rule {
    let mut rule = rule.clone();
    for s in rule.from.iter_mut().filter_map(|f| f.source.as_mut()) {
        s.principals = principals_with_aliases(&s.principals, trust_domains);
        s.not_principals = principals_with_aliases(&s.not_principals, trust_domains);
        s.trust_domains = trust_domains_expanded(&s.trust_domains, trust_domains);
        s.not_trust_domains = trust_domains_expanded(&s.not_trust_domains, trust_domains);
    }
    for w in &mut rule.when {
        match w.key.as_str() {
            "source.principal" => {
                w.values = principals_with_aliases(&w.values, trust_domains);
                w.not_values = principals_with_aliases(&w.not_values, trust_domains);
            }
            "source.trustDomain" => {
                w.values = trust_domains_expanded(&w.values, trust_domains);
                w.not_values = trust_domains_expanded(&w.not_values, trust_domains);
            }
            _ => {}
        }
    }
    rule
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_local_means_the_local_trust_domain() {
        let tds = vec!["example.org".to_string(), "old.example".to_string()];
        assert_eq!(
            principal_aliases("cluster.local/ns/a/sa/b", &tds),
            ["example.org/ns/a/sa/b", "old.example/ns/a/sa/b"]
        );
        assert_eq!(
            principal_aliases("old.example/ns/a/sa/b", &tds),
            ["example.org/ns/a/sa/b", "old.example/ns/a/sa/b"]
        );
        assert_eq!(
            principal_aliases("other.org/ns/a/sa/b", &tds),
            ["other.org/ns/a/sa/b"]
        );
        assert_eq!(principal_aliases("*/ns/a/sa/b", &tds), ["*/ns/a/sa/b"]);
        let local = vec!["cluster.local".to_string()];
        assert_eq!(
            principal_aliases("cluster.local/ns/a/sa/b", &local),
            ["cluster.local/ns/a/sa/b"]
        );
        assert_eq!(
            trust_domains_expanded(&["old.example".into(), "x".into()], &tds),
            ["example.org", "old.example", "x"]
        );
    }
}
