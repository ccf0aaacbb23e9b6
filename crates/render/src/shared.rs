//! What every machine's rendering reads besides the machine itself and its
//! lease, loaded once and kept until it changes.

use crate::ResolveError;
use plinth_model::{BootEnv, Kind, Name, Object, Param, ParamName, Profile, Stage, Subnet, Workflow};
use plinth_store::{Store, StoreError, StoreExt};
use std::collections::HashMap;
use std::sync::Arc;

/// Why a machine's view could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored object is invalid: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Resolve(#[from] ResolveError),
}

async fn all<T: Object>(store: &dyn Store, kind: Kind) -> Result<Vec<T>, LoadError> {
    store
        .list_all(kind, vec![])
        .await?
        .into_iter()
        .map(|r| plinth_model::decode(r.body).map_err(|e| LoadError::Corrupt(e.to_string())))
        .collect()
}

/// What every machine's rendering reads besides the machine itself and its
/// lease: profiles, params, templates, bootenvs, stages, workflows,
/// subnets and images, decoded once.
#[derive(Clone)]
pub struct Shared {
    pub profiles: HashMap<Name, Profile>,
    pub params: HashMap<ParamName, Param>,
    pub templates: Arc<HashMap<String, String>>,
    pub bootenvs: HashMap<Name, BootEnv>,
    pub stages: HashMap<Name, Stage>,
    pub workflows: HashMap<Name, Workflow>,
    pub subnets: HashMap<Name, Subnet>,
    pub images: HashMap<Name, plinth_model::Image>,
}

/// The kinds a [`Shared`] snapshot holds.
pub const SHARED_KINDS: &[Kind] = &[
    Kind::Profile,
    Kind::Param,
    Kind::Template,
    Kind::BootEnv,
    Kind::Stage,
    Kind::Workflow,
    Kind::Subnet,
    Kind::Image,
];

/// Reads a [`Shared`] snapshot from `store`.
pub async fn load_shared(store: &dyn Store) -> Result<Shared, LoadError> {
    Ok(Shared {
        profiles: all::<Profile>(store, Kind::Profile).await?.into_iter().map(|p| (p.name.clone(), p)).collect(),
        params: all::<Param>(store, Kind::Param).await?.into_iter().map(|p| (p.name.clone(), p)).collect(),
        templates: Arc::new(
            all::<plinth_model::Template>(store, Kind::Template)
                .await?
                .into_iter()
                .map(|t| (t.name.to_string(), t.contents))
                .collect(),
        ),
        bootenvs: all::<BootEnv>(store, Kind::BootEnv).await?.into_iter().map(|b| (b.name.clone(), b)).collect(),
        stages: all::<Stage>(store, Kind::Stage).await?.into_iter().map(|s| (s.name.clone(), s)).collect(),
        workflows: all::<Workflow>(store, Kind::Workflow).await?.into_iter().map(|w| (w.name.clone(), w)).collect(),
        subnets: all::<Subnet>(store, Kind::Subnet).await?.into_iter().map(|s| (s.name.clone(), s)).collect(),
        images: all::<plinth_model::Image>(store, Kind::Image)
            .await?
            .into_iter()
            .map(|i| (i.name.clone(), i))
            .collect(),
    })
}

/// A [`Shared`] snapshot kept between renders and dropped when any of its
/// kinds changes. Changes are published by the store before a write is
/// acknowledged, and every [`SharedCache::get`] first takes the ones
/// pending, so a render never sees content older than a write that was
/// already acknowledged.
pub struct SharedCache {
    store: Arc<dyn Store>,
    changes: std::sync::Mutex<tokio::sync::broadcast::Receiver<plinth_store::Change>>,
    current: std::sync::RwLock<Option<Arc<Shared>>>,
}

impl SharedCache {
    /// A cache over `store`, empty until first used.
    pub fn new(store: Arc<dyn Store>) -> SharedCache {
        let changes = std::sync::Mutex::new(store.subscribe());
        SharedCache { store, changes, current: std::sync::RwLock::new(None) }
    }

    /// The current snapshot, reloaded if content changed since the last.
    pub async fn get(&self) -> Result<Arc<Shared>, LoadError> {
        use tokio::sync::broadcast::error::TryRecvError;
        let stale = {
            let mut rx = self.changes.lock().unwrap_or_else(|p| p.into_inner());
            let mut stale = false;
            loop {
                match rx.try_recv() {
                    Ok(c) => stale |= SHARED_KINDS.contains(&c.kind),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Lagged(_)) => stale = true,
                    Err(TryRecvError::Closed) => {
                        stale = true;
                        break;
                    }
                }
            }
            stale
        };
        if !stale && let Some(s) = self.current.read().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(s);
        }
        // A change that lands while this loads waits in the receiver and
        // drops this snapshot at the next call.
        let fresh = Arc::new(load_shared(self.store.as_ref()).await?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(fresh.clone());
        Ok(fresh)
    }
}
