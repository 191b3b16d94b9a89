//! The values every layer speaks: what is sent ([`message`]) and how a send
//! fails ([`error`]), what arrives ([`event`]), and the messaging window's
//! rules ([`window`]). Pure values and functions; no I/O.

pub mod error;
pub mod event;
pub mod message;
pub mod window;
