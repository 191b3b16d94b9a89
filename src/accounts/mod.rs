//! The accounts the gateway sends as: the [`registry`] (each account's
//! [`entry`], looked up by id or alias, swapped whole on reload), their
//! configuration from the variables ([`env`]) or the accounts file
//! ([`file`]), the Meta [`apps`] whose webhooks it takes,
//! and the [`tokens`] keeper.

pub mod apps;
pub mod entry;
pub mod env;
pub mod file;
pub mod registry;
pub mod seal;
pub mod tokens;

pub use entry::*;
pub use registry::*;
