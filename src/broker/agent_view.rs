//! What an agent may learn about itself (the MCP server's questions): its profiles in plain
//! words, which of them would allow an action, and the state of its own approval requests.
//! The agent is the one the kernel's uid says (never what the request claims); every refusal
//! is audited like a credential refusal (within the agent's record budget, counted toward its
//! breaker), and another agent's request is refused exactly like one that does not exist.

use super::{Broker, BrokerError, Caller, Denial, DenyCode, volume};
use crate::approval::{ApprovalId, ApprovalRequest, Stage, Status};
use crate::audit::{Kind, Record};
use crate::aws::Issuer;
use crate::catalog::AccessLevel;
use crate::clock;
use crate::config::Agent;
use crate::policy::evaluate::{self, Verdict};
use crate::policy::{CompiledProfile, explain};
use crate::profile::Approval;

/// Example actions listed per access level in a capability (the counts are always whole).
const EXAMPLES_PER_LEVEL: usize = 8;

fn deny(code: DenyCode, message: String, agent: Option<&str>) -> Denial {
    Denial {
        code,
        message,
        agent: agent.map(str::to_owned),
    }
}

impl<I: Issuer> Broker<I> {
    /// The agent the caller is (by uid from the kernel, `requested` choosing among several).
    fn agent_of(&self, caller: &Caller, requested: Option<&str>) -> Result<Agent, Denial> {
        let state = self.state();
        match caller {
            Caller::Peer { uid, .. } => state
                .config
                .agent_for_uid(*uid, requested)
                .cloned()
                .map_err(|m| deny(DenyCode::UnknownCaller, m, None)),
            Caller::Token { agent } => state
                .config
                .agents
                .get(agent)
                .filter(|_| requested.is_none_or(|r| r == agent))
                .cloned()
                .ok_or_else(|| {
                    deny(
                        DenyCode::UnknownCaller,
                        format!("the token does not act as agent {agent}"),
                        None,
                    )
                }),
            Caller::Console(u) => Err(deny(
                DenyCode::UnknownCaller,
                format!("approver {} at the console is not an agent", u.approver),
                None,
            )),
        }
    }

    /// Audits a refused question (`what`: which one) and returns it as the error.
    async fn refuse_question(&self, caller: &Caller, what: &str, d: Denial) -> BrokerError {
        let mut r = Record::new(Kind::Denied);
        r.agent = d.agent.clone();
        r.uid = caller.uid();
        r.pid = caller.pid();
        r.decision = Some("deny".into());
        r.code = Some(d.code.as_str().into());
        r.message = Some(format!("{what}: {}", d.message));
        let who = match (&d.agent, caller.uid()) {
            (Some(a), _) => volume::Who::Agent(a.clone()),
            (None, Some(uid)) => volume::Who::Uid(uid),
            (None, None) => volume::Who::Unknown,
        };
        if let Some(suppressed) = self.volume.refusal(&who, self.now()) {
            if suppressed > 0 {
                r.count = Some(suppressed + 1);
            }
            if let Err(e) = self.audit.append_durable(r).await {
                return e.into();
            }
        }
        // Questions change nothing, so a wrong one never counts toward the agent's breaker
        // (a prompt-injected agent could otherwise lock itself out with typos); the volume
        // budget above bounds what they write.
        BrokerError::Denied(d)
    }

    /// The calling agent, or the audited refusal.
    async fn asking_agent(
        &self,
        caller: &Caller,
        requested: Option<&str>,
        what: &str,
    ) -> Result<Agent, BrokerError> {
        match self.agent_of(caller, requested) {
            Ok(a) => Ok(a),
            Err(d) => Err(self.refuse_question(caller, what, d).await),
        }
    }

    /// The caller's profiles: what each allows in plain words, whether a human must approve,
    /// and whether a stop button refuses it now.
    pub async fn capabilities(
        &self,
        caller: Caller,
        requested: Option<String>,
    ) -> Result<serde_json::Value, BrokerError> {
        let agent = self
            .asking_agent(&caller, requested.as_deref(), "capabilities")
            .await?;
        let state = self.state();
        let controls = self.controls();
        let profiles: Vec<serde_json::Value> = agent
            .profiles
            .iter()
            .filter_map(|p| state.profiles.get(p.as_str()))
            .map(|c| {
                let mut v = capability(c, &agent);
                if let Some(d) = controls.stopped(&agent.name, c.profile.name.as_str(), None) {
                    v["stopped"] = d.message.into();
                }
                v
            })
            .collect();
        Ok(serde_json::json!({ "agent": agent.name, "profiles": profiles }))
    }

    /// Which of the caller's profiles would allow `action` (on `resource`), and why the others
    /// do not; the least privileged one first.
    pub async fn which_profile(
        &self,
        caller: Caller,
        requested: Option<String>,
        action: String,
        resource: Option<String>,
    ) -> Result<serde_json::Value, BrokerError> {
        let agent = self
            .asking_agent(&caller, requested.as_deref(), "which_profile")
            .await?;
        let parsed = evaluate::parse_action(&action).and_then(|a| {
            resource
                .as_deref()
                .map(evaluate::parse_resource)
                .transpose()
                .map(|r| (a, r))
        });
        let (action, resource) = match parsed {
            Ok(p) => p,
            Err(m) => {
                let d = deny(DenyCode::BadRequest, m, Some(&agent.name));
                return Err(self.refuse_question(&caller, "which_profile", d).await);
            }
        };
        let state = self.state();
        let mut allowed = Vec::new();
        let mut not = Vec::new();
        for c in agent
            .profiles
            .iter()
            .filter_map(|p| state.profiles.get(p.as_str()))
        {
            let name = c.profile.name.as_str();
            match evaluate::evaluate(c, action, resource.as_deref()) {
                Verdict::Allowed {
                    conditional,
                    resources,
                } => allowed.push((
                    explain::explain(c).usable_count(),
                    serde_json::json!({
                        "profile": name,
                        "needs_approval": c.profile.approval != Approval::None,
                        "approval": approval_words(c.profile.approval, &agent),
                        "conditional": conditional,
                        "resources": resources,
                    }),
                )),
                v => not.push(serde_json::json!({ "profile": name, "why": why_not(&v) })),
            }
        }
        // Least privilege first: approval-free before approval, then fewer usable actions.
        allowed.sort_by_key(|(n, v)| (v["needs_approval"].as_bool().unwrap_or(true), *n));
        let allowed: Vec<serde_json::Value> = allowed.into_iter().map(|(_, v)| v).collect();
        let on = resource
            .as_deref()
            .map(|r| format!(" on {r}"))
            .unwrap_or_default();
        let answer = match allowed.first() {
            Some(best) => format!(
                "{} allows {action}{on}{}; the role's own policies must allow it too",
                best["profile"].as_str().unwrap_or_default(),
                if best["needs_approval"] == true {
                    " once a human approves the session"
                } else {
                    ""
                }
            ),
            None => format!(
                "none of agent {}'s profiles allows {action}{on}; an operator would have to add a profile (or a rule to one) that grants it",
                agent.name
            ),
        };
        Ok(serde_json::json!({
            "agent": agent.name,
            "action": action.full_name(),
            "resource": resource,
            "answer": answer,
            "allowed_by": allowed,
            "not_allowed_by": not,
        }))
    }

    /// One of the caller's own approval requests; anyone else's is refused exactly like an id
    /// that does not exist (and audited).
    pub async fn approval_status(
        &self,
        caller: Caller,
        requested: Option<String>,
        id: String,
    ) -> Result<serde_json::Value, BrokerError> {
        let agent = self
            .asking_agent(&caller, requested.as_deref(), "request_status")
            .await?;
        let parsed = match ApprovalId::parse(&id) {
            Ok(id) => id,
            Err(m) => {
                let d = deny(DenyCode::BadRequest, m, Some(&agent.name));
                return Err(self.refuse_question(&caller, "request_status", d).await);
            }
        };
        let lookup = parsed.clone();
        let found = self.db(move |s| s.get(&lookup)).await?;
        let r = match found {
            Some(r) if r.binding.agent == agent.name => r,
            _ => {
                let d = deny(
                    DenyCode::UnknownApproval,
                    format!("agent {} has no approval request {parsed}", agent.name),
                    Some(&agent.name),
                );
                return Err(self.refuse_question(&caller, "request_status", d).await);
            }
        };
        let mut v = status_view(&r, self.now());
        v["console_url"] = self
            .state()
            .config
            .console
            .as_ref()
            .map(|c| c.request_link(r.id.as_str()))
            .into();
        Ok(v)
    }

    /// A request a client refused before sending it (the MCP server's argument checks): audited
    /// like any refusal of this caller, and returned as the error.
    pub async fn client_refusal(
        &self,
        caller: Caller,
        requested: Option<String>,
        what: String,
        message: String,
    ) -> BrokerError {
        // Only an agent's own client reports its refusals; what it says is kept to one line of
        // printable text under a fixed name.
        let agent = match self.agent_of(&caller, requested.as_deref()) {
            Ok(a) => a,
            Err(d) => return self.refuse_question(&caller, "client_refusal", d).await,
        };
        let what = if CLIENT_TOOLS.contains(&what.as_str()) {
            what
        } else {
            "client".to_owned()
        };
        let message: String = message
            .chars()
            .map(|c| if printable(c) { c } else { '\u{fffd}' })
            .collect();
        let d = deny(DenyCode::BadRequest, message, Some(&agent.name));
        self.refuse_question(&caller, &what, d).await
    }
}

/// The names a client may report a refusal under (the MCP tools).
const CLIENT_TOOLS: [&str; 4] = [
    "mcp list_capabilities",
    "mcp request_capability",
    "mcp request_status",
    "mcp which_profile",
];

/// Neither a control character nor one that reorders or hides text (bidirectional controls,
/// zero-width characters): what a client writes into the audit log reads as it is.
fn printable(c: char) -> bool {
    !c.is_control()
        && !matches!(c as u32, 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x2069 | 0xFEFF)
}

/// "your operator ann approves each session", in words.
fn approval_words(a: Approval, agent: &Agent) -> String {
    match a {
        Approval::None => "none: sessions are issued at once".into(),
        Approval::Operator => format!(
            "each session needs the approval of the agent's operator ({})",
            agent.operator.as_deref().unwrap_or("none set")
        ),
        Approval::Peers(n) => format!(
            "each session needs {n} approver{} other than the agent's operator",
            if n == 1 { "" } else { "s" }
        ),
    }
}

fn hours(seconds: u32) -> String {
    if seconds.is_multiple_of(3600) {
        format!("{} h", seconds / 3600)
    } else {
        format!("{} min", seconds / 60)
    }
}

/// One profile as an agent reads it.
fn capability(c: &CompiledProfile, agent: &Agent) -> serde_json::Value {
    let e = explain::explain(c);
    let p = &c.profile;
    let mut services: Vec<&str> = e
        .usable
        .values()
        .flatten()
        .map(|u| u.action.service)
        .collect();
    services.sort_unstable();
    services.dedup();
    let levels: serde_json::Map<String, serde_json::Value> = e
        .usable
        .iter()
        .map(|(level, list)| {
            (
                level.as_str().to_owned(),
                serde_json::json!({
                    "count": list.len(),
                    "examples": list.iter().take(EXAMPLES_PER_LEVEL).map(|u| u.action.full_name()).collect::<Vec<_>>(),
                }),
            )
        })
        .collect();
    let counts: Vec<String> = e
        .usable
        .iter()
        .map(|(level, list)| format!("{} {}", list.len(), level_words(*level)))
        .collect();
    let mut summary = format!(
        "{}. It can use {} action{} ({}) of {}.",
        p.description.trim_end_matches('.'),
        e.usable_count(),
        if e.usable_count() == 1 { "" } else { "s" },
        if counts.is_empty() {
            "none".to_owned()
        } else {
            counts.join(", ")
        },
        if services.is_empty() {
            "no service".to_owned()
        } else {
            services.join(", ")
        },
    );
    if !e.needs_approval.is_empty() {
        summary.push_str(&format!(
            " Destructive or escalating actions it may use: {}.",
            e.needs_approval
                .iter()
                .map(|a| a.full_name())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if !e.auto_denied.is_empty() {
        summary.push_str(&format!(
            " {} destructive action{} always denied.",
            e.auto_denied.len(),
            if e.auto_denied.len() == 1 {
                " is"
            } else {
                "s are"
            }
        ));
    }
    summary.push_str(&format!(
        " Sessions last {}; approval: {}.",
        hours(p.duration.seconds()),
        approval_words(p.approval, agent)
    ));
    if !p.managed_policies.is_empty() {
        summary.push_str(" It also passes managed policies, not analysed here.");
    }
    serde_json::json!({
        "profile": p.name.as_str(),
        "description": p.description,
        "summary": summary,
        "needs_approval": p.approval != Approval::None,
        "approval": approval_words(p.approval, agent),
        "duration_seconds": p.duration.seconds(),
        "access": c.access_type(),
        "services": services,
        "actions": levels,
        "destructive_usable": e.needs_approval.iter().map(|a| a.full_name()).collect::<Vec<_>>(),
        "destructive_denied": e.auto_denied.len(),
        "managed_policies": p.managed_policies.iter().map(|a| a.as_str()).collect::<Vec<_>>(),
    })
}

fn level_words(level: AccessLevel) -> &'static str {
    match level {
        AccessLevel::List => "list",
        AccessLevel::Read => "read",
        AccessLevel::Write => "write",
        AccessLevel::Tagging => "tagging",
        AccessLevel::PermissionsManagement => "permissions-management",
    }
}

fn why_not(v: &Verdict) -> String {
    match v {
        Verdict::AutoDenied => {
            "destructive: the automatic Deny refuses it in every session of this profile".into()
        }
        Verdict::Denied => "the profile's own deny rules refuse it".into(),
        Verdict::NotGranted => "the profile grants no such action".into(),
        Verdict::OtherResources(r) => format!(
            "granted only on other resources: {}",
            r.iter().take(8).cloned().collect::<Vec<_>>().join(", ")
        ),
        Verdict::Allowed { .. } => "allowed".into(),
    }
}

/// An approval request as its own agent sees it (the binding's reason is its own claim).
fn status_view(r: &ApprovalRequest, now: i64) -> serde_json::Value {
    let status = r.status(now);
    let have = r.votes.iter().filter(|v| v.approve).count().min(r.needed());
    // The same words as the pending answer of a credential request.
    let needs = r.requirement.to_string();
    let mut v = serde_json::json!({
        "id": r.id,
        "status": status.as_str(),
        "profile": r.binding.profile,
        "duration_seconds": r.binding.duration_seconds,
        "reason": r.binding.reason,
        "needs": needs,
        "have": have,
        "need": r.needed(),
        "expires": clock::rfc3339(r.pending_until),
    });
    match (&r.stage, status) {
        (Stage::Rejected { by, .. }, _) => {
            v["rejected_by"] = by.clone().into();
            v["note"] = r
                .votes
                .iter()
                .rev()
                .find(|v| !v.approve)
                .and_then(|v| v.note.clone())
                .into();
        }
        (Stage::Approved { use_by, .. }, Status::Approved) => {
            v["use_by"] = clock::rfc3339(*use_by).into();
        }
        (Stage::Redeemed { at, .. }, _) => {
            v["used_at"] = clock::rfc3339(*at).into();
        }
        _ => {}
    }
    v
}
