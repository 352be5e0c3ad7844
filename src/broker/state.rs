//! The validated config and compiled profiles the broker serves from, swapped as a whole.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use super::Broker;
use crate::aws::Issuer;
use crate::config::{Config, Loaded};
use crate::policy::CompiledProfile;

/// The validated config and compiled profiles, swapped as a whole on reload.
#[derive(Debug)]
pub struct State {
    pub config: Config,
    pub profiles: BTreeMap<String, Arc<CompiledProfile>>,
    /// The broker's base credentials are temporary: sessions are capped at one hour.
    pub base_is_temporary: bool,
    /// What approving a request for each profile unlocks (computed once per profile and config
    /// load, bounded by the number of profiles).
    unlocks: Mutex<HashMap<String, Arc<serde_json::Value>>>,
}

impl State {
    pub fn new(loaded: Loaded, base_is_temporary: bool) -> Self {
        State {
            profiles: loaded
                .profiles
                .into_iter()
                .map(|(k, v)| (k, Arc::new(v)))
                .collect(),
            config: loaded.config,
            base_is_temporary,
            unlocks: Mutex::new(HashMap::new()),
        }
    }

    /// `unlocks` of profile `name`, computed on first use.
    pub(crate) fn unlocks_of(
        &self,
        name: &str,
        compute: impl FnOnce(&CompiledProfile) -> serde_json::Value,
    ) -> Option<Arc<serde_json::Value>> {
        let c = self.profiles.get(name)?;
        let mut cache = self.unlocks.lock().unwrap_or_else(|e| e.into_inner());
        Some(
            cache
                .entry(name.to_owned())
                .or_insert_with(|| Arc::new(compute(c)))
                .clone(),
        )
    }
}

impl<I: Issuer> Broker<I> {
    pub fn state(&self) -> Arc<State> {
        self.state.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Swaps in a reloaded config; cache entries of changed profiles die with their hash.
    pub fn replace_state(&self, state: State) {
        self.forget_changed_profiles(&state);
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(state);
    }
}
