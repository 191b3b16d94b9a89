//! The accounts the gateway sends as: the [`registry`] (each account's
//! entry, looked up by id or alias, swapped whole on reload), their
//! configuration from the environment or the accounts file ([`config`]),
//! and the [`tokens`] keeper.

pub mod config;
pub mod registry;
pub mod tokens;

pub use registry::*;
