use std::os::unix::fs::PermissionsExt;

use super::tokens::{read_token, token_hash};
use super::*;

fn h(pairs: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static [u8])> {
    pairs.iter().map(|(n, v)| (*n, v.as_bytes())).collect()
}

type Case = (
    &'static str,
    &'static str,
    Vec<(&'static str, &'static str)>,
    Result<Route, &'static str>,
);

#[test]
fn screening_table() {
    let ok = [("Host", "127.0.0.1:9911"), ("Authorization", "tok")];
    let cases: Vec<Case> = vec![
        ("GET", "/", ok.to_vec(), Ok(Route::Default)),
        (
            "GET",
            "/profile/s3-data",
            vec![("host", "LOCALHOST:9911"), ("authorization", "t")],
            Ok(Route::Profile("s3-data".into())),
        ),
        (
            "GET",
            "/",
            vec![("Host", "[::1]:9911"), ("Authorization", "t")],
            Ok(Route::Default),
        ),
        ("POST", "/", ok.to_vec(), Err("method_not_allowed")),
        (
            "GET",
            "/",
            vec![("Host", "evil.example:9911"), ("Authorization", "t")],
            Err("bad_host"),
        ),
        (
            "GET",
            "/",
            vec![("Host", "127.0.0.1.nip.io:9911"), ("Authorization", "t")],
            Err("bad_host"),
        ),
        (
            "GET",
            "/",
            vec![("Host", "127.0.0.1"), ("Authorization", "t")],
            Err("bad_host"),
        ),
        (
            "GET",
            "/",
            vec![
                ("Host", "127.0.0.1:9911"),
                ("Host", "evil.example"),
                ("Authorization", "t"),
            ],
            Err("bad_host"),
        ),
        ("GET", "/", vec![("Authorization", "t")], Err("bad_host")),
        (
            "GET",
            "/",
            vec![
                ("Host", "127.0.0.1:9911"),
                ("Authorization", "t"),
                ("Via", "1.1 p"),
            ],
            Err("proxied"),
        ),
        (
            "GET",
            "/",
            vec![
                ("Host", "127.0.0.1:9911"),
                ("Authorization", "t"),
                ("Content-Length", "5"),
            ],
            Err("bad_request"),
        ),
        (
            "GET",
            "/",
            vec![("Host", "127.0.0.1:9911")],
            Err("no_token"),
        ),
        ("GET", "/profile/", ok.to_vec(), Err("not_found")),
        ("GET", "/profile/a/b", ok.to_vec(), Err("not_found")),
        ("GET", "/?x=1", ok.to_vec(), Ok(Route::Default)),
        // Absolute form, even with a loopback Host and the listener's own authority.
        ("GET", "http://evil.example/", ok.to_vec(), Err("proxied")),
        ("GET", "http://127.0.0.1:9911/", ok.to_vec(), Err("proxied")),
        (
            "GET",
            "HTTP://127.0.0.1:9911/profile/x",
            ok.to_vec(),
            Err("proxied"),
        ),
        ("GET", "*", ok.to_vec(), Err("proxied")),
    ];
    for (method, path, headers, want) in cases {
        let hs = h(&headers);
        let got = screen(method, path, &hs, 9911)
            .map(|s| s.route)
            .map_err(|r| r.code);
        assert_eq!(got, want, "{method} {path} {headers:?}");
    }
}

#[test]
fn tokens_are_held_only_as_hashes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let t = new_token();
    assert_eq!(t.len(), 64, "256 bits as hex");
    let file = dir.path().join("tok");
    std::fs::write(&file, &t).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(read_token(&file).unwrap(), token_hash(t.as_bytes()));
    std::fs::write(&file, format!("{t}\n")).unwrap();
    assert!(
        read_token(&file)
            .unwrap_err()
            .contains("ends with a newline")
    );
    std::fs::write(&file, "short").unwrap();
    assert!(read_token(&file).unwrap_err().contains("at least 32"));
    // What is stored is the hash: the plaintext is nowhere in the structure.
    std::fs::write(&file, &t).unwrap();
    let tokens = Tokens::default();
    tokens
        .inner
        .write()
        .unwrap()
        .insert("a".into(), (read_token(&file).unwrap(), None));
    assert_eq!(tokens.agent_for(t.as_bytes()).as_deref(), Some("a"));
    assert_eq!(tokens.agent_for(b"nope"), None);
    assert!(!format!("{:?}", tokens.inner.read().unwrap()).contains(&t));
}
