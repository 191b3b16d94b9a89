//! messenger-gateway: a gRPC front for Instagram messaging: sends through the
//! Graph API, and inbound webhooks as a durable event stream.
//!
//! The core knows nothing of protobuf or HTTP frameworks: sending
//! ([`message`], [`error`], [`graph`], [`delivery`], [`outbox`]), the inbound
//! side ([`events`], [`window`], [`inbox`], [`store`], [`clock`]). [`grpc`]
//! adapts it to tonic, [`webhook`] to axum, [`server`] serves both,
//! [`startup`] builds the whole from [`cli`]'s settings, and [`sandbox`]
//! stands in for Graph when there are no credentials.

pub mod accounts;
pub mod auth;
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
pub mod metrics;
pub mod net;
pub mod outbox;
pub mod pacing;
pub mod refusals;
pub mod sandbox;
pub mod server;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod tokens;
pub mod webhook;
pub mod window;
