//! messenger-gateway: a gRPC front for Instagram messaging: sends through the
//! Graph API, and inbound webhooks as a durable event stream.
//!
//! The folders are the layers, top to bottom; each imports only its own
//! layer or those below (`scripts/layers` checks it, and the README's
//! module map draws it):
//! - [`cli`]: `main` and the command line; [`app`]: the composition root.
//! - [`sandbox`]: the Graph stand-in used when there are no credentials.
//! - [`edge`]: gRPC (tonic), webhooks and the admin port (axum/hyper),
//!   connections, TLS, callers' keys: protocols converted at the door.
//! - [`accounts`]: the registry of accounts, their configuration, tokens.
//! - [`send`] (the guard, delivery, pacing, the deadline budget) and
//!   [`conversation`] (webhook payloads, the inbox, subscriptions): the core,
//!   free of protobuf and HTTP frameworks.
//! - [`store`] and [`graph`]: storage and the Graph API, behind traits.
//! - [`model`] (the values every layer speaks), [`clock`], [`metrics`],
//!   [`refusals`], [`telemetry`].

pub mod accounts;
pub mod app;
pub mod cli;
pub mod clock;
pub mod conversation;
pub mod edge;
pub mod graph;
pub mod metrics;
pub mod model;
pub mod refusals;
pub mod sandbox;
pub mod send;
pub mod store;
pub mod telemetry;
