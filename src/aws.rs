//! The only module that touches the AWS SDK. The broker talks to STS through the [`Issuer`]
//! trait; [`SdkIssuer`] is the real one and tests use fakes.

use std::future::Future;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_sts::config::http::HttpResponse;
use aws_sdk_sts::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sts::types::{PolicyDescriptorType, Tag};

use crate::secret::Secret;

/// Everything AssumeRole is called with. Built only by the broker from a granted request.
#[derive(Clone, Debug)]
pub struct AssumeRoleInput {
    pub role_arn: String,
    pub session_name: String,
    pub policy: String,
    pub policy_arns: Vec<String>,
    pub duration_seconds: u32,
    pub source_identity: String,
    pub tags: Vec<(String, String)>,
    pub transitive_tag_keys: Vec<String>,
}

/// Temporary credentials from STS.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Secret,
    /// Unix seconds.
    pub expiration: i64,
    pub assumed_role_arn: String,
}

/// STS failures, classified into what a user can act on. Messages never include secrets or
/// raw SDK internals.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StsError {
    #[error(
        "STS refused AssumeRole on {role}: the role may not exist, or its trust policy does not allow the broker's identity to call sts:AssumeRole, sts:TagSession and sts:SetSourceIdentity ({detail})"
    )]
    AccessDenied { role: String, detail: String },
    #[error(
        "the broker's base AWS credentials have expired; renew them (e.g. `aws sso login`) and restart or retry"
    )]
    ExpiredBaseCredentials,
    #[error(
        "the broker's base AWS credentials are missing or invalid ({0}); configure the default credential chain for the daemon"
    )]
    InvalidBaseCredentials(String),
    #[error("the role {0} does not exist or cannot be assumed")]
    UnknownRole(String),
    #[error("STS rejected the session policy or tags as too large ({0}); shrink the profile")]
    PolicyTooLarge(String),
    #[error("STS rejected the request: {0}")]
    Invalid(String),
    #[error("STS is throttling requests; retried and gave up, try again shortly")]
    Throttled,
    #[error("STS is unavailable ({0}); retried and gave up")]
    Unavailable(String),
    #[error("STS did not answer in time; retried and gave up")]
    Timeout,
}

/// Something that can mint role sessions.
pub trait Issuer: Send + Sync + 'static {
    fn assume_role(
        &self,
        input: AssumeRoleInput,
    ) -> impl Future<Output = Result<Credentials, StsError>> + Send;
}

/// AssumeRole through aws-sdk-sts, with base credentials from the SDK's default chain.
pub struct SdkIssuer {
    client: aws_sdk_sts::Client,
    conf: aws_config::SdkConfig,
    /// The base credentials are themselves temporary (sessions are then capped at 1 h).
    pub base_is_temporary: bool,
}

impl SdkIssuer {
    /// Loads the default chain and checks that base credentials resolve.
    pub async fn new(
        region: &str,
        endpoint_url: Option<&str>,
        timeout: Duration,
    ) -> Result<Self, StsError> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(aws_config::Region::new(region.to_owned()))
            .retry_config(RetryConfig::standard().with_max_attempts(3))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(timeout)
                    .operation_attempt_timeout(timeout)
                    .operation_timeout(timeout * 4)
                    .build(),
            );
        if let Some(url) = endpoint_url {
            loader = loader.endpoint_url(url);
        }
        let conf = loader.load().await;
        let provider = conf
            .credentials_provider()
            .ok_or_else(|| StsError::InvalidBaseCredentials("no credential provider".into()))?;
        use aws_sdk_sts::config::ProvideCredentials;
        let creds = provider
            .provide_credentials()
            .await
            .map_err(|e| StsError::InvalidBaseCredentials(first_line(&e.to_string())))?;
        Ok(SdkIssuer {
            client: aws_sdk_sts::Client::new(&conf),
            conf: conf.clone(),
            base_is_temporary: creds.session_token().is_some(),
        })
    }
}

impl SdkIssuer {
    /// An IAM client with the same base credentials, region and endpoint.
    pub fn revoker(&self) -> SdkRevoker {
        SdkRevoker {
            iam: aws_sdk_iam::Client::new(&self.conf),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("IAM {op} on role {role} failed: {message}")]
pub struct IamError {
    pub op: &'static str,
    pub role: String,
    pub message: String,
}

pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Writes (or removes) the broker's revocation policy on a role, so that sessions already
/// issued are denied at AWS.
pub trait Revoker: Send + Sync + 'static {
    fn put_role_policy<'a>(
        &'a self,
        role_name: &'a str,
        policy_name: &'a str,
        document: &'a str,
    ) -> BoxFuture<'a, Result<(), IamError>>;
    /// Removes the policy; absent is fine.
    fn delete_role_policy<'a>(
        &'a self,
        role_name: &'a str,
        policy_name: &'a str,
    ) -> BoxFuture<'a, Result<(), IamError>>;
}

/// The real thing: aws-sdk-iam PutRolePolicy / DeleteRolePolicy.
pub struct SdkRevoker {
    iam: aws_sdk_iam::Client,
}

impl Revoker for SdkRevoker {
    fn put_role_policy<'a>(
        &'a self,
        role_name: &'a str,
        policy_name: &'a str,
        document: &'a str,
    ) -> BoxFuture<'a, Result<(), IamError>> {
        Box::pin(async move {
            self.iam
                .put_role_policy()
                .role_name(role_name)
                .policy_name(policy_name)
                .policy_document(document)
                .send()
                .await
                .map(drop)
                .map_err(|e| IamError {
                    op: "PutRolePolicy",
                    role: role_name.to_owned(),
                    message: iam_message(&e),
                })
        })
    }

    fn delete_role_policy<'a>(
        &'a self,
        role_name: &'a str,
        policy_name: &'a str,
    ) -> BoxFuture<'a, Result<(), IamError>> {
        Box::pin(async move {
            match self
                .iam
                .delete_role_policy()
                .role_name(role_name)
                .policy_name(policy_name)
                .send()
                .await
            {
                Ok(_) => Ok(()),
                Err(e) if e.code() == Some("NoSuchEntity") => Ok(()),
                Err(e) => Err(IamError {
                    op: "DeleteRolePolicy",
                    role: role_name.to_owned(),
                    message: iam_message(&e),
                }),
            }
        })
    }
}

fn iam_message<E: ProvideErrorMetadata + std::error::Error>(e: &E) -> String {
    match (e.code(), e.message()) {
        (Some(c), Some(m)) => first_line(&format!("{c}: {m}")),
        (Some(c), None) => c.to_owned(),
        // The SDK's own rendering of the whole source chain.
        _ => first_line(&aws_sdk_iam::error::DisplayErrorContext(e).to_string()),
    }
}

/// A revoker for brokers without AWS revocation (and tests): always refuses.
pub struct NoRevoker;

fn no_iam(op: &'static str, role: &str) -> BoxFuture<'static, Result<(), IamError>> {
    let err = IamError {
        op,
        role: role.to_owned(),
        message: "this broker has no IAM client".into(),
    };
    Box::pin(async move { Err(err) })
}

impl Revoker for NoRevoker {
    fn put_role_policy<'a>(
        &'a self,
        role_name: &'a str,
        _: &'a str,
        _: &'a str,
    ) -> BoxFuture<'a, Result<(), IamError>> {
        no_iam("PutRolePolicy", role_name)
    }
    fn delete_role_policy<'a>(
        &'a self,
        role_name: &'a str,
        _: &'a str,
    ) -> BoxFuture<'a, Result<(), IamError>> {
        no_iam("DeleteRolePolicy", role_name)
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").chars().take(200).collect()
}

impl Issuer for SdkIssuer {
    async fn assume_role(&self, input: AssumeRoleInput) -> Result<Credentials, StsError> {
        let mut req = self
            .client
            .assume_role()
            .role_arn(&input.role_arn)
            .role_session_name(&input.session_name)
            .policy(&input.policy)
            .duration_seconds(input.duration_seconds as i32)
            .source_identity(&input.source_identity);
        for arn in &input.policy_arns {
            req = req.policy_arns(PolicyDescriptorType::builder().arn(arn).build());
        }
        for (k, v) in &input.tags {
            let tag = Tag::builder()
                .key(k)
                .value(v)
                .build()
                .map_err(|e| StsError::Invalid(first_line(&e.to_string())))?;
            req = req.tags(tag);
        }
        for k in &input.transitive_tag_keys {
            req = req.transitive_tag_keys(k);
        }
        let out = req.send().await.map_err(|e| classify(e, &input.role_arn))?;
        let c = out
            .credentials()
            .ok_or_else(|| StsError::Unavailable("response without credentials".into()))?;
        Ok(Credentials {
            access_key_id: c.access_key_id().to_owned(),
            secret_access_key: Secret::new(c.secret_access_key().to_owned()),
            session_token: Secret::new(c.session_token().to_owned()),
            expiration: c.expiration().secs(),
            assumed_role_arn: out
                .assumed_role_user()
                .map(|u| u.arn().to_owned())
                .unwrap_or_default(),
        })
    }
}

fn classify<E: ProvideErrorMetadata + std::error::Error>(
    err: SdkError<E, HttpResponse>,
    role: &str,
) -> StsError {
    match &err {
        SdkError::TimeoutError(_) => return StsError::Timeout,
        SdkError::DispatchFailure(d) => {
            return if d.is_timeout() {
                StsError::Timeout
            } else {
                StsError::Unavailable("cannot connect to the STS endpoint".into())
            };
        }
        _ => {}
    }
    let code = err.code().unwrap_or("").to_owned();
    let message = first_line(err.message().unwrap_or(""));
    match code.as_str() {
        "AccessDenied" | "AccessDeniedException" => StsError::AccessDenied {
            role: role.to_owned(),
            detail: message,
        },
        "ExpiredToken" | "ExpiredTokenException" | "RequestExpired" => {
            StsError::ExpiredBaseCredentials
        }
        "InvalidClientTokenId" | "SignatureDoesNotMatch" | "UnrecognizedClientException" => {
            StsError::InvalidBaseCredentials(code)
        }
        "NoSuchEntity" => StsError::UnknownRole(role.to_owned()),
        "PackedPolicyTooLarge" | "PackedPolicyTooLargeException" => {
            StsError::PolicyTooLarge(message)
        }
        "MalformedPolicyDocument" | "MalformedPolicyDocumentException" | "ValidationError" => {
            if message.contains("length") || message.contains("size") {
                StsError::PolicyTooLarge(message)
            } else {
                StsError::Invalid(message)
            }
        }
        "Throttling"
        | "ThrottlingException"
        | "RequestLimitExceeded"
        | "TooManyRequestsException" => StsError::Throttled,
        "" => match &err {
            SdkError::ResponseError(_) => {
                StsError::Unavailable("unreadable response from STS".into())
            }
            SdkError::ServiceError(s) => {
                StsError::Unavailable(format!("HTTP {}", s.raw().status().as_u16()))
            }
            _ => StsError::Unavailable("request failed".into()),
        },
        other
            if other.starts_with("InternalFailure") || other.starts_with("ServiceUnavailable") =>
        {
            StsError::Unavailable(other.to_owned())
        }
        other => StsError::Invalid(format!("{other}: {message}")),
    }
}
