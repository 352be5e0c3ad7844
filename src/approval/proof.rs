//! Signed votes (design §8): a vote carries proof of who cast it, a signature by the component
//! that authenticated the approver (the daemon whose socket the approver used, or a console).
//! The daemon that redeems an approval counts only votes whose signature checks against a key
//! it trusts, so a row written straight into a shared database releases nothing.
//!
//! Pure: keys come in, a verdict goes out.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{ApprovalRequest, Requirement, Stage, Vote};
use crate::policy::{hex, unhex};

/// Who signed a vote (the fingerprint of their public key) and the Ed25519 signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Proof {
    pub key: String,
    pub sig: String,
}

/// The keys whose signed votes count: this daemon's own and the configured vote signers, each
/// with a name for messages.
#[derive(Clone, Debug, Default)]
pub struct Trust {
    keys: Vec<(String, String, VerifyingKey)>,
}

impl Trust {
    pub fn new(keys: impl IntoIterator<Item = (String, VerifyingKey)>) -> Trust {
        Trust {
            keys: keys
                .into_iter()
                .map(|(name, k)| (name, fingerprint(&k), k))
                .collect(),
        }
    }

    fn key(&self, fingerprint: &str) -> Option<&VerifyingKey> {
        self.keys
            .iter()
            .find(|(_, f, _)| f == fingerprint)
            .map(|(_, _, k)| k)
    }

    /// The names of the trusted signers, for messages.
    pub fn names(&self) -> Vec<&str> {
        self.keys.iter().map(|(n, _, _)| n.as_str()).collect()
    }
}

/// Short, stable name of a public key (first 16 hex digits of its sha256): the same as the
/// audit checkpoints'.
pub fn fingerprint(key: &VerifyingKey) -> String {
    hex(&Sha256::digest(key.as_bytes()))[..16].to_owned()
}

/// What is signed: the request (id, binding digest and the approval it needs) and every field
/// of the vote, in a length-prefixed encoding.
fn message(id: &str, digest: &str, requirement: &Requirement, v: &Vote) -> Vec<u8> {
    let mut out = Vec::new();
    let mut field = |s: &[u8]| {
        out.extend_from_slice(&(s.len() as u64).to_be_bytes());
        out.extend_from_slice(s);
    };
    field(b"mandate-vote-v2");
    field(id.as_bytes());
    field(digest.as_bytes());
    field(
        serde_json::to_string(requirement)
            .expect("a requirement serializes")
            .as_bytes(),
    );
    field(v.approver.as_bytes());
    field(&[u8::from(v.approve)]);
    field(&v.at.to_be_bytes());
    match &v.note {
        None => field(b"\x00"),
        Some(n) => field(format!("\x01{n}").as_bytes()),
    }
    let uids: Vec<u8> = v.uids.iter().flat_map(|u| u.to_be_bytes()).collect();
    field(&uids);
    // A console vote's provenance (absent from socket votes, whose messages stay as they were).
    if let Some(via) = &v.via {
        field(b"via");
        field(via.oidc_subject.as_bytes());
        match &via.passkey {
            None => field(b"\x00"),
            Some(p) => field(format!("\x01{p}").as_bytes()),
        }
    }
    out
}

/// Signs `vote` as cast on request `r`.
pub fn sign(r: &ApprovalRequest, vote: &mut Vote, key: &SigningKey) {
    vote.proof = None;
    let sig = key.sign(&message(r.id.as_str(), &r.digest, &r.requirement, vote));
    vote.proof = Some(Proof {
        key: fingerprint(&key.verifying_key()),
        sig: hex(&sig.to_bytes()),
    });
}

/// Why a vote does not count, if it does not.
fn check(r: &ApprovalRequest, v: &Vote, trust: &Trust) -> Result<(), String> {
    let Some(p) = &v.proof else {
        return Err(format!("the vote of {} is not signed", v.approver));
    };
    let Some(key) = trust.key(&p.key) else {
        return Err(format!(
            "the vote of {} is signed by key {}, which is not a trusted vote signer",
            v.approver, p.key
        ));
    };
    let sig = unhex(&p.sig)
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
        .map(|b| Signature::from_bytes(&b));
    let Some(sig) = sig else {
        return Err(format!(
            "the vote of {} has a malformed signature",
            v.approver
        ));
    };
    let mut unsigned = v.clone();
    unsigned.proof = None;
    key.verify(
        &message(r.id.as_str(), &r.digest, &r.requirement, &unsigned),
        &sig,
    )
    .map_err(|_| {
        format!(
            "the signature on the vote of {} does not match this request",
            v.approver
        )
    })
}

/// Whether the stored, approved request `r` really is approved: enough distinct approvers
/// with valid signed votes from trusted signers (never the operator for a peer approval, only
/// the operator for an operator approval), no valid signed rejection, the binding digest is
/// the binding's own, and the approval is still within `use_within` of the vote that
/// completed it. What the stored stage says about itself is not trusted.
/// What the redeeming daemon's own config says about a request: the approval its profile needs
/// and who is an approver (a vote of someone no longer one does not count).
pub struct Expect<'a> {
    pub requirement: &'a Requirement,
    pub is_approver: &'a (dyn Fn(&str) -> bool + Sync),
    /// This daemon lets an operator-level vote cast at the console without a passkey count
    /// (`[console] oidc_only_operator_votes`); a peer vote without one never counts.
    pub oidc_only_operator: bool,
}

pub fn check_approved(
    r: &ApprovalRequest,
    trust: &Trust,
    expect: &Expect<'_>,
    use_within: i64,
    now: i64,
) -> Result<(), String> {
    // The row's own idea of what it needs is not trusted either.
    if r.requirement != *expect.requirement {
        return Err(format!(
            "approval request {} asks for {}, but its profile needs {} here",
            r.id, r.requirement, expect.requirement
        ));
    }
    if r.digest != r.binding.digest() {
        return Err(format!(
            "approval request {} does not match its own binding",
            r.id
        ));
    }
    if !matches!(r.stage, Stage::Approved { .. }) {
        return Err(format!("approval request {} is not approved", r.id));
    }
    let mut counted: Vec<(&str, i64)> = Vec::new();
    // One person at the OpenID provider counts once, whatever approver names they held.
    let mut subjects: Vec<&str> = Vec::new();
    let mut problems = Vec::new();
    for v in &r.votes {
        if let Err(why) = check(r, v, trust) {
            problems.push(why);
            continue;
        }
        if !v.approve {
            return Err(format!(
                "approval request {} was rejected by {}",
                r.id, v.approver
            ));
        }
        let eligible = (expect.is_approver)(&v.approver)
            && match &r.requirement {
                Requirement::Operator { operator } => v.approver == *operator,
                Requirement::Peers { operator, .. } => operator.as_deref() != Some(&v.approver),
            };
        let confirmed = match &v.via {
            None => true,
            Some(via) if via.passkey.is_some() => true,
            Some(_) => {
                expect.oidc_only_operator && matches!(r.requirement, Requirement::Operator { .. })
            }
        };
        if !confirmed {
            problems.push(format!(
                "{}'s vote at the console was cast without a passkey",
                v.approver
            ));
            continue;
        }
        let subject = v.via.as_ref().map(|x| x.oidc_subject.as_str());
        if subject.is_some_and(|s| subjects.contains(&s)) {
            continue;
        }
        if eligible && !counted.iter().any(|(a, _)| *a == v.approver) {
            counted.push((&v.approver, v.at));
            subjects.extend(subject);
        }
    }
    let needed = r.needed().max(1);
    if counted.len() < needed {
        let mut why = format!(
            "approval request {} has {} valid signed approval{} of the {} needed",
            r.id,
            counted.len(),
            if counted.len() == 1 { "" } else { "s" },
            needed
        );
        if !problems.is_empty() {
            why.push_str(&format!(" ({})", problems.join("; ")));
        }
        return Err(why);
    }
    // The approval completes with the n-th approval in time; it is usable for use_within.
    let mut times: Vec<i64> = counted.iter().map(|(_, at)| *at).collect();
    times.sort_unstable();
    let completed = times[needed - 1];
    if now >= completed.saturating_add(use_within) {
        return Err(format!(
            "approval request {} was approved at {} and not used within {use_within} s",
            r.id,
            crate::clock::rfc3339(completed)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::approval::tests::{AGENT_UIDS, NOW, USE, operator_req, peers_req, voter};

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn anyone(_: &str) -> bool {
        true
    }

    /// What the test config expects of `r`: its own requirement, every name an approver.
    fn check(r: &ApprovalRequest, t: &Trust, now: i64) -> Result<(), String> {
        let expect = Expect {
            requirement: &r.requirement,
            is_approver: &anyone,
            oidc_only_operator: false,
        };
        check_approved(r, t, &expect, USE, now)
    }

    fn trust(keys: &[&SigningKey]) -> Trust {
        Trust::new(
            keys.iter()
                .enumerate()
                .map(|(i, k)| (format!("signer{i}"), k.verifying_key())),
        )
    }

    /// `r` after `approver` voted, the vote signed with `k`.
    fn signed_vote(
        r: &ApprovalRequest,
        approver: &str,
        uid: u32,
        approve: bool,
        k: &SigningKey,
    ) -> ApprovalRequest {
        let (mut next, _) = r
            .vote(
                &voter(approver, &[uid]),
                AGENT_UIDS,
                approve,
                None,
                NOW,
                USE,
            )
            .unwrap();
        let last = next.votes.len() - 1;
        let mut v = next.votes[last].clone();
        sign(&next, &mut v, k);
        next.votes[last] = v;
        next
    }

    /// `r` after `approver` voted at the console as `subject` (with a passkey or not).
    fn console_vote(
        r: &ApprovalRequest,
        approver: &str,
        subject: &str,
        passkey: Option<&str>,
        k: &SigningKey,
    ) -> ApprovalRequest {
        let (mut next, _) = r
            .vote(&voter(approver, &[]), AGENT_UIDS, true, None, NOW, USE)
            .unwrap();
        let last = next.votes.len() - 1;
        let mut v = next.votes[last].clone();
        v.via = Some(crate::approval::Via {
            oidc_subject: subject.into(),
            passkey: passkey.map(Into::into),
        });
        sign(&next, &mut v, k);
        next.votes[last] = v;
        next
    }

    #[test]
    fn console_votes_count_only_with_a_passkey_and_once_per_person() {
        let k = key(1);
        let t = trust(&[&k]);
        // Two peers, each with a passkey: approved.
        let two = console_vote(&peers_req(2), "bob", "s-bob", Some("pk1"), &k);
        let two = console_vote(&two, "carol", "s-carol", Some("pk2"), &k);
        assert_eq!(check(&two, &t, NOW), Ok(()));
        // The same person under two approver names counts once (the vote itself is refused,
        // and a row written by hand is not counted either).
        let one = console_vote(&peers_req(2), "bob", "s-bob", Some("pk1"), &k);
        assert_eq!(
            one.vote(
                &crate::approval::Voter {
                    name: "bob-ops",
                    uids: &[],
                    subject: Some("s-bob"),
                },
                AGENT_UIDS,
                true,
                None,
                NOW,
                USE
            )
            .unwrap_err()
            .to_string(),
            "bob-ops signed in at the console as the same person as bob, who has already approved; a peer approval must come from another person"
        );
        let twice = console_vote(&one, "bob-ops", "s-bob", Some("pk9"), &k);
        assert!(check(&twice, &t, NOW).is_err());
        // A peer vote without a passkey never counts; an operator vote without one only where
        // this daemon allows it.
        let no_key = console_vote(&peers_req(1), "bob", "s-bob", None, &k);
        assert!(
            check(&no_key, &t, NOW)
                .unwrap_err()
                .contains("bob's vote at the console was cast without a passkey")
        );
        let op = console_vote(&operator_req(), "alice", "s-alice", None, &k);
        assert!(check(&op, &t, NOW).is_err());
        let allowing = Expect {
            requirement: &op.requirement,
            is_approver: &anyone,
            oidc_only_operator: true,
        };
        assert_eq!(check_approved(&op, &t, &allowing, USE, NOW), Ok(()));
        // The provenance is signed: changing it breaks the signature.
        let mut moved = two.clone();
        moved.votes[1].via.as_mut().unwrap().passkey = Some("other".into());
        assert!(check(&moved, &t, NOW).is_err());
    }

    #[test]
    fn a_vote_signed_by_a_trusted_key_approves() {
        let k = key(1);
        let r = signed_vote(&operator_req(), "alice", 1000, true, &k);
        assert_eq!(check(&r, &trust(&[&k]), NOW), Ok(()));
    }

    #[test]
    fn forged_and_tampered_votes_release_nothing() {
        let k = key(1);
        let other = key(2);
        let good = signed_vote(&operator_req(), "alice", 1000, true, &k);
        let id = good.id.clone();
        let mut unsigned = good.clone();
        unsigned.votes[0].proof = None;
        let mut tampered = good.clone();
        tampered.votes[0].at += 1;
        let mut moved = good.clone();
        moved.binding.reason = Some("another".into());
        moved.digest = moved.binding.digest();
        let mut bad_sig = good.clone();
        bad_sig.votes[0].proof.as_mut().unwrap().sig = "zz".into();
        let mut stage_only = operator_req();
        stage_only.stage = Stage::Approved {
            at: NOW,
            use_by: NOW + USE,
        };
        let cases: Vec<(&str, ApprovalRequest, Trust, String)> = vec![
            (
                "no signature",
                unsigned,
                trust(&[&k]),
                format!(
                    "approval request {id} has 0 valid signed approvals of the 1 needed (the vote of alice is not signed)"
                ),
            ),
            (
                "an untrusted signer",
                good.clone(),
                trust(&[&other]),
                format!(
                    "approval request {id} has 0 valid signed approvals of the 1 needed (the vote of alice is signed by key {}, which is not a trusted vote signer)",
                    fingerprint(&k.verifying_key())
                ),
            ),
            (
                "a changed vote",
                tampered,
                trust(&[&k]),
                format!(
                    "approval request {id} has 0 valid signed approvals of the 1 needed (the signature on the vote of alice does not match this request)"
                ),
            ),
            (
                "votes moved to another request",
                moved,
                trust(&[&k]),
                format!(
                    "approval request {id} has 0 valid signed approvals of the 1 needed (the signature on the vote of alice does not match this request)"
                ),
            ),
            (
                "a malformed signature",
                bad_sig,
                trust(&[&k]),
                format!(
                    "approval request {id} has 0 valid signed approvals of the 1 needed (the vote of alice has a malformed signature)"
                ),
            ),
            (
                "a stage set without votes",
                stage_only,
                trust(&[&k]),
                format!("approval request {id} has 0 valid signed approvals of the 1 needed"),
            ),
        ];
        for (what, r, t, want) in cases {
            assert_eq!(check(&r, &t, NOW), Err(want), "{what}");
        }
    }

    #[test]
    fn a_binding_that_does_not_match_its_digest_is_refused() {
        let k = key(1);
        let mut r = signed_vote(&operator_req(), "alice", 1000, true, &k);
        r.binding.duration_seconds += 1;
        assert_eq!(
            check(&r, &trust(&[&k]), NOW),
            Err(format!(
                "approval request {} does not match its own binding",
                r.id
            ))
        );
    }

    #[test]
    fn peers_count_once_and_never_the_operator() {
        let k = key(1);
        let r = peers_req(2);
        let one = signed_vote(&r, "bob", 1001, true, &k);
        let two = signed_vote(&one, "carol", 1002, true, &k);
        assert_eq!(check(&two, &trust(&[&k]), NOW), Ok(()));
        // A forged second copy of bob's vote (signed, but the same approver) counts once.
        let mut dup = one.clone();
        dup.votes.push(one.votes[0].clone());
        dup.stage = two.stage.clone();
        assert!(check(&dup, &trust(&[&k]), NOW).is_err());
        // A signed vote of the operator written in by hand does not count as a peer.
        let mut op = one.clone();
        let mut v = one.votes[0].clone();
        v.approver = "alice".into();
        sign(&op, &mut v, &k);
        op.votes.push(v);
        op.stage = two.stage.clone();
        assert_eq!(
            check(&op, &trust(&[&k]), NOW),
            Err(format!(
                "approval request {} has 1 valid signed approval of the 2 needed",
                op.id
            ))
        );
    }

    #[test]
    fn a_signed_rejection_stands_and_an_old_approval_expires() {
        let k = key(1);
        let r = signed_vote(&peers_req(1), "bob", 1001, true, &k);
        assert_eq!(check(&r, &trust(&[&k]), NOW + USE - 1), Ok(()));
        assert!(
            check(&r, &trust(&[&k]), NOW + USE)
                .unwrap_err()
                .contains("not used within")
        );
        let mut rejected = r.clone();
        let mut v = r.votes[0].clone();
        v.approver = "carol".into();
        v.approve = false;
        sign(&rejected, &mut v, &k);
        rejected.votes.push(v);
        assert_eq!(
            check(&rejected, &trust(&[&k]), NOW),
            Err(format!(
                "approval request {} was rejected by carol",
                rejected.id
            ))
        );
    }

    #[test]
    fn the_row_cannot_lower_what_it_needs_and_removed_approvers_do_not_count() {
        let k = key(1);
        let two = peers_req(2);
        // A writer turns a two-person request into an operator one; the operator's vote is
        // then cast and signed on that row.
        let mut downgraded = two.clone();
        downgraded.requirement = Requirement::Operator {
            operator: "alice".into(),
        };
        let approved = signed_vote(&downgraded, "alice", 1000, true, &k);
        let expect = Expect {
            requirement: &two.requirement,
            is_approver: &anyone,
            oidc_only_operator: false,
        };
        assert_eq!(
            check_approved(&approved, &trust(&[&k]), &expect, USE, NOW),
            Err(format!(
                "approval request {} asks for operator alice, but its profile needs 2 peer approvers other than the operator here",
                two.id
            ))
        );
        // Putting the requirement back breaks the signature (it covers the requirement).
        let mut restored = approved.clone();
        restored.requirement = two.requirement.clone();
        assert!(
            check_approved(&restored, &trust(&[&k]), &expect, USE, NOW)
                .unwrap_err()
                .contains("does not match this request")
        );
        // n = 0 written into a row needs nothing... but the config's requirement decides.
        let mut zero = two.clone();
        zero.requirement = Requirement::Peers {
            n: 0,
            operator: Some("alice".into()),
        };
        zero.stage = Stage::Approved {
            at: NOW,
            use_by: NOW + USE,
        };
        assert!(check_approved(&zero, &trust(&[&k]), &expect, USE, NOW).is_err());
        let zero_expected = Expect {
            requirement: &zero.requirement,
            is_approver: &anyone,
            oidc_only_operator: false,
        };
        assert_eq!(
            check_approved(&zero, &trust(&[&k]), &zero_expected, USE, NOW),
            Err(format!(
                "approval request {} has 0 valid signed approvals of the 1 needed",
                zero.id
            ))
        );
        // An approver removed from the config no longer counts.
        let one = signed_vote(&peers_req(1), "bob", 1001, true, &k);
        let not_bob = |name: &str| name != "bob";
        let expect = Expect {
            requirement: &one.requirement,
            is_approver: &not_bob,
            oidc_only_operator: false,
        };
        assert!(check_approved(&one, &trust(&[&k]), &expect, USE, NOW).is_err());
    }
}
