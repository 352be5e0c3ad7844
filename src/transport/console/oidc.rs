//! OpenID Connect sign-in for the approval console (being written).
