//! What the client hands to weft-proxy: the [`ConfigHandler`] it calls for
//! each response and the [`Update`] / [`ResourceView`] describing the set
//! the proxy would hold. No I/O.

use std::collections::BTreeMap;

use envoy_types::pb::google::protobuf::Any;

/// One response as the proxy would hold it if it accepts.
#[derive(Debug)]
pub struct Update<'a> {
    /// The resource type.
    pub type_url: &'a str,
    /// The complete set after this response.
    pub resources: ResourceView<'a>,
    /// Names this response added or changed.
    pub changed: &'a [&'a str],
    /// Names no longer held: for LDS/CDS those absent from this response;
    /// for RDS/EDS those dropped since the last update because no listener
    /// or cluster needs them any more.
    pub removed: &'a [&'a str],
}

/// The complete set of a type after a response, without copying: what
/// was held, overlaid with the response (for LDS/CDS the response alone).
#[derive(Clone, Copy, Debug)]
pub struct ResourceView<'a> {
    pub(super) held: Option<&'a BTreeMap<String, Any>>,
    pub(super) incoming: &'a BTreeMap<String, Any>,
}

impl<'a> ResourceView<'a> {
    /// The resource called `name`.
    pub fn get(&self, name: &str) -> Option<&'a Any> {
        self.incoming
            .get(name)
            .or_else(|| self.held.and_then(|h| h.get(name)))
    }

    /// Number of resources.
    pub fn len(&self) -> usize {
        match self.held {
            None => self.incoming.len(),
            Some(h) => h.len() + self.incoming.keys().filter(|k| !h.contains_key(*k)).count(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All resources by name, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &'a Any)> + 'a {
        let mut held = self.held.into_iter().flatten().peekable();
        let mut incoming = self.incoming.iter().peekable();
        std::iter::from_fn(move || {
            let next = match (held.peek(), incoming.peek()) {
                (None, None) => return None,
                (Some(_), None) => held.next(),
                (None, Some(_)) => incoming.next(),
                (Some((h, _)), Some((i, _))) => match h.cmp(i) {
                    std::cmp::Ordering::Less => held.next(),
                    std::cmp::Ordering::Greater => incoming.next(),
                    std::cmp::Ordering::Equal => {
                        held.next();
                        incoming.next()
                    }
                },
            };
            next.map(|(k, v)| (k.as_str(), v))
        })
    }
}

/// Receives configuration. Returning `Err(message)` NACKs the response with
/// that message (name the resource and field); the handler must then keep
/// serving what it had.
pub trait ConfigHandler: Send + 'static {
    /// `resources` is the complete set of `type_url` after this response,
    /// in name order.
    fn apply(&mut self, type_url: &str, resources: &[Any]) -> Result<(), String>;

    /// The same with the changed and removed names and without copying
    /// the resources; override it to update incrementally. The default
    /// copies the set and calls [`ConfigHandler::apply`].
    fn apply_update(&mut self, update: &Update<'_>) -> Result<(), String> {
        let all: Vec<Any> = update.resources.iter().map(|(_, a)| a.clone()).collect();
        self.apply(update.type_url, &all)
    }
}

impl<F> ConfigHandler for F
where
    F: FnMut(&str, &[Any]) -> Result<(), String> + Send + 'static,
{
    fn apply(&mut self, type_url: &str, resources: &[Any]) -> Result<(), String> {
        self(type_url, resources)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_overlays_the_response_on_what_is_held() {
        let any = |v: u8| Any {
            type_url: "t".into(),
            value: vec![v],
        };
        let held: BTreeMap<String, Any> = [("a", 1), ("c", 1), ("d", 1)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), any(v)))
            .collect();
        let incoming: BTreeMap<String, Any> = [("b", 2), ("c", 2), ("e", 2)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), any(v)))
            .collect();
        let view = ResourceView {
            held: Some(&held),
            incoming: &incoming,
        };
        let all: Vec<(&str, u8)> = view.iter().map(|(k, v)| (k, v.value[0])).collect();
        assert_eq!(all, [("a", 1), ("b", 2), ("c", 2), ("d", 1), ("e", 2)]);
        assert_eq!(view.len(), 5);
        assert_eq!(view.get("c").unwrap().value, [2]);
        assert_eq!(view.get("d").unwrap().value, [1]);
        assert!(view.get("z").is_none());
        let only_response = ResourceView {
            held: None,
            incoming: &incoming,
        };
        assert_eq!(only_response.len(), 3);
        assert_eq!(only_response.iter().count(), 3);
    }
}
