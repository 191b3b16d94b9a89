//! Refused input (bad keys, bad signatures, oversized or stalled requests)
//! is logged at a bounded rate: a flood of it cannot fill the disk or keep
//! the log writer busy. What is not logged is counted and reported.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Refusal lines written per second at most.
pub const PER_SECOND: u64 = 10;

static SECOND: AtomicU64 = AtomicU64::new(0);
static LOGGED: AtomicU64 = AtomicU64::new(0);
static SUPPRESSED: AtomicU64 = AtomicU64::new(0);

/// Runs `log` (which writes one line) unless this second's share is spent.
pub fn log(log: impl FnOnce()) {
    let now = unix_second();
    if SECOND.swap(now, Ordering::Relaxed) != now {
        LOGGED.store(0, Ordering::Relaxed);
        let missed = SUPPRESSED.swap(0, Ordering::Relaxed);
        if missed > 0 {
            tracing::warn!(suppressed = missed, "more refusals than are logged");
        }
    }
    if LOGGED.fetch_add(1, Ordering::Relaxed) < PER_SECOND {
        log();
    } else {
        SUPPRESSED.fetch_add(1, Ordering::Relaxed);
    }
}

/// Refusal lines written per second for one caller (an API key, or "-"
/// when authentication is off) at most: a key that floods refusals fills
/// its own share and leaves room for the others'.
pub const PER_CALLER_PER_SECOND: u64 = 5;

/// Callers given their own share; past that, they share the global one.
const MAX_CALLERS: usize = 4096;

#[derive(Default)]
struct Share {
    second: u64,
    logged: u64,
    suppressed: u64,
}

static CALLERS: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<String, Share>>> =
    std::sync::LazyLock::new(Default::default);

/// Runs `log` (which writes one line about a refusal of `caller`'s call)
/// unless this second's share of that caller is spent; the lines left out
/// are counted in a line of their own when the caller's next second comes.
pub fn log_for(caller: &str, log: impl FnOnce()) {
    let now = unix_second();
    let allowed = {
        let mut callers = CALLERS.lock().unwrap_or_else(|e| e.into_inner());
        if !callers.contains_key(caller) && callers.len() >= MAX_CALLERS {
            None
        } else {
            let share = callers.entry(caller.to_owned()).or_default();
            let mut missed = 0;
            if share.second != now {
                share.second = now;
                share.logged = 0;
                missed = std::mem::take(&mut share.suppressed);
            }
            share.logged += 1;
            let allowed = share.logged <= PER_CALLER_PER_SECOND;
            if !allowed {
                share.suppressed += 1;
            }
            Some((allowed, missed))
        }
    };
    match allowed {
        None => self::log(log),
        Some((allowed, missed)) => {
            if missed > 0 {
                tracing::warn!(
                    key = caller,
                    suppressed = missed,
                    "more refusals of this caller's calls than are logged"
                );
            }
            if allowed {
                log();
            } else {
                SUPPRESSED.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn unix_second() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// A refusal in a few words.
pub fn note(what: &'static str) {
    log(|| tracing::warn!("refused: {what}"));
}

/// The most of one caller- or Meta-supplied value a log line carries.
pub const MAX_LOGGED_BYTES: usize = 256;

/// `value` as a log line may carry it: at most [`MAX_LOGGED_BYTES`], with
/// control characters escaped and the full length noted when cut, so no
/// value can make a line long or break it in two.
pub fn shown(value: &str) -> String {
    shown_within(value, MAX_LOGGED_BYTES)
}

/// [`shown`], cut at `max` bytes instead.
pub fn shown_within(value: &str, max: usize) -> String {
    let mut out: String = crate::model::error::truncate(value, max)
        .chars()
        .flat_map(char::escape_debug)
        .collect();
    if value.len() > max {
        out.push_str(&format!(" ({} bytes)", value.len()));
    }
    out
}

/// Refusals not logged since the last report.
pub fn suppressed() -> u64 {
    SUPPRESSED.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shown_value_is_bounded_and_on_one_line() {
        let long = "7".repeat(250_000);
        let line = shown(&long);
        assert!(line.len() < MAX_LOGGED_BYTES + 32, "{}", line.len());
        assert!(line.ends_with("(250000 bytes)"), "{line}");
        assert_eq!(shown("a\nb\u{1b}[31m\0"), "a\\nb\\u{1b}[31m\\0");
        assert_eq!(shown("1784"), "1784");
    }

    #[test]
    fn one_callers_flood_is_bounded_and_leaves_the_others_their_share() {
        let (flooder, other) = (AtomicU64::new(0), AtomicU64::new(0));
        let started = std::time::Instant::now();
        for _ in 0..10_000 {
            log_for("test-flooder", || {
                flooder.fetch_add(1, Ordering::Relaxed);
            });
        }
        let seconds = started.elapsed().as_secs() + 2;
        assert!(flooder.load(Ordering::Relaxed) <= PER_CALLER_PER_SECOND * seconds);
        log_for("test-other", || {
            other.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(other.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_flood_of_refusals_writes_a_bounded_number_of_lines() {
        let written = std::sync::atomic::AtomicU64::new(0);
        let started = std::time::Instant::now();
        for _ in 0..10_000 {
            log(|| {
                written.fetch_add(1, Ordering::Relaxed);
            });
        }
        // At most one second's share per second boundary crossed.
        let seconds = started.elapsed().as_secs() + 2;
        assert!(written.load(Ordering::Relaxed) <= PER_SECOND * seconds);
        assert!(suppressed() > 0 || written.load(Ordering::Relaxed) < 10_000);
    }
}
