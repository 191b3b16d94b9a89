//! The inbound side's core: webhook bodies parsed into events
//! ([`payload`]), and the [`inbox`] that stores them, keeps the windows and
//! feeds subscribers.

pub mod inbox;
pub mod payload;
