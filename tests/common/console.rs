//! Helpers for the console's tests: the node peers (the OpenID providers) and a small HTTP
//! client that shows status, headers and body.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::Guard;

pub fn node(script: &str) -> Command {
    let mut c = Command::new("node");
    c.arg(super::root().join("tests/console").join(script));
    c
}

/// A node server that prints one JSON line when it listens.
pub fn start_node(mut c: Command) -> (Guard, Value) {
    let mut child: Child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node runs (npm ci --prefix tests/console)");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("{line:?}"));
    (Guard(child), v)
}

/// The misbehaving provider (tests/console/evil_idp.mjs) on `port`, sending browsers back to
/// the console on `console_port`.
pub fn evil_idp(console_port: u16, port: u16, mode: &str, sub: &str) -> Guard {
    let mut c = node("evil_idp.mjs");
    c.env(
        "REDIRECT_URI",
        format!("http://localhost:{console_port}/auth/callback"),
    )
    .env("IDP_PORT", port.to_string())
    .env("MODE", mode)
    .env("SUB", sub);
    start_node(c).0
}

/// One HTTP/1.1 exchange on loopback: (status, headers, body).
pub fn http(
    port: u16,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    // Status 0: no connection (a console that turns connections away).
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, Vec::new(), String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut req = format!("{method} {target} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: localhost:{port}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    let _ = s.write_all(req.as_bytes());
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

pub fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

pub fn cookie_value(h: &[(String, String)], name: &str) -> Option<String> {
    h.iter()
        .filter(|(k, _)| k == "set-cookie")
        .filter_map(|(_, v)| v.split(';').next())
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, v)| *k == name && !v.is_empty())
        .map(|(_, v)| v.to_owned())
}

/// Switches the misbehaving provider's flaw (and the subject it vouches for).
pub fn set_mode(idp_port: u16, mode: &str, sub: &str) {
    let host = format!("localhost:{idp_port}");
    let (status, _, body) = http(
        idp_port,
        "GET",
        &format!("/mode?set={mode}&sub={sub}"),
        &[("Host", &host)],
        "",
    );
    assert_eq!(status, 200, "{body}");
}

/// Signs in over plain HTTP against the misbehaving provider; the callback's answer.
pub fn sign_in_over_http(port: u16, idp_port: u16) -> (u16, Vec<(String, String)>, String) {
    let (status, h, _) = http(port, "GET", "/auth/login", &[], "");
    assert_eq!(status, 303);
    let login = cookie_value(&h, "__Host-mandate_login").expect("a login cookie");
    let authorize = header(&h, "location").unwrap().to_owned();
    let path = authorize
        .strip_prefix(&format!("http://localhost:{idp_port}"))
        .unwrap_or_else(|| panic!("{authorize}"));
    let (status, h, body) = http(
        idp_port,
        "GET",
        path,
        &[("Host", &format!("localhost:{idp_port}"))],
        "",
    );
    assert_eq!(status, 302, "{body}");
    let back = header(&h, "location").unwrap().to_owned();
    let path = back
        .strip_prefix(&format!("http://localhost:{port}"))
        .unwrap_or_else(|| panic!("{back}"));
    http(
        port,
        "GET",
        path,
        &[("Cookie", &format!("__Host-mandate_login={login}"))],
        "",
    )
}
