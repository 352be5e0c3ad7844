//! The transports, side by side: each turns bytes from one kind of peer into a broker call and
//! the answer back into bytes. None of them decides anything; the broker does.
//!
//! * [`socket`]: the Unix socket (the CLI, `credential-process`, approvers); the kernel says
//!   who the peer is (`SO_PEERCRED`).
//! * [`http`]: the container-credentials endpoint on loopback (agents in dev containers, with
//!   a bearer token per agent).
//! * [`console`]: the approval console on its own listener (remote approvers: OpenID Connect
//!   sign-in, a passkey for every vote).

pub mod console;
pub mod http;
pub mod socket;
