//! The conversation's core: webhook bodies parsed into events
//! ([`payload`]), and the [`inbox`] that stores them (and what the gateway
//! sent), keeps the windows and feeds subscribers.

pub mod inbox;
pub mod payload;
pub mod record;
