//! A send's budget: how long it may take, whether its caller still waits
//! for it, who that caller is, and what must happen before its first Graph
//! call. The one rule for "too little time left" lives here.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::model::message::Priority;

/// How long a send may take, whether its caller still waits for it, and
/// who that caller is (a person, or a broadcast).
#[derive(Debug, Clone, Default)]
pub struct Budget {
    pub deadline: Option<Instant>,
    /// Cancelled when the caller goes: a send still waiting is then dropped.
    pub cancelled: CancellationToken,
    pub priority: Priority,
    /// Run once, just before the first Graph call (after any wait for the
    /// pace or a call slot): a send under a `request_id` marks it started.
    pub start: Option<Arc<dyn CallStart>>,
}

/// What must happen before a send's first Graph call may begin.
#[async_trait::async_trait]
pub trait CallStart: std::fmt::Debug + Send + Sync {
    /// `Err(why)`: the call is not made, and the send is not sent.
    async fn start(&self) -> Result<(), String>;
}

impl From<Option<Instant>> for Budget {
    fn from(deadline: Option<Instant>) -> Self {
        Self {
            deadline,
            cancelled: CancellationToken::new(),
            priority: Priority::default(),
            start: None,
        }
    }
}

impl From<Instant> for Budget {
    fn from(deadline: Instant) -> Self {
        Some(deadline).into()
    }
}

impl Budget {
    /// Why the send is not started, if less than `min` of its deadline is
    /// left.
    pub fn too_short(&self, min: Duration) -> Option<String> {
        let left = self.deadline?.saturating_duration_since(Instant::now());
        too_little_left(left, min)
    }
}

/// The one rule for a deadline too close: with less than `min` left a send
/// could not get Graph's answer, only an unknown outcome, so it is refused
/// as not sent. Returns why.
pub fn too_little_left(left: Duration, min: Duration) -> Option<String> {
    (left < min).then(|| {
        format!(
            "only {:.1} ms of the deadline were left, less than the {} ms a send needs",
            left.as_secs_f64() * 1000.0,
            min.as_millis()
        )
    })
}
