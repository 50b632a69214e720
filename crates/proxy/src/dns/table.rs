//! The lookup table the DNS proxy answers from, built from weftd's
//! [`NameTable`] the way Istio's agent expands it. Pure: no sockets.
//!
//! Every name is stored lowercase with its trailing dot. A Kubernetes host
//! in the proxy's cluster domain answers under its FQDN, `name.namespace`,
//! `name.namespace.svc` and, for the proxy's own namespace, bare `name`;
//! any other host (ServiceEntry) under its own name only; `*.example.com`
//! hosts answer every name below `example.com`. A name the application's
//! resolver built by appending a search domain of the pod's resolv.conf
//! (`reviews.default.svc.cluster.local.default.svc.cluster.local.`) is
//! answered with a CNAME to the mesh name plus its addresses.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use weft_xds::nds::{NameTable, REGISTRY_KUBERNETES};

/// The addresses of one mesh host.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostAddrs {
    pub v4: Vec<Ipv4Addr>,
    pub v6: Vec<Ipv6Addr>,
}

/// What a question resolves to in the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// When the question was a search-suffixed form: the mesh name it is
    /// an alias of (lowercase, trailing dot).
    pub cname: Option<String>,
    /// The addresses of the (canonical) name.
    pub addrs: Arc<HostAddrs>,
}

/// Where the table's names are relative to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TableContext {
    /// The proxy's namespace: bare service names resolve within it.
    pub namespace: String,
    /// The cluster domain's service zone, `svc.cluster.local`.
    pub svc_domain: String,
    /// Search domains of the pod's resolv.conf, in order.
    pub search: Vec<String>,
}

impl TableContext {
    /// The context for a proxy in `namespace` with cluster `domain`
    /// (`cluster.local`) and resolv.conf `search` domains.
    pub fn new(namespace: &str, domain: &str, search: &[String]) -> TableContext {
        TableContext {
            namespace: namespace.to_ascii_lowercase(),
            svc_domain: format!("svc.{}", domain.trim_matches('.').to_ascii_lowercase()),
            search: search
                .iter()
                .map(|s| fqdn(s))
                .filter(|s| s != ".")
                .collect(),
        }
    }
}

/// Names to addresses, immutable once built.
#[derive(Debug, Default)]
pub struct LookupTable {
    names: HashMap<String, Arc<HostAddrs>>,
    /// `*.example.com` hosts, keyed by `example.com.`.
    wildcards: HashMap<String, Arc<HostAddrs>>,
    search: Vec<String>,
}

/// `name` lowercase with exactly one trailing dot.
fn fqdn(name: &str) -> String {
    let mut s = name.trim_end_matches('.').to_ascii_lowercase();
    s.push('.');
    s
}

impl LookupTable {
    /// Expands `table` for a proxy in `ctx`.
    pub fn build(table: &NameTable, ctx: &TableContext) -> LookupTable {
        let mut out = LookupTable {
            search: ctx.search.clone(),
            ..LookupTable::default()
        };
        for (host, info) in &table.table {
            let mut addrs = HostAddrs::default();
            for ip in &info.ips {
                match ip.parse::<IpAddr>() {
                    Ok(IpAddr::V4(a)) => addrs.v4.push(a),
                    Ok(IpAddr::V6(a)) => addrs.v6.push(a),
                    Err(_) => {
                        tracing::debug!(%host, %ip, "ignoring a name table IP that does not parse")
                    }
                }
            }
            if addrs.v4.is_empty() && addrs.v6.is_empty() {
                continue;
            }
            let addrs = Arc::new(addrs);
            let host = fqdn(host);
            if let Some(parent) = host.strip_prefix("*.") {
                out.wildcards.insert(parent.to_string(), addrs);
                continue;
            }
            let mut names = vec![host.clone()];
            let in_domain = host.ends_with(&format!(".{}.", ctx.svc_domain));
            if info.registry == REGISTRY_KUBERNETES
                && in_domain
                && !info.shortname.is_empty()
                && !info.namespace.is_empty()
            {
                let short = info.shortname.to_ascii_lowercase();
                let ns = info.namespace.to_ascii_lowercase();
                names.push(format!("{short}.{ns}."));
                names.push(format!("{short}.{ns}.svc."));
                if ns == ctx.namespace {
                    names.push(format!("{short}."));
                }
            }
            names.extend(info.alt_hosts.iter().map(|h| fqdn(h)));
            for n in names {
                out.names.entry(n).or_insert_with(|| Arc::clone(&addrs));
            }
        }
        out
    }

    /// Number of names answered directly (without wildcards and search forms).
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether the table answers no name.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty() && self.wildcards.is_empty()
    }

    /// The mesh answer for `qname` (any case, with or without trailing
    /// dot), or `None` when the name is not the mesh's (forward it).
    pub fn lookup(&self, qname: &str) -> Option<Found> {
        let q = fqdn(qname);
        if let Some(addrs) = self.direct(&q) {
            return Some(Found { cname: None, addrs });
        }
        for s in &self.search {
            let Some(base) = q.strip_suffix(s.as_str()) else {
                continue;
            };
            if !base.ends_with('.') || base.len() < 2 {
                continue;
            }
            if let Some(addrs) = self.direct(base) {
                return Some(Found {
                    cname: Some(base.to_string()),
                    addrs,
                });
            }
        }
        None
    }

    fn direct(&self, q: &str) -> Option<Arc<HostAddrs>> {
        if let Some(a) = self.names.get(q) {
            return Some(Arc::clone(a));
        }
        // Wildcards: the longest parent first.
        let mut rest = q;
        while let Some((_, parent)) = rest.split_once('.') {
            if parent.is_empty() {
                break;
            }
            if let Some(a) = self.wildcards.get(parent) {
                return Some(Arc::clone(a));
            }
            rest = parent;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_xds::nds::{NameInfo, REGISTRY_EXTERNAL};

    fn table() -> LookupTable {
        let mut t = NameTable::default();
        let kube = |ip: &str, name: &str, ns: &str| NameInfo {
            ips: vec![ip.to_string()],
            registry: REGISTRY_KUBERNETES.into(),
            shortname: name.into(),
            namespace: ns.into(),
            alt_hosts: vec![],
        };
        t.table.insert(
            "reviews.demo.svc.cluster.local".into(),
            kube("10.96.0.20", "reviews", "demo"),
        );
        t.table.insert(
            "ratings.other.svc.cluster.local".into(),
            kube("10.96.0.30", "ratings", "other"),
        );
        t.table.insert(
            "dual.demo.svc.cluster.local".into(),
            NameInfo {
                ips: vec!["10.96.0.40".into(), "fd00::40".into()],
                ..kube("", "dual", "demo")
            },
        );
        t.table.insert(
            "httpbin.example.com".into(),
            NameInfo {
                ips: vec!["240.240.0.7".into()],
                registry: REGISTRY_EXTERNAL.into(),
                ..NameInfo::default()
            },
        );
        t.table.insert(
            "*.wild.example.com".into(),
            NameInfo {
                ips: vec!["192.0.2.9".into()],
                registry: REGISTRY_EXTERNAL.into(),
                ..NameInfo::default()
            },
        );
        t.table.insert(
            "broken.example.com".into(),
            NameInfo {
                ips: vec!["10.0.0.0/8".into()],
                ..NameInfo::default()
            },
        );
        let search = [
            "demo.svc.cluster.local",
            "svc.cluster.local",
            "cluster.local",
        ]
        .map(String::from);
        LookupTable::build(&t, &TableContext::new("demo", "cluster.local", &search))
    }

    fn v4(t: &LookupTable, q: &str) -> Option<Vec<Ipv4Addr>> {
        t.lookup(q).map(|f| f.addrs.v4.clone())
    }

    #[test]
    fn kubernetes_names_in_all_istio_forms() {
        let t = table();
        let vip = Some(vec![Ipv4Addr::new(10, 96, 0, 20)]);
        for q in [
            "reviews.demo.svc.cluster.local.",
            "reviews.demo.svc.cluster.local",
            "REVIEWS.Demo.svc.cluster.local.",
            "reviews.demo.",
            "reviews.demo.svc.",
            "reviews.",
        ] {
            assert_eq!(v4(&t, q), vip, "{q}");
        }
        // Another namespace: no bare name.
        assert_eq!(v4(&t, "ratings."), None);
        assert!(v4(&t, "ratings.other").is_some());
        assert!(v4(&t, "ratings.other.svc.cluster.local").is_some());
    }

    #[test]
    fn search_suffixed_names_alias_the_mesh_name() {
        let t = table();
        let f = t
            .lookup("reviews.demo.svc.cluster.local.demo.svc.cluster.local.")
            .unwrap();
        assert_eq!(f.cname.as_deref(), Some("reviews.demo.svc.cluster.local."));
        assert_eq!(f.addrs.v4, [Ipv4Addr::new(10, 96, 0, 20)]);
        let f = t.lookup("ratings.other.svc.cluster.local.").unwrap();
        assert_eq!(f.cname, None);
        let f = t.lookup("ratings.other.cluster.local.").unwrap();
        assert_eq!(f.cname.as_deref(), Some("ratings.other."));
        // Not mesh names under any suffix: forwarded.
        assert_eq!(t.lookup("www.example.org.demo.svc.cluster.local."), None);
        assert_eq!(t.lookup("www.example.org."), None);
        assert_eq!(t.lookup("svc.cluster.local."), None);
    }

    #[test]
    fn service_entries_wildcards_and_families() {
        let t = table();
        assert_eq!(
            v4(&t, "httpbin.example.com"),
            Some(vec![Ipv4Addr::new(240, 240, 0, 7)])
        );
        // A ServiceEntry host has no short forms.
        assert_eq!(v4(&t, "httpbin."), None);
        assert_eq!(
            v4(&t, "a.b.wild.example.com"),
            Some(vec![Ipv4Addr::new(192, 0, 2, 9)])
        );
        assert_eq!(v4(&t, "wild.example.com"), None);
        let dual = t.lookup("dual").unwrap();
        assert_eq!(dual.addrs.v6, ["fd00::40".parse::<Ipv6Addr>().unwrap()]);
        assert!(t.lookup("reviews").unwrap().addrs.v6.is_empty());
        // Unparsable IPs leave the host out.
        assert_eq!(t.lookup("broken.example.com"), None);
    }
}
