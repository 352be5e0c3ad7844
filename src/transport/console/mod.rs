//! The approval console (design §9): remote approvers sign in with OpenID Connect and confirm
//! every vote with a passkey.

pub mod oidc;
