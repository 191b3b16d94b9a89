//! The sending core: the [`guard`] (window and `request_id` checks before a
//! send), each account's [`delivery`] (queue, call slots, retries; its
//! one log line per send in `log`), its
//! [`pacing`], and the caller's deadline [`budget`].

pub mod budget;
pub mod delivery;
pub mod guard;
mod log;
pub mod pacing;
