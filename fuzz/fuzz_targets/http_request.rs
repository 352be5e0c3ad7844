//! HTTP request handling: raw bytes parsed as a request head (httparse, as hyper does), then the
//! endpoint's transport checks. Nothing that passes may carry a proxy header or a foreign Host.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = req.parse(data) else { return };
    let (Some(method), Some(path)) = (req.method, req.path) else { return };
    let hs: Vec<(&str, &[u8])> = req.headers.iter().map(|h| (h.name, h.value)).collect();
    if let Ok(s) = mandate::transport::http::screen(method, path, &hs, 9911) {
        assert_eq!(method, "GET");
        assert!(path.starts_with('/'), "only origin-form targets pass");
        let host = hs.iter().find(|(n, _)| n.eq_ignore_ascii_case("host")).unwrap().1;
        assert!(mandate::transport::http::host_allowed(std::str::from_utf8(host).unwrap(), 9911));
        assert!(!hs.iter().any(|(n, _)| n.eq_ignore_ascii_case("x-forwarded-for") || n.eq_ignore_ascii_case("via")));
        assert!(hs.iter().any(|(n, v)| n.eq_ignore_ascii_case("authorization") && *v == s.token.as_slice()));
    }
});
