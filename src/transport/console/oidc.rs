//! OpenID Connect sign-in for the approval console: the authorization code flow with PKCE
//! (S256), a nonce and a state, and a full check of the ID token against the provider's keys.
//!
//! [`Provider::begin`] gives the browser's redirect and a [`Pending`] the server keeps (keyed by
//! its `state`); [`Provider::finish`] exchanges the code from the callback and verifies the ID
//! token: signature against the JWKS (public-key algorithms only, never `none` or HMAC), `iss`
//! exactly the provider's issuer, `aud` naming our client (and `azp` our client whenever it is
//! present or there are several audiences), `exp` in the future (a minute of skew allowed), and
//! the nonce of this sign-in.
//!
//! Discovery (`{issuer}/.well-known/openid-configuration`) and the JWKS are cached for ten
//! minutes, and re-read once when an ID token names a key the cached JWKS lacks (key rotation).
//!
//! HTTP goes through our own client (hyper-util over hyper-rustls, aws-lc-rs): only the CA of
//! `ca_file` when given, else the system's roots; every request has a timeout, answers are capped
//! at 1 MiB, redirects are never followed, and at most [`MAX_IN_FLIGHT`] requests run at once.
//!
//! Error messages never carry a token, a code or the client secret.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreClientAuthMethod, CoreErrorResponseType, CoreIdToken,
    CoreIdTokenClaims, CoreIdTokenVerifier, CoreJsonWebKeySet, CoreJwsSigningAlgorithm,
    CoreProviderMetadata,
};
use openidconnect::{
    AsyncHttpClient, AuthType, AuthUrl, AuthorizationCode, ClaimsVerificationError, ClientId,
    ClientSecret, CsrfToken, HttpRequest, HttpResponse, IssuerUrl, Nonce, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, RequestTokenError, Scope, SignatureVerificationError,
    StandardErrorResponse, TokenResponse, TokenUrl,
};
use tokio::sync::{Mutex, Semaphore};

use crate::config::OidcConfig;
use crate::secret::Secret;

/// Each HTTP request to the provider (connect, send, whole answer) gets this long.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer read from the provider.
pub const MAX_BODY: usize = 1024 * 1024;
/// Discovery and the JWKS are re-read after this long.
pub const DISCOVERY_TTL: Duration = Duration::from_secs(10 * 60);
/// How far our clock may be ahead of the provider's when checking `exp`.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);
/// Requests to the provider in flight at most (others wait, within their timeout).
pub const MAX_IN_FLIGHT: usize = 16;
/// The largest client secret file read.
const MAX_SECRET_FILE: u64 = 4096;

/// ID-token signature algorithms accepted (public-key only), further narrowed to what the
/// provider's discovery document lists.
const ASYMMETRIC: [CoreJwsSigningAlgorithm; 8] = [
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
    CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    CoreJwsSigningAlgorithm::RsaSsaPssSha384,
    CoreJwsSigningAlgorithm::RsaSsaPssSha512,
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    CoreJwsSigningAlgorithm::EcdsaP384Sha384,
];

/// What went wrong in a sign-in. Messages say what to do; they never include a token, a code or
/// the client secret. [`OidcError::reason`] is a short stable code for the audit log.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("[console.oidc] client_secret_file {0}")]
    ClientSecret(String),
    #[error("[console.oidc] ca_file {0}")]
    CaFile(String),
    #[error("cannot set up TLS for the OpenID provider: {0}")]
    Tls(String),
    #[error("the console's redirect URL {0:?} is not a valid URL")]
    RedirectUrl(String),
    #[error("the system's random number generator failed; cannot start a sign-in")]
    Random,
    #[error("OpenID discovery for {issuer} failed: {detail}")]
    Discovery { issuer: String, detail: String },
    #[error("the sign-in callback has no usable authorization code; sign in again")]
    Callback,
    #[error("the token request to the OpenID provider failed: {0}")]
    TokenExchange(String),
    #[error(
        "the ID token's signature does not verify with the provider's published keys; refusing the sign-in"
    )]
    IdTokenSignature,
    #[error(
        "the ID token is unsigned or signed with a refused algorithm (only the provider's public-key algorithms are accepted, never none or HMAC); refusing the sign-in"
    )]
    IdTokenAlgorithm,
    #[error(
        "the ID token names a signing key the provider does not publish, even after re-reading its JWKS; refusing the sign-in"
    )]
    IdTokenUnknownKey,
    #[error("the ID token was not issued by {expected}; refusing the sign-in")]
    IdTokenIssuer { expected: String },
    #[error(
        "the ID token is not for this client ({client_id}): its aud or azp names another; refusing the sign-in"
    )]
    IdTokenAudience { client_id: String },
    #[error(
        "the ID token's nonce does not match this sign-in (a replayed or injected token); sign in again"
    )]
    IdTokenNonce,
    #[error("the ID token has expired (check this host's clock and the provider's); sign in again")]
    IdTokenExpired,
    #[error("the ID token is invalid: {0}; refusing the sign-in")]
    IdTokenInvalid(String),
}

impl OidcError {
    /// A short stable code for the audit log.
    pub fn reason(&self) -> &'static str {
        match self {
            OidcError::ClientSecret(_) => "client_secret",
            OidcError::CaFile(_) => "ca_file",
            OidcError::Tls(_) => "tls",
            OidcError::RedirectUrl(_) => "config",
            OidcError::Random => "random",
            OidcError::Discovery { .. } => "discovery",
            OidcError::Callback => "callback",
            OidcError::TokenExchange(_) => "token_exchange",
            OidcError::IdTokenSignature => "id_token_signature",
            OidcError::IdTokenAlgorithm => "id_token_algorithm",
            OidcError::IdTokenUnknownKey => "id_token_key",
            OidcError::IdTokenIssuer { .. } => "id_token_issuer",
            OidcError::IdTokenAudience { .. } => "id_token_audience",
            OidcError::IdTokenNonce => "id_token_nonce",
            OidcError::IdTokenExpired => "id_token_expired",
            OidcError::IdTokenInvalid(_) => "id_token_invalid",
        }
    }
}

/// A sign-in under way: what the server keeps between [`Provider::begin`] and
/// [`Provider::finish`]. The browser only ever sees `state`. Not `Clone`: one callback each.
pub struct Pending {
    state: String,
    nonce: Secret,
    verifier: Secret,
    created_at: Instant,
}

impl Pending {
    /// The `state` sent to the provider, to find this sign-in when the browser comes back.
    pub fn state(&self) -> &str {
        &self.state
    }

    pub fn created_at(&self) -> Instant {
        self.created_at
    }

    /// What the console seals into the browser's login cookie: state, nonce and PKCE verifier.
    pub fn parts(&self) -> (&str, &str, &str) {
        (&self.state, self.nonce.expose(), self.verifier.expose())
    }

    /// A sign-in back from its sealed parts, `age` old.
    pub fn from_parts(state: String, nonce: String, verifier: String, age: Duration) -> Pending {
        Pending {
            state,
            nonce: Secret::new(nonce),
            verifier: Secret::new(verifier),
            created_at: Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
        }
    }
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A prefix of the state is enough to tell sign-ins apart in a log.
        let prefix: String = self.state.chars().take(8).collect();
        f.debug_struct("Pending")
            .field("state", &format_args!("{prefix}…"))
            .field("nonce", &format_args!("[redacted]"))
            .field("verifier", &format_args!("[redacted]"))
            .field("created_at", &self.created_at)
            .finish()
    }
}

/// Who signed in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// `sub` as the provider gives it (1 to 255 bytes, no control characters).
    pub subject: String,
    /// Lowercased; `Some` only when the provider says `email_verified: true`.
    pub email: Option<String>,
}

/// The provider's configuration as discovered.
struct Discovered {
    /// Exactly as the discovery document names it (what `iss` must equal).
    issuer: IssuerUrl,
    auth_url: AuthUrl,
    token_url: TokenUrl,
    jwks: CoreJsonWebKeySet,
    algs: Vec<CoreJwsSigningAlgorithm>,
    /// Client authentication in the token request body (`client_secret_post`) instead of HTTP
    /// Basic, when the provider lists only that.
    secret_in_body: bool,
    fetched: Instant,
}

/// The OpenID provider approvers sign in with. `Send + Sync`; hold it in an `Arc`.
pub struct Provider {
    /// As configured (the `url` crate adds a `/` to a bare origin).
    issuer: url::Url,
    client_id: ClientId,
    client_secret: Option<Secret>,
    redirect: RedirectUrl,
    http: Http,
    /// Held while (re-)reading discovery, so concurrent sign-ins share one fetch.
    cache: Mutex<Option<Arc<Discovered>>>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("issuer", &self.issuer.as_str())
            .field("client_id", &self.client_id.as_str())
            .field("confidential", &self.client_secret.is_some())
            .finish_non_exhaustive()
    }
}

impl Provider {
    /// No network here. Reads `client_secret_file` (refused unless only its owner may read it)
    /// and `ca_file`.
    pub fn new(cfg: &OidcConfig, redirect_url: String) -> Result<Provider, OidcError> {
        let redirect = RedirectUrl::new(redirect_url.clone())
            .map_err(|_| OidcError::RedirectUrl(redirect_url))?;
        let client_secret = cfg
            .client_secret_file
            .as_deref()
            .map(read_client_secret)
            .transpose()?;
        let allow_http = cfg.issuer.scheme() == "http" && loopback(&cfg.issuer);
        let http = Http::new(cfg.ca_file.as_deref(), allow_http, REQUEST_TIMEOUT)?;
        Ok(Provider {
            issuer: cfg.issuer.clone(),
            client_id: ClientId::new(cfg.client_id.clone()),
            client_secret,
            redirect,
            http,
            cache: Mutex::new(None),
        })
    }

    /// The same provider with another per-request timeout (tests; the default is
    /// [`REQUEST_TIMEOUT`]).
    pub fn with_request_timeout(mut self, timeout: Duration) -> Provider {
        self.http.timeout = timeout;
        self
    }

    /// Starts a sign-in: the provider's authorization URL to redirect the browser to, and what
    /// the server keeps until the callback.
    pub async fn begin(&self) -> Result<(String, Pending), OidcError> {
        let d = self.discovered(None).await?;
        let state = random_token()?;
        let nonce = random_token()?;
        let verifier = random_token()?;
        let challenge =
            PkceCodeChallenge::from_code_verifier_sha256(&PkceCodeVerifier::new(verifier.clone()));
        let (s, n) = (state.clone(), nonce.clone());
        let client = self.client(&d);
        let (url, _, _) = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                move || CsrfToken::new(s),
                move || Nonce::new(n),
            )
            .add_scope(Scope::new("email".into()))
            .set_pkce_challenge(challenge)
            .url();
        Ok((
            url.to_string(),
            Pending {
                state,
                nonce: Secret::new(nonce),
                verifier: Secret::new(verifier),
                created_at: Instant::now(),
            },
        ))
    }

    /// Exchanges the callback's code (with the PKCE verifier, and the client secret if any) and
    /// verifies the ID token. The caller has matched the callback's `state` to `pending`.
    pub async fn finish(&self, pending: Pending, code: &str) -> Result<Identity, OidcError> {
        if code.is_empty() || code.len() > 2048 || code.chars().any(|c| c.is_control()) {
            return Err(OidcError::Callback);
        }
        let d = self.discovered(None).await?;
        let response = self
            .client(&d)
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .set_pkce_verifier(PkceCodeVerifier::new(pending.verifier.expose().to_owned()))
            .request_async(&self.http)
            .await
            .map_err(token_error)?;
        let Some(id_token) = response.id_token() else {
            return Err(OidcError::IdTokenInvalid(
                "the token endpoint's answer has none (is the \"openid\" scope allowed for this client?)".into(),
            ));
        };
        let nonce = Nonce::new(pending.nonce.expose().to_owned());
        let verified = match self.verify(&d, id_token, &nonce) {
            Err(ClaimsVerificationError::SignatureVerification(
                SignatureVerificationError::NoMatchingKey,
            )) => {
                // The provider may have rotated its keys since we read the JWKS: read it again,
                // once (unless another sign-in already did).
                tracing::info!(
                    issuer = d.issuer.as_str(),
                    "an ID token names a key the cached JWKS lacks; re-reading discovery and the JWKS"
                );
                let fresh = self.discovered(Some(&d)).await?;
                self.verify(&fresh, id_token, &nonce)
            }
            other => other,
        };
        verified.map_err(|e| claims_error(e, d.issuer.as_str(), self.client_id.as_str()))
    }

    fn verify(
        &self,
        d: &Discovered,
        id_token: &CoreIdToken,
        nonce: &Nonce,
    ) -> Result<Identity, ClaimsVerificationError> {
        let verifier = CoreIdTokenVerifier::new_public_client(
            self.client_id.clone(),
            d.issuer.clone(),
            d.jwks.clone(),
        )
        .set_allowed_algs(d.algs.iter().cloned())
        // Extra audiences are judged below by `azp`.
        .set_other_audience_verifier_fn(|_| true)
        .set_time_fn(|| (SystemTime::now() - CLOCK_SKEW).into());
        let claims = id_token.claims(&verifier, nonce)?;
        identity(claims, &self.client_id)
    }

    /// The OpenID client for one request (cheap: no network, no allocation worth caching).
    fn client(
        &self,
        d: &Discovered,
    ) -> CoreClient<
        openidconnect::EndpointSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointSet,
        openidconnect::EndpointNotSet,
    > {
        let mut c = CoreClient::new(self.client_id.clone(), d.issuer.clone(), d.jwks.clone())
            .set_auth_uri(d.auth_url.clone())
            .set_token_uri(d.token_url.clone())
            .set_redirect_uri(self.redirect.clone());
        if let Some(s) = &self.client_secret {
            c = c.set_client_secret(ClientSecret::new(s.expose().to_owned()));
            if d.secret_in_body {
                c = c.set_auth_type(AuthType::RequestBody);
            }
        }
        c
    }

    /// The cached discovery if fresh; else (or when `stale` is the cached one) read again.
    async fn discovered(
        &self,
        stale: Option<&Arc<Discovered>>,
    ) -> Result<Arc<Discovered>, OidcError> {
        let mut cache = self.cache.lock().await;
        if let Some(d) = cache.as_ref() {
            let refused = stale.is_some_and(|s| Arc::ptr_eq(s, d));
            if !refused && d.fetched.elapsed() < DISCOVERY_TTL {
                return Ok(d.clone());
            }
        }
        let d = Arc::new(self.discover().await?);
        tracing::debug!(
            issuer = d.issuer.as_str(),
            keys = d.jwks.keys().len(),
            "OpenID discovery read"
        );
        *cache = Some(d.clone());
        Ok(d)
    }

    async fn discover(&self) -> Result<Discovered, OidcError> {
        let configured = self.issuer.as_str();
        let fail = |detail: String| OidcError::Discovery {
            issuer: configured.trim_end_matches('/').to_owned(),
            detail,
        };
        let url = format!(
            "{}/.well-known/openid-configuration",
            configured.trim_end_matches('/')
        );
        let body = self.http.get_json(&url).await.map_err(|e| {
            fail(format!(
                "{e}; check [console.oidc] issuer and that the provider is reachable"
            ))
        })?;
        let meta: CoreProviderMetadata = serde_json::from_slice(&body).map_err(|e| {
            fail(format!(
                "the discovery document is not valid provider metadata (line {} column {})",
                e.line(),
                e.column()
            ))
        })?;
        let named = meta.issuer().as_str();
        if !issuer_matches(&self.issuer, named) {
            return Err(fail(format!(
                "the discovery document names the issuer {}; set [console.oidc] issuer to exactly the provider's issuer",
                shown(named)
            )));
        }
        let Some(token_url) = meta.token_endpoint() else {
            return Err(fail("the discovery document has no token_endpoint".into()));
        };
        for (what, u) in [
            (
                "authorization_endpoint",
                meta.authorization_endpoint().url(),
            ),
            ("token_endpoint", token_url.url()),
            ("jwks_uri", meta.jwks_uri().url()),
        ] {
            if !endpoint_ok(u, self.http.allow_http) {
                return Err(fail(format!(
                    "its {what} {} is not an https URL",
                    shown(u.as_str())
                )));
            }
        }
        // RFC 8414's field (not in OpenID discovery): refuse only a provider that lists methods
        // without S256.
        #[derive(serde::Deserialize)]
        struct Pkce {
            code_challenge_methods_supported: Option<Vec<String>>,
        }
        if let Ok(Pkce {
            code_challenge_methods_supported: Some(methods),
        }) = serde_json::from_slice::<Pkce>(&body)
            && !methods.iter().any(|m| m == "S256")
        {
            return Err(fail(
                "the provider does not support PKCE with S256 (code_challenge_methods_supported)"
                    .into(),
            ));
        }
        let algs: Vec<CoreJwsSigningAlgorithm> = ASYMMETRIC
            .iter()
            .filter(|a| meta.id_token_signing_alg_values_supported().contains(a))
            .cloned()
            .collect();
        if algs.is_empty() {
            return Err(fail(
                "the provider signs ID tokens with no public-key algorithm this console accepts (RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384)".into(),
            ));
        }
        let secret_in_body = meta
            .token_endpoint_auth_methods_supported()
            .is_some_and(|m| {
                m.contains(&CoreClientAuthMethod::ClientSecretPost)
                    && !m.contains(&CoreClientAuthMethod::ClientSecretBasic)
            });
        let jwks_body = self
            .http
            .get_json(meta.jwks_uri().url().as_str())
            .await
            .map_err(|e| fail(format!("reading its JWKS: {e}")))?;
        let jwks: CoreJsonWebKeySet = serde_json::from_slice(&jwks_body).map_err(|e| {
            fail(format!(
                "its JWKS is not a JSON Web Key Set (line {} column {})",
                e.line(),
                e.column()
            ))
        })?;
        Ok(Discovered {
            issuer: meta.issuer().clone(),
            auth_url: meta.authorization_endpoint().clone(),
            token_url: token_url.clone(),
            jwks,
            algs,
            secret_in_body,
            fetched: Instant::now(),
        })
    }
}

/// The identity in verified claims, after the checks the library leaves to us (`azp`, `sub`).
fn identity(
    claims: &CoreIdTokenClaims,
    client_id: &ClientId,
) -> Result<Identity, ClaimsVerificationError> {
    // OpenID Connect Core 3.1.3.7, 4 and 5: with several audiences `azp` must be present, and
    // when present it must be us.
    match claims.authorized_party() {
        Some(azp) if azp.as_str() != client_id.as_str() => {
            return Err(ClaimsVerificationError::InvalidAudience(
                "azp is another client".into(),
            ));
        }
        None if claims.audiences().len() > 1 => {
            return Err(ClaimsVerificationError::InvalidAudience(
                "several audiences and no azp".into(),
            ));
        }
        _ => {}
    }
    let subject = claims.subject().as_str();
    if subject.is_empty() || subject.len() > 255 || subject.chars().any(char::is_control) {
        return Err(ClaimsVerificationError::InvalidSubject(
            "the subject (sub) is empty, longer than 255 bytes or has control characters".into(),
        ));
    }
    let email = match (claims.email(), claims.email_verified()) {
        (Some(e), Some(true)) => plausible_email(e.as_str()),
        _ => None,
    };
    Ok(Identity {
        subject: subject.to_owned(),
        email,
    })
}

fn plausible_email(e: &str) -> Option<String> {
    let ok = e.len() <= 254
        && e.split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty())
        && !e.chars().any(|c| c.is_control() || c.is_whitespace());
    // ASCII only: Unicode case folding would map other addresses onto an approver's
    // (KELVIN SIGN lowercases to k).
    (ok && e.is_ascii()).then(|| e.to_ascii_lowercase())
}

/// Which ID-token failure this is. `issuer` and `client_id` are only echoed in messages.
fn claims_error(e: ClaimsVerificationError, issuer: &str, client_id: &str) -> OidcError {
    use ClaimsVerificationError as C;
    use SignatureVerificationError as S;
    match e {
        C::Expired(_) => OidcError::IdTokenExpired,
        C::InvalidAudience(_) => OidcError::IdTokenAudience {
            client_id: client_id.to_owned(),
        },
        C::InvalidIssuer(_) => OidcError::IdTokenIssuer {
            expected: issuer.to_owned(),
        },
        C::InvalidNonce(_) => OidcError::IdTokenNonce,
        C::SignatureVerification(s) => match s {
            S::NoMatchingKey => OidcError::IdTokenUnknownKey,
            S::DisallowedAlg(_) | S::NoSignature | S::UnsupportedAlg(_) => {
                OidcError::IdTokenAlgorithm
            }
            S::AmbiguousKeyId(_) | S::CryptoError(_) | S::InvalidKey(_) | S::Other(_) => {
                OidcError::IdTokenSignature
            }
            _ => OidcError::IdTokenSignature,
        },
        C::InvalidSubject(_) => OidcError::IdTokenInvalid(
            "the subject (sub) is empty, longer than 255 bytes or has control characters".into(),
        ),
        C::Unsupported(_) => OidcError::IdTokenInvalid(
            "it uses an unsupported JWT feature (typ, cty, crit or encryption)".into(),
        ),
        C::InvalidAuthContext(_) | C::InvalidAuthTime(_) | C::Other(_) => {
            OidcError::IdTokenInvalid("its claims are inconsistent".into())
        }
        _ => OidcError::IdTokenInvalid("its claims are inconsistent".into()),
    }
}

type TokenError = RequestTokenError<HttpError, StandardErrorResponse<CoreErrorResponseType>>;

fn token_error(e: TokenError) -> OidcError {
    match e {
        RequestTokenError::ServerResponse(r) => OidcError::TokenExchange(match r.error() {
            CoreErrorResponseType::InvalidGrant => "the provider refused the authorization code (invalid_grant): it was already used, has expired, or the PKCE verifier does not match; sign in again".into(),
            CoreErrorResponseType::InvalidClient => "the provider refused this client (invalid_client); check [console.oidc] client_id and client_secret_file".into(),
            CoreErrorResponseType::UnauthorizedClient => "this client may not use the authorization code flow at the provider (unauthorized_client); check the client's registration".into(),
            other => format!("the provider refused it ({})", error_code(other.as_ref())),
        }),
        RequestTokenError::Request(h) => OidcError::TokenExchange(h.to_string()),
        RequestTokenError::Parse(p, _body) => {
            if p.path().to_string().starts_with("id_token") {
                OidcError::IdTokenInvalid("it is not a well-formed signed JWT".into())
            } else {
                OidcError::TokenExchange(
                    "the provider's answer is not a token response".into(),
                )
            }
        }
        RequestTokenError::Other(_) => OidcError::TokenExchange(
            "the provider's answer is not a token response (an error status or not JSON)".into(),
        ),
    }
}

/// An OAuth error code from the provider, reduced to what such codes are made of.
fn error_code(s: &str) -> String {
    let c: String = s
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(40)
        .collect();
    if c.is_empty() {
        "no error code".into()
    } else {
        c
    }
}

/// A value from the provider shown in a message: quoted, escaped, at most 200 characters.
fn shown(s: &str) -> String {
    let cut: String = s.chars().take(200).collect();
    if cut.len() < s.len() {
        format!("{cut:?}…")
    } else {
        format!("{cut:?}")
    }
}

/// `named` (from discovery) is the configured issuer. Exact, except that `url` writes a bare
/// origin with a trailing `/`, so `https://idp.example` may be named with or without it.
fn issuer_matches(configured: &url::Url, named: &str) -> bool {
    let c = configured.as_str();
    named == c || (configured.path() == "/" && c.strip_suffix('/') == Some(named))
}

fn loopback(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        None => false,
    }
}

/// A provider endpoint: https, or plain http on loopback when the issuer itself is.
fn endpoint_ok(u: &url::Url, allow_http: bool) -> bool {
    match u.scheme() {
        "https" => true,
        "http" => allow_http && loopback(u),
        _ => false,
    }
}

/// 256 random bits as 64 hex digits (fine for state, nonce and a PKCE verifier).
fn random_token() -> Result<String, OidcError> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|_| OidcError::Random)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// The client secret: a trusted file only its owner may read (trailing newline ignored).
fn read_client_secret(path: &Path) -> Result<Secret, OidcError> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    let fail = |why: String| OidcError::ClientSecret(why);
    crate::os::trusted_file(path, "").map_err(|e| fail(e.trim_start().to_owned()))?;
    let file = std::fs::File::open(path).map_err(|e| fail(format!("{shown}: {e}")))?;
    let meta = file.metadata().map_err(|e| fail(format!("{shown}: {e}")))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(fail(format!(
            "{shown} may be read by group or others (mode {:04o}); run chmod 600 on it",
            meta.permissions().mode() & 0o7777
        )));
    }
    let mut text = Vec::new();
    file.take(MAX_SECRET_FILE + 1)
        .read_to_end(&mut text)
        .map_err(|e| fail(format!("{shown}: {e}")))?;
    let text = Secret::new(
        String::from_utf8(text).map_err(|_| fail(format!("{shown} is not UTF-8 text")))?,
    );
    if text.expose().len() as u64 > MAX_SECRET_FILE {
        return Err(fail(format!(
            "{shown} is larger than {MAX_SECRET_FILE} bytes"
        )));
    }
    let secret = text.expose().trim_end_matches(['\n', '\r']);
    if secret.is_empty() {
        return Err(fail(format!("{shown} is empty")));
    }
    if secret.chars().any(char::is_control) {
        return Err(fail(format!(
            "{shown} holds control characters; it must hold the secret alone, on one line"
        )));
    }
    Ok(Secret::new(secret.to_owned()))
}

/// Why a request to the provider failed (never a body, a header or a URL's query).
#[derive(Debug, thiserror::Error)]
enum HttpError {
    #[error("cannot connect ({0})")]
    Connect(String),
    #[error("no answer within {0} s")]
    Timeout(String),
    #[error("the answer is larger than 1 MiB")]
    TooLarge,
    #[error("the provider answered HTTP {0} (redirects are not followed)")]
    Redirect(u16),
    #[error("the provider answered HTTP {0}")]
    Status(u16),
    #[error("plain http is refused for a provider that is not on loopback")]
    PlainHttp,
    #[error("the request failed ({0})")]
    Other(String),
}

/// Our HTTP client for openidconnect: bounded in time, size and concurrency.
#[derive(Clone)]
struct Http {
    client: HyperClient<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
    allow_http: bool,
    permits: Arc<Semaphore>,
}

impl Http {
    fn new(ca_file: Option<&Path>, allow_http: bool, timeout: Duration) -> Result<Http, OidcError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = match ca_file {
            Some(path) => builder.with_tls_config(tls_with_ca(provider, path)?),
            None => match builder.with_provider_and_native_roots(provider.clone()) {
                Ok(b) => b,
                // A loopback test provider over plain http needs no roots.
                Err(_) if allow_http => hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(tls_config(provider, rustls::RootCertStore::empty())?),
                Err(e) => {
                    return Err(OidcError::Tls(format!(
                        "no system root certificates ({e}); set [console.oidc] ca_file"
                    )));
                }
            },
        };
        let https = builder.https_or_http().enable_http1().build();
        let client = HyperClient::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(4)
            .build(https);
        Ok(Http {
            client,
            timeout,
            allow_http,
            permits: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        })
    }

    /// GET a JSON document; anything but 200 is an error.
    async fn get_json(&self, url: &str) -> Result<Vec<u8>, HttpError> {
        let req = openidconnect::http::Request::get(url)
            .header("accept", "application/json")
            .body(Vec::new())
            .map_err(|_| HttpError::Other("invalid URL".into()))?;
        let resp = self.send(req).await?;
        let status = resp.status();
        if status.is_redirection() {
            return Err(HttpError::Redirect(status.as_u16()));
        }
        if status != 200 {
            return Err(HttpError::Status(status.as_u16()));
        }
        Ok(resp.into_body())
    }

    async fn send(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let (mut parts, body) = req.into_parts();
        match parts.uri.scheme_str() {
            Some("https") => {}
            Some("http") if self.allow_http => {}
            Some("http") => return Err(HttpError::PlainHttp),
            _ => return Err(HttpError::Other("not an http(s) URL".into())),
        }
        parts.headers.insert(
            hyper::header::USER_AGENT,
            hyper::header::HeaderValue::from_static(concat!("mandate/", env!("CARGO_PKG_VERSION"))),
        );
        let req = hyper::Request::from_parts(parts, Full::new(Bytes::from(body)));
        let work = async {
            let _permit = self
                .permits
                .acquire()
                .await
                .map_err(|_| HttpError::Other("shutting down".into()))?;
            let resp = self.client.request(req).await.map_err(|e| {
                if e.is_connect() {
                    HttpError::Connect(root_cause(&e))
                } else {
                    HttpError::Other(root_cause(&e))
                }
            })?;
            let (parts, body) = resp.into_parts();
            if parts
                .headers
                .get(hyper::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .is_some_and(|n| n > MAX_BODY as u64)
            {
                return Err(HttpError::TooLarge);
            }
            let body = Limited::new(body, MAX_BODY)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        HttpError::TooLarge
                    } else {
                        HttpError::Other("the answer broke off".into())
                    }
                })?
                .to_bytes();
            Ok(HttpResponse::from_parts(parts, body.to_vec()))
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| HttpError::Timeout(format!("{}", self.timeout.as_secs_f64())))?
    }
}

impl<'c> AsyncHttpClient<'c> for Http {
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(self.send(request))
    }
}

/// The innermost I/O error's kind ("connection refused"), else a generic phrase: stable text,
/// and nothing from the peer.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut io = None;
    while let Some(x) = cur {
        if let Some(i) = x.downcast_ref::<std::io::Error>() {
            io = Some(i.kind());
        }
        cur = x.source();
    }
    match io {
        Some(k) => k.to_string(),
        None => "no usable connection".into(),
    }
}

fn tls_config(
    provider: Arc<rustls::crypto::CryptoProvider>,
    roots: rustls::RootCertStore,
) -> Result<rustls::ClientConfig, OidcError> {
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| OidcError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// TLS trusting only the CA(s) of `path` (PEM).
fn tls_with_ca(
    provider: Arc<rustls::crypto::CryptoProvider>,
    path: &Path,
) -> Result<rustls::ClientConfig, OidcError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let bad = |why: String| OidcError::CaFile(format!("{}: {why}", path.display()));
    crate::os::trusted_file(path, "").map_err(|e| OidcError::CaFile(e.trim_start().to_owned()))?;
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("holds no PEM certificate".into()));
    }
    let mut roots = rustls::RootCertStore::empty();
    for c in certs {
        roots.add(c).map_err(|e| bad(e.to_string()))?;
    }
    tls_config(provider, roots)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn cfg(issuer: &str) -> OidcConfig {
        OidcConfig {
            issuer: url::Url::parse(issuer).unwrap(),
            client_id: "mandate-console".into(),
            client_secret_file: None,
            ca_file: None,
        }
    }

    #[test]
    fn provider_and_its_futures_are_send_and_sync() {
        fn send_sync<T: Send + Sync>(_: &T) {}
        fn send<T: Send>(_: T) {}
        let p = Provider::new(
            &cfg("http://localhost:1"),
            "http://localhost:8443/auth/callback".into(),
        )
        .unwrap();
        send_sync(&p);
        assert_eq!(
            format!("{p:?}"),
            "Provider { issuer: \"http://localhost:1/\", client_id: \"mandate-console\", confidential: false, .. }"
        );
        send(p.begin());
        let pending = Pending {
            state: "s".into(),
            nonce: Secret::new("n".into()),
            verifier: Secret::new("v".into()),
            created_at: Instant::now(),
        };
        send(p.finish(pending, "code"));
    }

    #[test]
    fn pending_debug_never_prints_nonce_or_verifier() {
        let p = Pending {
            state: "0123456789abcdef".into(),
            nonce: Secret::new("nonce-secret-value".into()),
            verifier: Secret::new("verifier-secret-value".into()),
            created_at: Instant::now(),
        };
        let d = format!("{p:?}");
        assert!(
            d.starts_with("Pending { state: 01234567…, nonce: [redacted], verifier: [redacted]"),
            "{d}"
        );
        assert!(
            !d.contains("nonce-secret")
                && !d.contains("verifier-secret")
                && !d.contains("89abcdef"),
            "{d}"
        );
        assert_eq!(p.state(), "0123456789abcdef");
    }

    #[test]
    fn random_tokens_are_256_bits_of_hex_and_differ() {
        let a = random_token().unwrap();
        let b = random_token().unwrap();
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        // A valid PKCE verifier (RFC 7636: 43 to 128 unreserved characters).
        assert!((43..=128).contains(&a.len()));
    }

    #[test]
    fn claims_errors_map_to_distinct_reasons() {
        use ClaimsVerificationError as C;
        use SignatureVerificationError as S;
        let cases: Vec<(ClaimsVerificationError, &str)> = vec![
            (C::Expired("x".into()), "id_token_expired"),
            (C::InvalidAudience("x".into()), "id_token_audience"),
            (C::InvalidIssuer("x".into()), "id_token_issuer"),
            (C::InvalidNonce("x".into()), "id_token_nonce"),
            (C::InvalidSubject("x".into()), "id_token_invalid"),
            (C::Unsupported("x".into()), "id_token_invalid"),
            (C::Other("x".into()), "id_token_invalid"),
            (C::InvalidAuthTime("x".into()), "id_token_invalid"),
            (C::SignatureVerification(S::NoMatchingKey), "id_token_key"),
            (
                C::SignatureVerification(S::NoSignature),
                "id_token_algorithm",
            ),
            (
                C::SignatureVerification(S::DisallowedAlg("HS256".into())),
                "id_token_algorithm",
            ),
            (
                C::SignatureVerification(S::UnsupportedAlg("x".into())),
                "id_token_algorithm",
            ),
            (
                C::SignatureVerification(S::CryptoError("x".into())),
                "id_token_signature",
            ),
            (
                C::SignatureVerification(S::InvalidKey("x".into())),
                "id_token_signature",
            ),
            (
                C::SignatureVerification(S::AmbiguousKeyId("x".into())),
                "id_token_signature",
            ),
        ];
        for (e, reason) in cases {
            let shown = format!("{e:?}");
            let o = claims_error(e, "https://idp.example", "mandate-console");
            assert_eq!(o.reason(), reason, "{shown}");
            // The library's detail (which may quote claims) never reaches our message.
            assert!(!o.to_string().contains("x;"), "{o}");
        }
        assert_eq!(
            claims_error(
                C::InvalidIssuer("found `evil`".into()),
                "https://idp.example",
                "c"
            )
            .to_string(),
            "the ID token was not issued by https://idp.example; refusing the sign-in"
        );
        assert_eq!(
            claims_error(C::InvalidAudience("x".into()), "i", "mandate-console").to_string(),
            "the ID token is not for this client (mandate-console): its aud or azp names another; refusing the sign-in"
        );
    }

    #[test]
    fn token_endpoint_error_codes_are_reduced() {
        assert_eq!(error_code("invalid_scope"), "invalid_scope");
        assert_eq!(error_code("a\u{1b}[31mb c\n"), "a31mbc");
        assert_eq!(error_code(""), "no error code");
        assert_eq!(error_code(&"x".repeat(100)).len(), 40);
    }

    #[test]
    fn issuer_must_match_exactly_but_for_the_slash_url_adds() {
        let bare = url::Url::parse("https://idp.example").unwrap();
        assert!(issuer_matches(&bare, "https://idp.example"));
        assert!(issuer_matches(&bare, "https://idp.example/"));
        assert!(!issuer_matches(&bare, "https://idp.example.evil"));
        assert!(!issuer_matches(&bare, "http://idp.example"));
        assert!(!issuer_matches(&bare, "https://idp.example/x"));
        let path = url::Url::parse("https://idp.example/realms/a").unwrap();
        assert!(issuer_matches(&path, "https://idp.example/realms/a"));
        assert!(!issuer_matches(&path, "https://idp.example/realms/a/"));
        assert!(!issuer_matches(&path, "https://idp.example/realms/ab"));
    }

    #[test]
    fn endpoints_are_https_or_loopback_http_for_a_loopback_issuer() {
        let u = |s: &str| url::Url::parse(s).unwrap();
        assert!(endpoint_ok(&u("https://idp.example/token"), false));
        assert!(!endpoint_ok(&u("http://idp.example/token"), false));
        assert!(!endpoint_ok(&u("http://localhost:1/token"), false));
        assert!(endpoint_ok(&u("http://localhost:1/token"), true));
        assert!(endpoint_ok(&u("http://127.0.0.1:1/token"), true));
        assert!(!endpoint_ok(&u("http://idp.example/token"), true));
        assert!(!endpoint_ok(&u("ftp://localhost/x"), true));
    }

    #[test]
    fn emails_are_lowercased_and_implausible_ones_dropped() {
        assert_eq!(
            plausible_email("Peer-1@Example.TEST").as_deref(),
            Some("peer-1@example.test")
        );
        assert_eq!(plausible_email("no-at-sign"), None);
        assert_eq!(plausible_email("@example.test"), None);
        assert_eq!(plausible_email("a b@example.test"), None);
        assert_eq!(plausible_email("a\u{7}@example.test"), None);
        assert_eq!(
            plausible_email(&format!("{}@x.test", "a".repeat(250))),
            None
        );
    }

    fn secret_file(mode: u32, text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client-secret");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        (dir, path)
    }

    #[test]
    fn client_secret_file_must_be_private() {
        for mode in [0o600, 0o400] {
            let (_d, path) = secret_file(mode, "s3cret-value\n");
            assert_eq!(read_client_secret(&path).unwrap().expose(), "s3cret-value");
        }
        for mode in [0o640, 0o604, 0o644] {
            let (_d, path) = secret_file(mode, "s3cret-value\n");
            let e = read_client_secret(&path).unwrap_err();
            assert_eq!(e.reason(), "client_secret");
            assert_eq!(
                e.to_string(),
                format!(
                    "[console.oidc] client_secret_file {} may be read by group or others (mode {mode:04o}); run chmod 600 on it",
                    path.display()
                )
            );
            assert!(!e.to_string().contains("s3cret"));
        }
    }

    #[test]
    fn client_secret_file_must_hold_one_line() {
        let (_d, path) = secret_file(0o600, "\n");
        let e = read_client_secret(&path).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "[console.oidc] client_secret_file {} is empty",
                path.display()
            )
        );
        let (_d, path) = secret_file(0o600, "a\nb\n");
        let e = read_client_secret(&path).unwrap_err();
        assert!(
            e.to_string()
                .ends_with("holds control characters; it must hold the secret alone, on one line"),
            "{e}"
        );
        assert!(!e.to_string().contains("a\nb"));
        let (_d, path) = secret_file(0o600, &"x".repeat(5000));
        let e = read_client_secret(&path).unwrap_err();
        assert!(e.to_string().ends_with("is larger than 4096 bytes"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let e = read_client_secret(&dir.path().join("missing")).unwrap_err();
        assert_eq!(e.reason(), "client_secret");
    }

    #[test]
    fn provider_new_reads_the_secret_and_refuses_a_readable_one() {
        let (_d, path) = secret_file(0o644, "s3cret-value");
        let mut c = cfg("http://localhost:1");
        c.client_secret_file = Some(path);
        let e = Provider::new(&c, "http://localhost:8443/auth/callback".into())
            .err()
            .unwrap();
        assert_eq!(e.reason(), "client_secret");
        let e = Provider::new(&cfg("http://localhost:1"), "not a url".into())
            .err()
            .unwrap();
        assert_eq!(e.reason(), "config");
        assert_eq!(
            e.to_string(),
            "the console's redirect URL \"not a url\" is not a valid URL"
        );
    }

    #[test]
    fn ca_file_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let mut c = cfg("https://idp.example");
        c.ca_file = Some(path.clone());
        let e = Provider::new(&c, "https://approve.example/auth/callback".into())
            .err()
            .unwrap();
        assert_eq!(e.reason(), "ca_file");
        assert_eq!(
            e.to_string(),
            format!(
                "[console.oidc] ca_file {}: holds no PEM certificate",
                path.display()
            )
        );
    }

    #[test]
    fn every_reason_is_a_short_stable_code() {
        let all = [
            OidcError::ClientSecret(String::new()),
            OidcError::CaFile(String::new()),
            OidcError::Tls(String::new()),
            OidcError::RedirectUrl(String::new()),
            OidcError::Random,
            OidcError::Discovery {
                issuer: String::new(),
                detail: String::new(),
            },
            OidcError::Callback,
            OidcError::TokenExchange(String::new()),
            OidcError::IdTokenSignature,
            OidcError::IdTokenAlgorithm,
            OidcError::IdTokenUnknownKey,
            OidcError::IdTokenIssuer {
                expected: String::new(),
            },
            OidcError::IdTokenAudience {
                client_id: String::new(),
            },
            OidcError::IdTokenNonce,
            OidcError::IdTokenExpired,
            OidcError::IdTokenInvalid(String::new()),
        ];
        let mut seen = std::collections::BTreeSet::new();
        for e in &all {
            let r = e.reason();
            assert!(
                r.len() <= 24 && r.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{r}"
            );
            assert!(seen.insert(r), "duplicate reason {r}");
        }
    }
}
