//! The [`weft_xds::Generator`] weftd serves: translation of the current
//! [`MeshView`] for the requesting proxy. One translation per proxy and
//! view version is cached, so the four types of one push translate once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use weft_xds::{Generator, NodeInfo, ResourceSet};

use super::{MeshView, ProxyNode, ProxyResources};

/// Serves translation over ADS. Swap in a new view with [`Self::update`]
/// and then trigger a push.
#[derive(Debug)]
pub struct TranslationGenerator {
    view: RwLock<Arc<MeshView>>,
    cache: Mutex<HashMap<String, (u64, Arc<ProxyResources>)>>,
}

impl TranslationGenerator {
    /// A generator serving `view`.
    pub fn new(view: MeshView) -> TranslationGenerator {
        TranslationGenerator {
            view: RwLock::new(Arc::new(view)),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Replaces the view (new snapshot); cached translations of older
    /// versions are dropped lazily.
    pub fn update(&self, view: MeshView) {
        *self.view.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(view);
    }

    /// The current view.
    pub fn view(&self) -> Arc<MeshView> {
        Arc::clone(&self.view.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The translation for `node` under the current view, or why the node
    /// cannot be translated for.
    pub fn resources(&self, node: &NodeInfo) -> Result<Arc<ProxyResources>, super::NodeError> {
        let view = self.view();
        let key = node.id.clone();
        {
            let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((version, res)) = cache.get(&key)
                && *version == view.version
            {
                return Ok(Arc::clone(res));
            }
        }
        // Translate without holding the cache: proxies translate in parallel.
        let proxy = ProxyNode::from_node(&node.node)?;
        let res = Arc::new(view.translate(&proxy));
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache.retain(|_, (v, _)| *v == view.version);
        cache.insert(key, (view.version, Arc::clone(&res)));
        Ok(res)
    }
}

impl Generator for TranslationGenerator {
    fn generate(&self, node: &NodeInfo, type_url: &str) -> ResourceSet {
        if type_url == weft_xds::nds::NAME_TABLE {
            return super::nds::generate(&self.view(), node);
        }
        match self.resources(node) {
            Ok(res) => res.resource_set(type_url),
            Err(e) => {
                tracing::warn!(node = %node.id, error = %e, "cannot translate for this proxy");
                ResourceSet::new()
            }
        }
    }
}
