//! What a compiled session can do, evaluated from the compiled policy document itself (not from
//! the profile), so the explanation describes the bytes that go to STS.

use std::collections::{BTreeMap, BTreeSet};

use crate::catalog::{self, AccessLevel, Action, RiskClass};
use crate::policy::{CompiledProfile, Effect};
use crate::profile::Approval;

/// One action the session can use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Usable {
    pub action: &'static Action,
    /// Resources of the allow statements that grant it.
    pub resources: BTreeSet<String>,
    /// Those of `resources` the action cannot act on (their ARNs fit none of its resource
    /// types): the statement grants it nothing there.
    pub unfit_resources: BTreeSet<String>,
    /// Granted only under a condition.
    pub conditional: bool,
    /// Some deny statement limits it to fewer resources or conditions.
    pub partly_denied: bool,
}

/// What becomes of one classified action the profile's allows reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fate {
    /// Denied in every session (the automatic Deny or the profile's own [[deny]]).
    Denied,
    /// Usable, because the profile opts into it; every session needs `approval`.
    NeedsApproval,
    /// Usable without a human: an action of an unreviewed service the profile names exactly.
    NamedExactly,
}

impl Fate {
    pub fn as_str(self) -> &'static str {
        match self {
            Fate::Denied => "denied",
            Fate::NeedsApproval => "needs approval",
            Fate::NamedExactly => "usable (named exactly, unreviewed)",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Explanation {
    pub usable: BTreeMap<AccessLevel, Vec<Usable>>,
    /// Destructive actions the automatic Deny covers.
    pub auto_denied: Vec<&'static Action>,
    /// Actions the profile's own [[deny]] blocks take away entirely.
    pub declared_denied: Vec<&'static Action>,
    /// Usable destructive actions (the profile's opt-ins): each session needs `approval`.
    pub needs_approval: Vec<&'static Action>,
    /// Every classified action the profile's allows reach, by class, with what becomes of it.
    pub classes: BTreeMap<RiskClass, Vec<(&'static Action, Fate)>>,
    /// The profile passes managed policies, whose grants are not analysed here.
    pub managed_policies: Vec<String>,
    pub approval: Approval,
}

impl Explanation {
    pub fn usable_count(&self) -> usize {
        self.usable.values().map(Vec::len).sum()
    }

    pub fn to_json(&self, c: &CompiledProfile) -> serde_json::Value {
        let names = |v: &[&Action]| v.iter().map(|a| a.full_name()).collect::<Vec<_>>();
        let usable: serde_json::Map<String, serde_json::Value> = self
            .usable
            .iter()
            .map(|(level, list)| {
                let items = list
                    .iter()
                    .map(|u| {
                        serde_json::json!({
                            "action": u.action.full_name(),
                            "resources": u.resources,
                            "unfit_resources": u.unfit_resources,
                            "conditional": u.conditional,
                            "partly_denied": u.partly_denied,
                            "destructive": u.action.is_destructive(),
                            "class": u.action.risk().map(|r| r.class.as_str()),
                        })
                    })
                    .collect::<Vec<_>>();
                (level.as_str().to_owned(), serde_json::Value::Array(items))
            })
            .collect();
        serde_json::json!({
            "profile": c.profile.name.as_str(),
            "policy_sha256": c.policy.sha256(),
            "usable_count": self.usable_count(),
            "usable": usable,
            "auto_denied": names(&self.auto_denied),
            "declared_denied": names(&self.declared_denied),
            "needs_approval": names(&self.needs_approval),
            "classes": self.classes.iter().map(|(class, list)| {
                let actions: Vec<serde_json::Value> = list.iter().map(|(a, fate)| serde_json::json!({
                    "action": a.full_name(),
                    "status": fate.as_str(),
                    "why": a.risk().map(|r| r.why()),
                })).collect();
                (class.as_str().to_owned(), serde_json::json!({
                    "description": class.describe(),
                    "denied": list.iter().filter(|(_, f)| *f == Fate::Denied).count(),
                    "needs_approval": list.iter().filter(|(_, f)| *f == Fate::NeedsApproval).count(),
                    "actions": actions,
                }))
            }).collect::<serde_json::Map<String, serde_json::Value>>(),
            "managed_policies": self.managed_policies,
            "managed_policies_analysed": false,
            "approval": self.approval.to_json(),
        })
    }
}

/// Evaluates the compiled document against every catalog action of the services it touches.
pub fn explain(c: &CompiledProfile) -> Explanation {
    let cat = catalog::catalog();
    let doc = &c.document;
    let auto: BTreeSet<(&str, &str)> = c.auto_denied.iter().map(|a| (a.service, a.name)).collect();
    let candidates: Box<dyn Iterator<Item = &'static Action>> = match c.profile.touched_services() {
        Some(services) => Box::new(
            services
                .into_iter()
                .flat_map(|s| cat.service(s).unwrap_or(&[]).iter())
                .collect::<Vec<_>>()
                .into_iter(),
        ),
        None => Box::new(cat.actions().iter()),
    };
    let mut usable: BTreeMap<AccessLevel, Vec<Usable>> = BTreeMap::new();
    let mut declared_denied = Vec::new();
    let mut needs_approval = Vec::new();
    let mut classes: BTreeMap<RiskClass, Vec<(&'static Action, Fate)>> = BTreeMap::new();
    for action in candidates {
        let allows: Vec<_> = doc
            .statement
            .iter()
            .filter(|s| s.effect == Effect::Allow && s.matches_action(action))
            .collect();
        if allows.is_empty() {
            continue;
        }
        let class = action.risk().map(|r| r.class);
        let denies: Vec<_> = doc
            .statement
            .iter()
            .filter(|s| s.effect == Effect::Deny && s.matches_action(action))
            .collect();
        if denies.iter().any(|s| s.is_blanket()) {
            if !auto.contains(&(action.service, action.name)) {
                declared_denied.push(action);
            }
            if let Some(class) = class {
                classes
                    .entry(class)
                    .or_default()
                    .push((action, Fate::Denied));
            }
            continue;
        }
        if let Some(class) = class {
            let fate = if c.profile.opts_into(action) || !c.profile.uses_unreviewed(action) {
                needs_approval.push(action);
                Fate::NeedsApproval
            } else {
                Fate::NamedExactly
            };
            classes.entry(class).or_default().push((action, fate));
        }
        let resources: BTreeSet<String> = allows
            .iter()
            .flat_map(|s| s.resource.iter().map(str::to_owned))
            .collect();
        let unfit_resources = resources
            .iter()
            .filter(|r| !action.can_take(r))
            .cloned()
            .collect();
        usable.entry(action.level).or_default().push(Usable {
            action,
            resources,
            unfit_resources,
            conditional: allows.iter().all(|s| s.condition.is_some()),
            partly_denied: !denies.is_empty(),
        });
    }
    Explanation {
        usable,
        auto_denied: c.auto_denied.clone(),
        declared_denied,
        needs_approval,
        classes,
        managed_policies: c
            .profile
            .managed_policies
            .iter()
            .map(|a| a.as_str().to_owned())
            .collect(),
        approval: c.profile.approval,
    }
}
