//! Integration tests: a real tonic server on a loopback port, a real HTTP fake
//! of the Graph API (wiremock), and real gRPC clients.

mod accounts;
mod auth;
mod binary;
mod concurrency;
mod durability;
mod errors;
mod hostile;
mod idempotency;
mod inbound;
mod live_stream;
mod metrics;
mod outbound;
mod outcomes;
mod pacing;
mod payloads;
mod processes;
mod properties;
mod replicas;
mod retries;
mod sandbox;
mod secure_defaults;
mod send;
mod shutdown;
mod stream;
mod support;
mod tokens;
mod webhook_abuse;
mod window;
