//! Request screening: the transport checks on a request head, before any token is looked at.

/// Whether `Host` names this listener on loopback (`127.0.0.1:P`, `localhost:P`, `[::1]:P`).
pub fn host_allowed(host: &str, port: u16) -> bool {
    let Some((name, p)) = host.rsplit_once(':') else {
        return false;
    };
    if p.parse::<u16>() != Ok(port) {
        return false;
    }
    matches!(
        name.to_ascii_lowercase().as_str(),
        "127.0.0.1" | "localhost" | "[::1]"
    )
}

/// Which profile a screened request asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/`: the agent's default profile.
    Default,
    /// `/profile/NAME`.
    Profile(String),
}

/// A request that passed the transport checks; the token is still unverified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Screened {
    pub token: Vec<u8>,
    pub route: Route,
}

/// Why a request is refused before it reaches the broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub code: &'static str,
    pub message: &'static str,
}

const fn refuse(status: u16, code: &'static str, message: &'static str) -> Refusal {
    Refusal {
        status,
        code,
        message,
    }
}

/// The transport checks, in order, as a pure function of the request head (fuzzed in
/// `fuzz/fuzz_targets/http_request.rs`). `target` is the request-target as sent: only the
/// origin form (`/path?query`) is accepted; the absolute form (`http://host/`) is what a client
/// sends to a proxy, and is refused like the proxy headers. Header names are compared
/// case-insensitively.
pub fn screen(
    method: &str,
    target: &str,
    headers: &[(&str, &[u8])],
    port: u16,
) -> Result<Screened, Refusal> {
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    };
    if method != "GET" {
        return Err(refuse(405, "method_not_allowed", "only GET is supported"));
    }
    if !target.starts_with('/') {
        return Err(refuse(
            400,
            "proxied",
            "absolute-form request targets (requests meant for a proxy) are refused; send the path only",
        ));
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    if ["x-forwarded-for", "forwarded", "via", "x-forwarded-host"]
        .iter()
        .any(|n| header(n).is_some())
    {
        return Err(refuse(
            400,
            "proxied",
            "requests through a proxy are refused",
        ));
    }
    let hosts = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("host"))
        .count();
    let host_ok = hosts == 1
        && header("host")
            .and_then(|v| std::str::from_utf8(v).ok())
            .is_some_and(|h| host_allowed(h, port));
    if !host_ok {
        return Err(refuse(
            403,
            "bad_host",
            "the Host header must name this loopback listener",
        ));
    }
    if header("content-length").is_some_and(|v| v != b"0") || header("transfer-encoding").is_some()
    {
        return Err(refuse(400, "bad_request", "a GET request has no body"));
    }
    let Some(token) = header("authorization") else {
        return Err(refuse(401, "no_token", "missing Authorization token"));
    };
    let route = if path == "/" {
        Route::Default
    } else if let Some(name) = path
        .strip_prefix("/profile/")
        .filter(|n| !n.is_empty() && n.len() <= 64 && !n.contains('/'))
    {
        Route::Profile(name.to_owned())
    } else {
        return Err(refuse(404, "not_found", "use / or /profile/NAME"));
    };
    Ok(Screened {
        token: token.to_vec(),
        route,
    })
}
