//! Where the outside meets the core, each protocol converted at the door:
//! the gRPC service ([`grpc`]), Meta's webhooks ([`webhook`]), the servers
//! and the admin port ([`server`]), accepting connections ([`net`]),
//! [`tls`], and callers' keys ([`auth`]).

pub mod admin;
pub mod auth;
pub mod grpc;
pub mod net;
pub mod server;
pub mod tls;
pub mod webhook;
