//! Removing what crashed runs left behind: namespaces found by name prefix
//! under /run/netns, and the processes still running inside them. Only names
//! with a testbed prefix are ever touched.

use std::path::Path;

use crate::error::{Error, Result};
use crate::netns::{NETNS_DIR, delete_by_name, kill_all_in};

/// The prefix of every namespace a default [`crate::Node`] creates:
/// `wtb-<pid>-<n>-`.
pub const DEFAULT_PREFIX: &str = "wtb-";

/// Deletes every namespace whose name starts with `prefix` (for example a
/// node's [`crate::Node::prefix`], or the local mesh's prefix), after killing
/// the processes inside. Returns the names it deleted.
///
/// The prefix must be at least 3 characters, end in `-` and use only
/// lowercase letters, digits and `-`, so it cannot match everyone's
/// namespaces by accident.
pub fn cleanup_prefix(prefix: &str) -> Result<Vec<String>> {
    validate_prefix(prefix)?;
    remove_matching(|name| name.starts_with(prefix))
}

/// Deletes default-prefixed namespaces (`wtb-<pid>-...`) whose creating
/// process no longer runs. Safe while other test processes run.
pub fn cleanup_stale() -> Result<Vec<String>> {
    remove_matching(|name| {
        owner_pid(name).is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    })
}

/// Removes `wtb-<our pid>-...` namespaces: with our pid in their name they
/// can only come from a dead process that had the same pid. Called once,
/// before this process creates its first node.
pub(crate) fn cleanup_own_pid_leftovers() {
    let own = std::process::id();
    if let Err(err) = remove_matching(|name| owner_pid(name) == Some(own)) {
        eprintln!("weft-testbed: removing leftovers of an earlier process with pid {own}: {err}");
    }
}

/// The pid in a `wtb-<pid>-...` name.
fn owner_pid(name: &str) -> Option<u32> {
    name.strip_prefix(DEFAULT_PREFIX)?
        .split('-')
        .next()?
        .parse()
        .ok()
}

fn remove_matching(matches: impl Fn(&str) -> bool) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(Error::Io {
                path: NETNS_DIR.into(),
                source,
            });
        }
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| matches(name))
        .collect();
    names.sort();
    // Pods before their node, so veths go away with the pod namespaces.
    names.sort_by_key(|name| name.ends_with("-node"));
    for name in &names {
        kill_all_in(&Path::new(NETNS_DIR).join(name));
        delete_by_name(name);
    }
    Ok(names)
}

/// Checks a namespace-name prefix given by a caller.
pub(crate) fn validate_prefix(prefix: &str) -> Result<()> {
    let reason = if prefix.len() < 3 || prefix.len() > 40 {
        Some("must be 3 to 40 characters")
    } else if !prefix.ends_with('-') {
        Some("must end with '-'")
    } else if !prefix
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        Some("only lowercase letters, digits and '-' are allowed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidName {
            what: "namespace prefix",
            value: prefix.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_parses_default_names_only() {
        assert_eq!(owner_pid("wtb-1234-0-node"), Some(1234));
        assert_eq!(owner_pid("wtb-1234-7-a"), Some(1234));
        assert_eq!(owner_pid("weft-demo-node"), None);
        assert_eq!(owner_pid("wtb-x-0-node"), None);
        assert_eq!(owner_pid("cni-1234"), None);
    }

    #[test]
    fn broad_prefixes_are_refused() {
        for bad in ["", "w-", "wtb", "WTB-", "wtb_-", &"a".repeat(41)] {
            let err = validate_prefix(bad).expect_err(bad);
            assert!(err.to_string().contains("namespace prefix"), "{err}");
        }
        validate_prefix("wtb-").unwrap();
        validate_prefix("weft-demo-").unwrap();
    }
}
