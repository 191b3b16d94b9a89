//! Sending at Instagram's pace. Each account has a budget per tier of
//! send (a GCRA, from `governor`): text-like sends 300/s, audio and video
//! 10/s, private replies to comments 750/h. Sends are spaced evenly, with a
//! burst of at most a few, so no window of the budget's period ever holds
//! more than the budget. Interactive sends (a person is waiting) take
//! budget before bulk ones; Graph's usage headers slow an account down at
//! 90 % of a quota, and a rate-limit answer pauses it.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use governor::clock::{Clock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::time::Instant;

use crate::model::message::{AttachmentKind, Content, OutgoingMessage, Priority, Recipient};
use crate::send::budget::Budget;

/// Which of an account's budgets a send spends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// Text, quick replies, templates, stickers, shares, reactions, sender
    /// actions, images.
    Standard,
    /// Audio and video.
    Media,
    /// A private reply to a comment.
    PrivateReply,
}

impl Tier {
    pub fn of(message: &OutgoingMessage) -> Tier {
        if matches!(message.recipient, Recipient::Comment(_)) {
            return Tier::PrivateReply;
        }
        match &message.content {
            Content::Attachments(a)
                if a.iter()
                    .any(|a| matches!(a.kind, AttachmentKind::Audio | AttachmentKind::Video)) =>
            {
                Tier::Media
            }
            _ => Tier::Standard,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Standard => "standard",
            Tier::Media => "media",
            Tier::PrivateReply => "private_reply",
        }
    }
}

/// So many sends per period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub sends: u32,
    pub per: Duration,
}

impl Rate {
    pub const fn per_second(sends: u32) -> Self {
        Self {
            sends,
            per: Duration::from_secs(1),
        }
    }

    pub const fn per_hour(sends: u32) -> Self {
        Self {
            sends,
            per: Duration::from_secs(3600),
        }
    }

    /// `300/s`, `10/s`, `750/h` or `20/m`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let shape = || format!("a rate is N/s, N/m or N/h (got {s:?})");
        let (n, unit) = s.split_once('/').ok_or_else(shape)?;
        let sends: u32 = n.trim().parse().map_err(|_| shape())?;
        let per = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(shape()),
        };
        if sends == 0 {
            return Err(format!("a rate must allow at least one send (got {s:?})"));
        }
        Ok(Self { sends, per })
    }

    /// The most sends that may go at once.
    fn burst(self) -> u32 {
        self.sends.clamp(1, 3)
    }

    /// The spacing that keeps any window of `per` (from one instant to,
    /// not including, the same instant a period later) within `sends`,
    /// burst included: it holds at most `burst + per / interval - 1`.
    /// Five per cent of the budget is left unused: sends spaced evenly here
    /// arrive at Graph a little bunched by scheduling and the network.
    /// Rounded up, so the sum never creeps over.
    fn interval(self) -> Duration {
        let per = self.per.as_nanos();
        let usable = self.sends - self.sends / MARGIN_DIVISOR;
        let slots = u128::from(usable.saturating_sub(self.burst()) + 1);
        Duration::from_nanos(u64::try_from(per.div_ceil(slots)).unwrap_or(u64::MAX))
    }

    /// The quota of one replica of `share` at `1 / slowdown` of the rate:
    /// spaced `slowdown × share` times wider, and with no burst when shared
    /// (bursts on several replicas at once could add up past the budget).
    fn quota(self, slowdown: u32, share: u32) -> Quota {
        let interval = self.interval().max(Duration::from_nanos(1)) * slowdown * share.max(1);
        let burst = if share > 1 { 1 } else { self.burst() };
        Quota::with_period(interval)
            .expect("a positive period")
            .allow_burst(NonZeroU32::new(burst).expect("at least one"))
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "m",
            _ => "h",
        };
        write!(f, "{}/{unit}", self.sends)
    }
}

/// An account's budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PaceLimits {
    pub standard: Rate,
    pub media: Rate,
    pub private_replies: Rate,
    /// At least this long between two sends to one person (Meta may
    /// throttle a single thread that receives too much); `None`: off.
    pub per_recipient: Option<Duration>,
}

impl Default for PaceLimits {
    /// Meta's Send API limits for an Instagram professional account.
    fn default() -> Self {
        Self {
            standard: Rate::per_second(300),
            media: Rate::per_second(10),
            private_replies: Rate::per_hour(750),
            per_recipient: None,
        }
    }
}

impl PaceLimits {
    fn of(&self, tier: Tier) -> Rate {
        match tier {
            Tier::Standard => self.standard,
            Tier::Media => self.media,
            Tier::PrivateReply => self.private_replies,
        }
    }
}

/// Why a send was not given a turn; nothing was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaceRefusal {
    /// Its deadline passes before its turn comes.
    TooLate { retry_after: Duration },
    /// The caller went away while it waited.
    Cancelled,
}

/// One part in this many of a budget is kept unused (5 %): sends granted
/// evenly here reach Graph up to some tens of milliseconds apart from
/// when they were granted on a busy machine.
const MARGIN_DIVISOR: u32 = 20;

/// Usage (of any quota) at which the account slows to half its rate, and
/// below which it goes back to full rate.
const SLOW_AT: f64 = 0.90;
const RESUME_BELOW: f64 = 0.75;

/// The pace's clock: tokio's, so the limiters and the waits for them keep
/// one time, which tests can run hours of in a moment (tokio's paused
/// clock). A send's deadline stays a `std::time::Instant` elsewhere and is
/// converted here; the two clocks part only when tokio's is paused, so
/// paused-clock tests give the pacer no deadlines.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioClock;

/// An instant of [`TokioClock`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TokioInstant(Instant);

impl std::ops::Add<Nanos> for TokioInstant {
    type Output = Self;
    fn add(self, d: Nanos) -> Self {
        Self(self.0 + Duration::from(d))
    }
}

impl Reference for TokioInstant {
    fn duration_since(&self, earlier: Self) -> Nanos {
        self.0.saturating_duration_since(earlier.0).into()
    }

    fn saturating_sub(&self, d: Nanos) -> Self {
        self.0.checked_sub(d.into()).map_or(*self, Self)
    }
}

impl Clock for TokioClock {
    type Instant = TokioInstant;
    fn now(&self) -> TokioInstant {
        TokioInstant(Instant::now())
    }
}

type Limiter = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<TokioInstant>>;

fn limiter(quota: Quota) -> Limiter {
    RateLimiter::direct_with_clock(quota, TokioClock)
}

/// A send's deadline on the pace's clock.
fn deadline_of(budget: &Budget) -> Option<Instant> {
    budget.deadline.map(Instant::from_std)
}

/// One account's budgets and queue.
pub struct Pacer {
    limits: PaceLimits,
    limiters: [ArcSwap<Limiter>; 3],
    slowed: AtomicBool,
    /// Replicas sharing the account's budget (this one included).
    share: AtomicU32,
    paused_until: Mutex<Option<Instant>>,
    /// Sends waiting for a turn, by tier and priority (interactive, bulk):
    /// only the same tier's interactive sends hold a bulk one back.
    waiting: [[AtomicUsize; 2]; 3],
    /// Each person's next free turn, with `per_recipient` spacing.
    recipients: Mutex<std::collections::HashMap<String, Instant>>,
}

impl std::fmt::Debug for Pacer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pacer")
            .field("limits", &self.limits)
            .field("slowed", &self.slowed)
            .finish()
    }
}

const TIERS: [Tier; 3] = [Tier::Standard, Tier::Media, Tier::PrivateReply];

fn index(tier: Tier) -> usize {
    match tier {
        Tier::Standard => 0,
        Tier::Media => 1,
        Tier::PrivateReply => 2,
    }
}

impl Pacer {
    pub fn new(limits: PaceLimits) -> Self {
        let limiter = |tier| ArcSwap::from_pointee(limiter(limits.of(tier).quota(1, 1)));
        Self {
            limits,
            limiters: TIERS.map(limiter),
            slowed: AtomicBool::new(false),
            share: AtomicU32::new(1),
            paused_until: Mutex::new(None),
            waiting: Default::default(),
            recipients: Mutex::default(),
        }
    }

    pub fn limits(&self) -> PaceLimits {
        self.limits
    }

    /// Sends waiting for a turn, by priority.
    pub fn waiting(&self, priority: Priority) -> usize {
        self.waiting
            .iter()
            .map(|tier| tier[priority as usize].load(Ordering::Relaxed))
            .sum()
    }

    fn waiting_in(&self, tier: Tier, priority: Priority) -> usize {
        self.waiting[index(tier)][priority as usize].load(Ordering::Relaxed)
    }

    /// How long the account is paused for still.
    pub fn pause_left(&self) -> Duration {
        self.paused_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map_or(Duration::ZERO, |u| {
                u.saturating_duration_since(Instant::now())
            })
    }

    /// Graph said the account is rate-limited: no send for `d`.
    pub fn pause(&self, d: Duration) {
        let until = Instant::now() + d;
        let mut paused = self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
        if paused.is_none_or(|p| p < until) {
            *paused = Some(until);
        }
    }

    /// Graph's usage headers: at 90 % of any quota the account's rates
    /// halve, until usage falls below 75 %.
    pub fn observe_usage(&self, ratio: f64) {
        let slow = if ratio >= SLOW_AT {
            true
        } else if ratio < RESUME_BELOW {
            false
        } else {
            return;
        };
        if self.slowed.swap(slow, Ordering::Relaxed) != slow {
            self.rebuild();
            tracing::info!(
                usage = ratio,
                slowed = slow,
                "Graph usage changed the account's pace"
            );
        }
    }

    /// `replicas` share the account's budget (this one included): each
    /// takes its part.
    pub fn set_share(&self, replicas: u32) {
        let replicas = replicas.max(1);
        if self.share.swap(replicas, Ordering::Relaxed) != replicas {
            self.rebuild();
            tracing::info!(replicas, "replicas sharing the account's pace changed");
        }
    }

    /// 2 while usage holds the account at half its rate, else 1.
    fn slowdown(&self) -> u32 {
        if self.is_slowed() { 2 } else { 1 }
    }

    /// The divisor of every rate now: halved by usage, split by replicas.
    fn divisor(&self) -> u32 {
        self.slowdown() * self.share.load(Ordering::Relaxed)
    }

    /// New limiters for the current slowdown and share.
    fn rebuild(&self) {
        let slowdown = self.slowdown();
        let share = self.share.load(Ordering::Relaxed);
        for tier in TIERS {
            let rate = self.limits.of(tier);
            let quota = rate.quota(slowdown, share);
            let limiter = limiter(quota);
            // A new limiter starts with its burst free; spent now, so
            // the swap never lets more through than the budget.
            for _ in 0..quota.burst_size().get() {
                let _ = limiter.check();
            }
            self.limiters[index(tier)].store(std::sync::Arc::new(limiter));
        }
    }

    pub fn is_slowed(&self) -> bool {
        self.slowed.load(Ordering::Relaxed)
    }

    /// Waits for this send's turn: answers how long it waited, or why it
    /// will not get one in time (then nothing may be sent).
    pub async fn turn(
        &self,
        tier: Tier,
        priority: Priority,
        recipient: &str,
        budget: &Budget,
    ) -> Result<Duration, PaceRefusal> {
        let started = Instant::now();
        let deadline = deadline_of(budget);
        if let Some(gap) = self.limits.per_recipient {
            let slot = self.recipient_slot(recipient, gap, deadline)?;
            tokio::select! {
                biased;
                () = budget.cancelled.cancelled() => return Err(PaceRefusal::Cancelled),
                () = tokio::time::sleep_until(slot) => {}
            }
        }
        let rate = self.limits.of(tier);
        let interval = rate.interval() * self.divisor();
        // Who goes first: every interactive send, and for a bulk one every
        // bulk send queued before it too.
        let ahead = self.waiting_in(tier, Priority::Interactive)
            + match priority {
                Priority::Interactive => 0,
                Priority::Bulk => self.waiting_in(tier, Priority::Bulk),
            };
        let eta = self.pause_left() + interval.saturating_mul(ahead as u32);
        if let Some(deadline) = deadline
            && started + eta > deadline
        {
            return Err(PaceRefusal::TooLate {
                retry_after: eta.max(interval),
            });
        }
        let _waiting = Waiting::new(&self.waiting[index(tier)][priority as usize]);
        loop {
            let wait = match self.pause_left() {
                left if !left.is_zero() => left,
                _ if priority == Priority::Bulk
                    && self.waiting_in(tier, Priority::Interactive) > 0 =>
                {
                    interval
                }
                _ => match self.limiters[index(tier)].load().check() {
                    Ok(()) => return Ok(started.elapsed()),
                    Err(not_until) => not_until.wait_time_from(TokioClock.now()),
                },
            };
            let until = Instant::now() + wait;
            if deadline.is_some_and(|d| until > d) {
                return Err(PaceRefusal::TooLate {
                    retry_after: wait.max(interval),
                });
            }
            tokio::select! {
                biased;
                () = budget.cancelled.cancelled() => return Err(PaceRefusal::Cancelled),
                () = tokio::time::sleep_until(until) => {}
            }
        }
    }
}

impl Pacer {
    /// Reserves `recipient`'s next turn, `gap` after the last one; refused
    /// if it comes after `deadline`.
    fn recipient_slot(
        &self,
        recipient: &str,
        gap: Duration,
        deadline: Option<Instant>,
    ) -> Result<Instant, PaceRefusal> {
        let now = Instant::now();
        let mut next = self.recipients.lock().unwrap_or_else(|p| p.into_inner());
        let slot = next.get(recipient).map_or(now, |t| (*t).max(now));
        if deadline.is_some_and(|d| slot > d) {
            return Err(PaceRefusal::TooLate {
                retry_after: slot - now,
            });
        }
        next.insert(recipient.to_owned(), slot + gap);
        // People written to long ago need no entry.
        if next.len() > MAX_REMEMBERED_RECIPIENTS {
            next.retain(|_, t| *t > now);
        }
        Ok(slot)
    }
}

/// Recipients remembered for spacing before the ones already free are
/// forgotten.
const MAX_REMEMBERED_RECIPIENTS: usize = 100_000;

/// Counts a send as waiting for as long as it does.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits for an interactive turn with no deadline.
    async fn take_turn(pacer: &Pacer, tier: Tier, recipient: &str) {
        pacer
            .turn(tier, Priority::Interactive, recipient, &Budget::default())
            .await
            .unwrap();
    }

    #[test]
    fn rates_parse_and_space_sends_so_no_window_overflows() {
        assert_eq!(Rate::parse("300/s").unwrap(), Rate::per_second(300));
        assert_eq!(Rate::parse("750/h").unwrap(), Rate::per_hour(750));
        assert!(Rate::parse("0/s").is_err());
        assert!(Rate::parse("10/d").is_err());
        assert!(Rate::parse("ten/s").is_err());
        let r = Rate::per_second(300);
        // burst 3 + 1 s / interval (297) = 300 at most in any second.
        assert_eq!(r.burst(), 3);
        let interval = r.interval().as_nanos();
        // 300 less the 5 % margin: 285, burst 3 included.
        assert_eq!(interval, 1_000_000_000u128.div_ceil(283));
        // In any second: the burst, then one per interval after the first.
        assert!(u128::from(r.burst()) + 1_000_000_000u128.div_ceil(interval) - 1 <= 300);
        assert_eq!(Rate::per_second(1).interval(), Duration::from_secs(1));
    }

    #[tokio::test]
    async fn a_budget_spaces_sends_and_refuses_one_its_deadline_cannot_wait_for() {
        let pacer = Pacer::new(PaceLimits {
            standard: Rate::per_second(20),
            ..PaceLimits::default()
        });
        let started = Instant::now();
        for _ in 0..23 {
            take_turn(&pacer, Tier::Standard, "1").await;
        }
        // 3 at once, then 20 spaced by 1 s / 18.
        assert!(
            started.elapsed() >= Duration::from_millis(1000),
            "{:?}",
            started.elapsed()
        );
        let hurried = Budget::from(std::time::Instant::now() + Duration::from_millis(1));
        pacer.pause(Duration::from_secs(5));
        assert!(matches!(
            pacer.turn(Tier::Standard, Priority::Interactive, "1", &hurried).await,
            Err(PaceRefusal::TooLate { retry_after }) if retry_after >= Duration::from_secs(4)
        ));
    }

    #[tokio::test]
    async fn one_person_gets_sends_no_closer_than_the_spacing() {
        let pacer = Pacer::new(PaceLimits {
            per_recipient: Some(Duration::from_millis(200)),
            ..PaceLimits::default()
        });
        let started = Instant::now();
        for _ in 0..3 {
            take_turn(&pacer, Tier::Standard, "1").await;
        }
        assert!(started.elapsed() >= Duration::from_millis(400));
        // Another person is not held up by the first.
        let other = Instant::now();
        take_turn(&pacer, Tier::Standard, "2").await;
        assert!(other.elapsed() < Duration::from_millis(100));
        // A deadline before the person's next turn is refused at once.
        let hurried = Budget::from(std::time::Instant::now() + Duration::from_millis(50));
        assert!(matches!(
            pacer
                .turn(Tier::Standard, Priority::Interactive, "1", &hurried)
                .await,
            Err(PaceRefusal::TooLate { .. })
        ));
    }

    /// Two hours of private replies on tokio's paused clock: Graph's
    /// budget is 750 in any hour, and the pace keeps under it while using
    /// all but its 5 % margin.
    #[tokio::test(start_paused = true)]
    async fn private_replies_keep_to_their_hourly_budget_on_a_manual_clock() {
        let pacer = Pacer::new(PaceLimits::default());
        let start = Instant::now();
        let mut granted = Vec::new();
        for _ in 0..1500 {
            take_turn(&pacer, Tier::PrivateReply, "1").await;
            granted.push(start.elapsed());
        }
        let hour = Duration::from_secs(3600);
        let busiest_hour = (0..granted.len())
            .map(|i| {
                granted[i..]
                    .iter()
                    .take_while(|t| **t < granted[i] + hour)
                    .count()
            })
            .max()
            .unwrap();
        assert!(busiest_hour <= 750, "{busiest_hour} in one hour");
        assert!(
            busiest_hour >= 700,
            "only {busiest_hour} in the busiest hour"
        );
        // The first hour's replies went out in it; the rest waited.
        let in_first_hour = granted.iter().filter(|t| **t < hour).count();
        assert!((700..=750).contains(&in_first_hour), "{in_first_hour}");
        // Meanwhile the text budget is untouched.
        let before = Instant::now();
        take_turn(&pacer, Tier::Standard, "1").await;
        assert_eq!(before.elapsed(), Duration::ZERO);
    }

    #[test]
    fn media_and_private_replies_have_their_own_tiers() {
        use crate::model::message::*;
        let to = |content| OutgoingMessage {
            recipient: Recipient::User(Igsid::parse("17841400000000000").unwrap()),
            content,
            reply_to: None,
            human_agent: false,
        };
        let video = Attachment {
            kind: AttachmentKind::Video,
            source: MediaSource::Url(HttpUrl::parse("https://example.com/v.mp4").unwrap()),
        };
        assert_eq!(
            Tier::of(&to(Content::Attachments(vec![video]))),
            Tier::Media
        );
        assert_eq!(Tier::of(&to(Content::LikeHeartSticker)), Tier::Standard);
        let reply = OutgoingMessage {
            recipient: Recipient::Comment(CommentId::parse("17900000000000001").unwrap()),
            ..to(Content::LikeHeartSticker)
        };
        assert_eq!(Tier::of(&reply), Tier::PrivateReply);
    }
}
