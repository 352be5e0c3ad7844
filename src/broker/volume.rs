//! What one agent can make the audit log write (review point 3): cached deliveries of one
//! session to one uid are coalesced per window, and refusal records have a per-agent budget.
//! Pure bookkeeping over a clock the caller passes in; the broker writes what it returns.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::audit::Record;

/// Refusal records one agent (or one unknown uid) may cause in a burst...
pub const REFUSAL_BURST: u64 = 20;
/// ...and then one per this many seconds; the others are counted in the next one written.
pub const REFUSAL_EVERY_SECS: i64 = 10;

/// Whose refusals a budget counts: the agent when the caller is one, else the uid.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Who {
    Agent(String),
    Uid(u32),
    Unknown,
}

impl std::fmt::Display for Who {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Who::Agent(a) => write!(f, "agent {a}"),
            Who::Uid(u) => write!(f, "uid {u}"),
            Who::Unknown => f.write_str("an unknown caller"),
        }
    }
}

/// What to write for one cached delivery.
#[derive(Debug)]
pub enum DeliveryWrite {
    /// Counted in the open window; nothing to write now.
    Counted,
    /// No coalescing (`delivery_window = "0s"`): one record per delivery.
    Each(Box<Record>),
    /// A new window: close the previous one (its further deliveries, if any), then write the
    /// window's first record durably before the credential leaves.
    Opened {
        closed: Option<Box<Record>>,
        first: Box<Record>,
    },
}

struct Window {
    opened: i64,
    /// Deliveries after the first, not yet written.
    extra: u64,
    /// The record the window's summary is written from (the first delivery's).
    template: Record,
}

struct Bucket {
    tokens: u64,
    refilled: i64,
    suppressed: u64,
}

#[derive(Default)]
pub struct Volume {
    windows: Mutex<HashMap<(String, Option<u32>), Window>>,
    refusals: Mutex<HashMap<Who, Bucket>>,
}

fn summary(w: &Window) -> Option<Record> {
    (w.extra > 0).then(|| {
        let mut r = w.template.clone();
        r.count = Some(w.extra);
        r.reason = None;
        r.message = Some(format!(
            "{} further cached deliveries of this session since the window opened",
            w.extra
        ));
        r
    })
}

impl Volume {
    /// One cached delivery of `session` (its request id) to `uid`, described by `record`.
    pub fn delivery(
        &self,
        session: &str,
        uid: Option<u32>,
        now: i64,
        window: Duration,
        record: Record,
    ) -> DeliveryWrite {
        if window.is_zero() {
            return DeliveryWrite::Each(Box::new(record));
        }
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let key = (session.to_owned(), uid);
        if let Some(w) = windows.get_mut(&key)
            && now < w.opened + window.as_secs() as i64
        {
            w.extra += 1;
            return DeliveryWrite::Counted;
        }
        let closed = windows
            .remove(&key)
            .as_ref()
            .and_then(summary)
            .map(Box::new);
        windows.insert(
            key,
            Window {
                opened: now,
                extra: 0,
                template: record.clone(),
            },
        );
        DeliveryWrite::Opened {
            closed,
            first: Box::new(record),
        }
    }

    /// Forgets the window of `session` and `uid` (its first record could not be written, so the
    /// next delivery must try again rather than be counted).
    pub fn forget(&self, session: &str, uid: Option<u32>) {
        self.windows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(session.to_owned(), uid));
    }

    /// Refusals counted over the budget and not yet in any record, per agent (or uid): taken,
    /// so that the caller writes them (every few seconds, and at shutdown).
    pub fn take_suppressed(&self) -> Vec<(Who, u64)> {
        let mut buckets = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        let out = buckets
            .iter_mut()
            .filter(|(_, b)| b.suppressed > 0)
            .map(|(who, b)| (who.clone(), std::mem::take(&mut b.suppressed)))
            .collect();
        // Buckets back at full strength carry nothing: drop them (bounded memory).
        buckets.retain(|_, b| b.tokens < REFUSAL_BURST || b.suppressed > 0);
        out
    }

    /// Closes every window older than `window` (all of them with `force`, at shutdown) and
    /// returns the summaries to write. Windows without further deliveries vanish silently.
    pub fn close_expired(&self, now: i64, window: Duration, force: bool) -> Vec<Record> {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        windows.retain(|_, w| {
            let expired = force || now >= w.opened + window.as_secs() as i64;
            if expired && let Some(r) = summary(w) {
                out.push(r);
            }
            !expired
        });
        out
    }

    /// Whether a refusal of `who` may be recorded now: `Some(n)` with the `n` refusals
    /// suppressed since the last one recorded, or `None` to count this one instead.
    pub fn refusal(&self, who: &Who, now: i64) -> Option<u64> {
        let mut buckets = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        let b = buckets.entry(who.clone()).or_insert(Bucket {
            tokens: REFUSAL_BURST,
            refilled: now,
            suppressed: 0,
        });
        let earned = ((now - b.refilled) / REFUSAL_EVERY_SECS).max(0) as u64;
        if earned > 0 {
            b.tokens = (b.tokens + earned).min(REFUSAL_BURST);
            b.refilled += earned as i64 * REFUSAL_EVERY_SECS;
        }
        if b.tokens == 0 {
            b.suppressed += 1;
            return None;
        }
        b.tokens -= 1;
        Some(std::mem::take(&mut b.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Kind;

    fn rec() -> Record {
        let mut r = Record::new(Kind::Delivered);
        r.reason = Some("r".into());
        r
    }

    #[test]
    fn deliveries_coalesce_per_session_uid_and_window() {
        let v = Volume::default();
        let w = Duration::from_secs(60);
        assert!(matches!(
            v.delivery("s1", Some(1), 0, w, rec()),
            DeliveryWrite::Opened { closed: None, .. }
        ));
        for t in 1..60 {
            assert!(matches!(
                v.delivery("s1", Some(1), t, w, rec()),
                DeliveryWrite::Counted
            ));
        }
        // Another uid or session has its own window.
        assert!(matches!(
            v.delivery("s1", Some(2), 5, w, rec()),
            DeliveryWrite::Opened { closed: None, .. }
        ));
        assert!(matches!(
            v.delivery("s2", Some(1), 5, w, rec()),
            DeliveryWrite::Opened { closed: None, .. }
        ));
        // The window closes: the next delivery writes the 59 counted ones, then its own.
        match v.delivery("s1", Some(1), 60, w, rec()) {
            DeliveryWrite::Opened {
                closed: Some(c),
                first,
            } => {
                assert_eq!(c.count, Some(59));
                assert_eq!(c.reason, None);
                assert_eq!(first.count, None);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            v.delivery("s1", Some(1), 61, w, rec()),
            DeliveryWrite::Counted
        ));
        // The sweeper closes expired windows; at shutdown, all.
        assert!(
            v.close_expired(100, w, false).is_empty(),
            "nothing counted in s1@2, s2"
        );
        let closed = v.close_expired(119, w, false);
        assert!(
            closed.is_empty(),
            "s1@1 reopened at 60 is not expired at 119"
        );
        let closed = v.close_expired(120, w, false);
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].count, Some(1));
        assert!(matches!(
            v.delivery("s3", None, 0, w, rec()),
            DeliveryWrite::Opened { .. }
        ));
        v.delivery("s3", None, 1, w, rec());
        assert_eq!(v.close_expired(2, w, true)[0].count, Some(1));
        // No coalescing at all.
        assert!(matches!(
            v.delivery("s1", Some(1), 0, Duration::ZERO, rec()),
            DeliveryWrite::Each(_)
        ));
    }

    #[test]
    fn refusal_records_have_a_budget_and_count_what_they_skip() {
        let v = Volume::default();
        let claude = Who::Agent("claude".into());
        let other = Who::Agent("other".into());
        for _ in 0..REFUSAL_BURST {
            assert_eq!(v.refusal(&claude, 0), Some(0));
        }
        for _ in 0..500 {
            assert_eq!(v.refusal(&claude, 5), None);
        }
        assert_eq!(v.refusal(&other, 5), Some(0), "per agent");
        assert_eq!(v.refusal(&claude, REFUSAL_EVERY_SECS), Some(500));
        assert_eq!(v.refusal(&claude, REFUSAL_EVERY_SECS), None);
        assert_eq!(v.refusal(&claude, 3 * REFUSAL_EVERY_SECS), Some(1));
        assert_eq!(v.refusal(&claude, 3 * REFUSAL_EVERY_SECS), Some(0));
        assert_eq!(v.refusal(&claude, 3 * REFUSAL_EVERY_SECS), None);
        assert_eq!(v.take_suppressed(), vec![(claude, 1)]);
        assert!(v.take_suppressed().is_empty(), "taken once");
    }
}
