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
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
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
    let mut out: String = crate::error::truncate(value, MAX_LOGGED_BYTES)
        .chars()
        .flat_map(char::escape_debug)
        .collect();
    if value.len() > MAX_LOGGED_BYTES {
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
