//! One request's answer: screening, the token, the broker's call, and the JSON response; every
//! refusal is audited within a per-second budget.

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};

use super::{Ctx, Route, screen};
use crate::audit::{Kind, Record};
use crate::aws::Issuer;
use crate::broker::{BrokerError, Caller, CredRequest, Issued, REQUEST_DEADLINE};
use crate::clock;

fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    json(
        status,
        serde_json::json!({ "code": code, "message": message }),
    )
}

/// Refusals before authentication are audited, but at most [`REFUSALS_PER_SECOND`] a second, so
/// an unauthenticated local process cannot fill the audit queue or the disk (which would stop
/// issuance for every agent). The number left out is recorded with the next refusal written.
pub const REFUSALS_PER_SECOND: u64 = 50;

#[derive(Default)]
pub(super) struct RefusalBudget {
    state: std::sync::Mutex<(u64, u64, u64)>, // (second, written this second, suppressed)
}

impl RefusalBudget {
    /// `Some(suppressed so far)` when this refusal may be written.
    fn take(&self) -> Option<u64> {
        let now = clock::unix_now() as u64;
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.0 != now {
            s.0 = now;
            s.1 = 0;
        }
        if s.1 >= REFUSALS_PER_SECOND {
            s.2 += 1;
            return None;
        }
        s.1 += 1;
        Some(std::mem::take(&mut s.2))
    }
}

/// What an HTTP client is told about a failure that is not a denial.
fn public_message(e: &BrokerError) -> &'static str {
    use crate::aws::StsError;
    match e {
        BrokerError::Denied(_) | BrokerError::Pending(_) => "refused",
        BrokerError::Store(_) => {
            "the broker's approval store is unavailable, so no credentials are issued"
        }
        BrokerError::Stale(_) => {
            "the broker cannot confirm that its shared state is current, so no credentials are issued"
        }
        BrokerError::Iam(_) => "the broker cannot reach AWS IAM",
        BrokerError::Audit(_) => {
            "the broker's audit log is unavailable, so no credentials are issued"
        }
        BrokerError::Sts(StsError::Throttled | StsError::Unavailable(_) | StsError::Timeout) => {
            "AWS STS is unavailable or throttling; retry shortly"
        }
        BrokerError::Sts(_) => {
            "the broker cannot obtain credentials for this profile; its operator can see why in the daemon's log"
        }
    }
}

fn refusal(code: &str, message: &str, agent: Option<&str>, path: &str) -> Record {
    let mut r = Record::new(Kind::Denied);
    r.agent = agent.map(str::to_owned);
    r.decision = Some("deny".into());
    r.code = Some(code.into());
    r.message = Some(format!("http {path}: {message}"));
    r
}

pub(super) async fn handle<I: Issuer>(
    ctx: &Ctx<I>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    // Refusals are recorded (within the per-second budget) once the response is decided.
    let mut refused: Option<Record> = None;
    let response = respond(ctx, req, &mut refused).await;
    if let Some(r) = refused {
        let _ = ctx.broker.audit().append(r).await;
    }
    response
}

async fn respond<I: Issuer>(
    ctx: &Ctx<I>,
    req: Request<Incoming>,
    refused: &mut Option<Record>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().chars().take(200).collect::<String>();
    let mut reject = |status: StatusCode, code: &str, message: &str, agent: Option<&str>| {
        if let Some(suppressed) = ctx.refusals.take() {
            let mut r = refusal(code, message, agent, &path);
            if suppressed > 0 {
                r.message = r.message.map(|m| {
                    format!(
                        "{m} ({suppressed} earlier refusals over the rate limit were not recorded)"
                    )
                });
            }
            *refused = Some(r);
        }
        error(status, code, message)
    };
    let headers: Vec<(&str, &[u8])> = req
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_bytes()))
        .collect();
    let target = req.uri().to_string();
    let screened = match screen(req.method().as_str(), &target, &headers, ctx.port) {
        Ok(s) => s,
        Err(r) => {
            let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST);
            let mut resp = reject(status, r.code, r.message, None);
            if r.status == 405 {
                resp.headers_mut()
                    .insert(hyper::header::ALLOW, HeaderValue::from_static("GET"));
            }
            return resp;
        }
    };
    let Some(agent) = ctx.tokens.agent_for(&screened.token) else {
        return reject(
            StatusCode::UNAUTHORIZED,
            "bad_token",
            "the Authorization token is not valid",
            None,
        );
    };
    let state = ctx.broker.state();
    let profile = match screened.route {
        Route::Default => match state
            .config
            .agents
            .get(&agent)
            .and_then(|a| a.default_profile.clone())
        {
            Some(p) => p.as_str().to_owned(),
            None => {
                return reject(
                    StatusCode::NOT_FOUND,
                    "no_default_profile",
                    "this agent has no default profile; request /profile/NAME",
                    Some(&agent),
                );
            }
        },
        Route::Profile(name) => name,
    };
    drop(state);
    let req = CredRequest {
        profile,
        agent: None,
        reason: None,
        duration_seconds: None,
        approval_id: None,
    };
    let result = tokio::time::timeout(
        REQUEST_DEADLINE,
        ctx.broker.credentials(Caller::Token { agent }, req),
    )
    .await;
    answer(result)
}

/// The response to the broker's answer, or to its taking longer than [`REQUEST_DEADLINE`].
fn answer(
    result: Result<Result<Issued, BrokerError>, tokio::time::error::Elapsed>,
) -> Response<Full<Bytes>> {
    match result {
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "the broker could not get credentials in time",
        ),
        // Denials name only the profile and the agent; other failures are described by class
        // only (no ARNs, AWS messages or OS errors), with the detail in the daemon's log.
        Ok(Err(BrokerError::Denied(d))) => {
            error(StatusCode::FORBIDDEN, d.code.as_str(), &d.message)
        }
        // The container agent is told the request id to hand to a human; nothing else.
        Ok(Err(e @ BrokerError::Pending(_))) => {
            error(StatusCode::FORBIDDEN, e.code(), &e.to_string())
        }
        Ok(Err(e)) => {
            tracing::warn!(code = e.code(), error = %e, "credential request over HTTP failed");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                e.code(),
                public_message(&e),
            )
        }
        Ok(Ok(issued)) => {
            let c = &issued.credentials;
            json(
                StatusCode::OK,
                serde_json::json!({
                    "AccessKeyId": c.access_key_id,
                    "SecretAccessKey": c.secret_access_key.expose(),
                    "Token": c.session_token.expose(),
                    "Expiration": clock::rfc3339(c.expiration),
                    "RoleArn": c.assumed_role_arn,
                }),
            )
        }
    }
}
