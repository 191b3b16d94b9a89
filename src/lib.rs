//! messenger-gateway: a gRPC front for the Instagram Graph API send endpoint.
//!
//! The core ([`message`], [`error`], [`graph`], [`delivery`]) knows nothing
//! of protobuf; [`grpc`] adapts it to tonic, [`server`] serves it, and
//! [`sandbox`] stands in for Graph when there are no credentials.

pub mod cli;
pub mod clock;
pub mod config;
pub mod delivery;
pub mod error;
pub mod events;
pub mod graph;
pub mod grpc;
pub mod inbox;
pub mod message;
pub mod outbox;
pub mod sandbox;
pub mod server;
pub mod store;
pub mod webhook;
pub mod window;
