//! `[agents.NAME]`: who may speak for each agent, and which profiles it may use.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use toml::Spanned;
use toml::de::DeValue;

use crate::diag::quoted;
use crate::profile::{ProfileName, check_slug};

use super::parser::{ConfigParser, Key};
use super::{Agent, Approver};

/// Agent names appear in `SourceIdentity` (`mandate-NAME`, at most 64 characters at AWS) and in
/// session names (`mandate-NAME-REQUESTID`, at most 64), so they are shorter than other names.
pub const MAX_AGENT_NAME: usize = 40;

pub fn check_agent_name(name: &str) -> Result<(), String> {
    check_slug("agent name", name)?;
    if name.len() > MAX_AGENT_NAME {
        return Err(format!(
            "agent name {} is {} characters; at most {MAX_AGENT_NAME} (it goes into SourceIdentity and session names)",
            quoted(name),
            name.len()
        ));
    }
    Ok(())
}

const AGENT_KEYS: [&str; 5] = [
    "profiles",
    "uids",
    "operator",
    "token_file",
    "default_profile",
];

impl ConfigParser<'_> {
    /// `[agents]`: every `[agents.NAME]` in it, with the span of its name. False if any was
    /// wrong.
    pub(super) fn agents(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        agents: &mut BTreeMap<String, (Agent, Range<usize>)>,
    ) -> bool {
        self.named(value, "agents", Self::agent, |a, span| {
            agents.insert(a.name.clone(), (a, span));
        })
    }

    /// Every agent's operator must be one of the approvers.
    pub(super) fn operators_declared(
        &mut self,
        agents: &BTreeMap<String, (Agent, Range<usize>)>,
        approvers: &BTreeMap<String, Approver>,
    ) {
        for (agent, span) in agents.values() {
            if let Some(op) = &agent.operator
                && !approvers.contains_key(op)
            {
                self.w.err(
                    span.clone(),
                    &format!("agents.{}", agent.name),
                    format!("operator {} is not declared in [approvers]", quoted(op)),
                );
            }
        }
    }

    fn agent(&mut self, key: &Key<'_>, v: &Spanned<DeValue<'_>>) -> Option<Agent> {
        let name = key.get_ref().as_ref().to_owned();
        let path = format!("agents.{name}");
        let name_ok = check_agent_name(&name)
            .map_err(|m| self.w.err(key.span(), "agents", m))
            .is_ok();
        let t = self.table(v, &path)?;
        let mut profiles = None;
        let mut uids = Some(Vec::new());
        let mut operator = Some(None);
        let mut token_file = Some(None);
        let mut default_profile: Option<Option<(ProfileName, std::ops::Range<usize>)>> = Some(None);
        for (k, val) in t.iter() {
            let kp = format!("{path}.{}", k.get_ref());
            match k.get_ref().as_ref() {
                "profiles" => profiles = self.w.list(val, &kp, false, ProfileName::parse),
                "uids" => uids = self.uids(val, &kp),
                "operator" => {
                    operator = self
                        .w
                        .string(val, &kp, "an approver name")
                        .map(|s| Some(s.to_owned()))
                }
                "token_file" => token_file = self.path(val, &kp).map(Some),
                "default_profile" => {
                    default_profile = self.w.string(val, &kp, "a profile name").and_then(|s| {
                        ProfileName::parse(s)
                            .map_err(|m| self.w.err(val.span(), &kp, m))
                            .ok()
                            .map(|p| Some((p, val.span())))
                    })
                }
                _ => self.unknown(k, &path, &AGENT_KEYS),
            }
        }
        if profiles.is_none() && !t.keys().any(|k| k.get_ref() == "profiles") {
            self.w
                .err(v.span(), &path, "missing required key \"profiles\"");
        }
        if !name_ok {
            return None;
        }
        let mut profiles: Vec<ProfileName> = profiles?;
        let unique: BTreeSet<_> = profiles.iter().cloned().collect();
        profiles = unique.into_iter().collect();
        let default_profile = match default_profile? {
            Some((p, span)) if !profiles.contains(&p) => {
                self.w.err(
                    span,
                    &format!("{path}.default_profile"),
                    format!("{} is not one of this agent's profiles", quoted(p.as_str())),
                );
                return None;
            }
            other => other.map(|(p, _)| p),
        };
        Some(Agent {
            name,
            profiles,
            uids: uids?,
            operator: operator?,
            token_file: token_file?,
            default_profile,
        })
    }
}
