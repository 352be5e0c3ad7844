use super::*;

#[test]
fn durations() {
    let ok = [
        ("15m", 900),
        ("1h", 3600),
        ("1h30m", 5400),
        ("900s", 900),
        ("12h", 43200),
        ("2h0m", 7200),
    ];
    for (s, secs) in ok {
        assert_eq!(SessionDuration::parse(s).unwrap().seconds(), secs, "{s}");
    }
    assert_eq!(
        SessionDuration::parse("1h30m").unwrap().to_string(),
        "1h30m"
    );
    for bad in [
        "", "1", "h", "1d", "30m1h", "1h1h", "-1h", "1.5h", "1 h", "9999999h",
    ] {
        assert!(SessionDuration::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn action_patterns() {
    assert_eq!(
        ActionPattern::parse("S3:getobject").unwrap().to_string(),
        "s3:GetObject"
    );
    assert_eq!(
        ActionPattern::parse("s3:Get*").unwrap().to_string(),
        "s3:Get*"
    );
    assert_eq!(ActionPattern::parse("*").unwrap(), ActionPattern::Any);
    assert_eq!(
        ActionPattern::parse("s3:GetObjects").unwrap_err(),
        "unknown action \"s3:GetObjects\"; did you mean \"s3:GetObject\"?"
    );
}

#[test]
fn resources() {
    for ok in [
        "*",
        "arn:aws:s3:::b/*",
        "arn:aws:iam::123456789012:role/x",
        "arn:*:s3:::b",
        "arn:aws:s3:::${aws:username}/*",
        "arn:aws:ec2:*:*:instance/*",
    ] {
        assert!(ResourcePattern::parse(ok).is_ok(), "{ok}");
    }
    for bad in [
        "s3://bucket",
        "arn:aws:s3::bucket",
        "arn:foo:s3:::b",
        "arn:aws:S3:::b",
        "arn:aws:iam::12:role/x",
        "arn:aws:s3:::",
        "arn:aws:s3::: b",
    ] {
        assert!(ResourcePattern::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn condition_operators() {
    for ok in [
        "StringEquals",
        "StringLikeIfExists",
        "ForAnyValue:StringLike",
        "Null",
        "Bool",
    ] {
        assert!(check_condition_operator(ok).is_ok(), "{ok}");
    }
    assert_eq!(
        check_condition_operator("StringEqual").unwrap_err(),
        "unknown condition operator \"StringEqual\"; did you mean \"StringEquals\"?"
    );
    assert!(check_condition_operator("NullIfExists").is_err());
}
