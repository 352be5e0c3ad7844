//! The request lifecycle: authenticate the caller, authorize (agent ↔ profile), approval gate,
//! cache or mint, audit, respond. Plain async code over the [`Issuer`] trait.
//!
//! Where things are:
//! * `issue`: one credential request, top-down, as a sequence of named steps.
//! * `decision`: [`authorize`], the pure decision, and the [`Grant`] only it can build.
//! * `approval_gate`: redeeming an approval exactly once, or opening a request.
//! * `cache`: the cache of issued sessions (single flight, delivery, purge).
//! * `sessions`: the live-session index. `limits`: counters, rate limits and the breaker trip.
//! * `records`: refusals and other audit records. `volume`: what one agent can make the log
//!   write.
//! * `control`: the human side (votes, revocation, pause and breakers).
//! * `request`, `error`, `state`, `parts`: the types in and out, and building a [`Broker`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::audit::AuditLog;
use crate::aws::Issuer;
use crate::store::SessionInfo;

mod agent_view;
mod approval_gate;
mod cache;
mod console_events;
mod control;
mod decision;
mod error;
mod issue;
mod limits;
mod parts;
mod records;
mod request;
mod sessions;
mod shared;
mod state;
mod status;
mod volume;

pub use cache::servable;
pub use console_events::ConsoleEvent;
pub use control::{Controls, RevokeReport, VoteReport};
pub use decision::{Candidate, Decision, Grant, authorize};
pub use error::{BrokerError, Denial, DenyCode, Pending};
pub use parts::{Clock, Parts, random_id};
pub use request::{Caller, ConsoleUser, CredRequest, Issued};
pub use shared::Freshness;
pub use state::State;

pub struct Broker<I: Issuer> {
    state: RwLock<Arc<State>>,
    issuer: I,
    audit: AuditLog,
    cache: Mutex<HashMap<cache::CacheKey, cache::Slot>>,
    sessions: Mutex<Vec<SessionInfo>>,
    parts: Parts,
    controls: RwLock<Arc<Controls>>,
    counters: Mutex<HashMap<String, limits::Counters>>,
    volume: volume::Volume,
    /// Serializes changes to revocations, trips and the pause (rare, human-driven).
    admin: tokio::sync::Mutex<()>,
    /// Team mode: how current this daemon's view of the shared store is.
    view: Mutex<shared::View>,
}

/// Upper bound on how long a caller may wait for a mint, however STS behaves.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests;
