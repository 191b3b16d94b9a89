//! The sending core: the [`guard`] (window and `request_id` checks before a
//! send), each account's [`delivery`] (queue, call slots, retries), its
//! [`pacing`], and the caller's deadline [`budget`].

pub mod budget;
pub mod delivery;
pub mod guard;
pub mod pacing;
