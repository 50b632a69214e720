//! The [`weft_xds::Generator`] weftd serves: translation of the current
//! [`MeshView`] for the requesting proxy, served from
//! [`crate::xds_cache::XdsCache`] (encoded resources only; the part that
//! does not depend on the proxy is computed once per scope and shared;
//! endpoint changes rebuild only the changed services' assignments).

use std::sync::{Arc, Mutex, PoisonError};

use weft_xds::{Generator, NodeInfo, ResourceSet};

use super::{MeshView, ProxyNode, ProxyResources};
use crate::xds_cache::{ViewChange, XdsCache};

/// Serves translation over ADS. Swap in a new view with [`Self::update`]
/// (or [`Self::update_endpoints`]) and then trigger a push.
#[derive(Debug)]
pub struct TranslationGenerator {
    cache: XdsCache,
    /// The last decoded translation asked for with [`Self::resources`]
    /// (debug and tools; pushes never decode).
    decoded: Mutex<Option<(String, u64, Arc<ProxyResources>)>>,
}

impl TranslationGenerator {
    /// A generator serving `view`.
    pub fn new(view: MeshView) -> TranslationGenerator {
        TranslationGenerator {
            cache: XdsCache::new(view),
            decoded: Mutex::new(None),
        }
    }

    /// Replaces the view (new snapshot); everything is recomputed on
    /// demand.
    pub fn update(&self, view: MeshView) {
        self.cache.update(view);
    }

    /// Replaces the view after a change of workload objects only (see
    /// [`XdsCache::update_endpoints`]); returns what was applied, so the
    /// caller pushes EDS only or everything.
    pub fn update_endpoints(&self, view: MeshView) -> ViewChange {
        self.cache.update_endpoints(view)
    }

    /// The current view.
    pub fn view(&self) -> Arc<MeshView> {
        self.cache.view()
    }

    /// The cache (encoded resources per proxy, shared scope parts).
    pub fn cache(&self) -> &XdsCache {
        &self.cache
    }

    /// The decoded translation for `node` under the current view, or why
    /// the node cannot be translated for. Translates on demand (the last
    /// result is kept); pushes use the encoded cache instead.
    pub fn resources(&self, node: &NodeInfo) -> Result<Arc<ProxyResources>, super::NodeError> {
        let view = self.view();
        {
            let memo = self.decoded.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((id, version, res)) = memo.as_ref()
                && *id == node.id
                && *version == view.version
            {
                return Ok(Arc::clone(res));
            }
        }
        let proxy = ProxyNode::from_node(&node.node)?;
        let res = Arc::new(view.translate(&proxy));
        *self.decoded.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((node.id.clone(), view.version, Arc::clone(&res)));
        Ok(res)
    }
}

impl Generator for TranslationGenerator {
    fn generate(&self, node: &NodeInfo, type_url: &str) -> ResourceSet {
        let set = if type_url == weft_xds::nds::NAME_TABLE {
            self.cache.name_table(&node.node)
        } else {
            self.cache.generate(&node.node, type_url)
        };
        match set {
            Ok(set) => set,
            Err(e) => {
                tracing::warn!(node = %node.id, error = %e, "cannot translate for this proxy");
                ResourceSet::new()
            }
        }
    }

    fn forget(&self, node: &NodeInfo) {
        self.cache.forget(&node.id);
        let mut memo = self.decoded.lock().unwrap_or_else(PoisonError::into_inner);
        if memo.as_ref().is_some_and(|(id, _, _)| *id == node.id) {
            *memo = None;
        }
    }
}
