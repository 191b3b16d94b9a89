//! Instagram's messaging window: a reply is allowed for 24 hours after the
//! user's last message, postback, reaction or referral, and for 7 days with
//! the `HUMAN_AGENT` tag. Pure rules over what the store remembers.

use crate::clock::UnixMs;

pub const STANDARD_MS: i64 = 24 * 60 * 60 * 1000;
pub const HUMAN_AGENT_MS: i64 = 7 * 24 * 60 * 60 * 1000;

/// What the gateway knows of one conversation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowFacts {
    /// The user's last window-opening event.
    pub last_inbound_ms: Option<UnixMs>,
    /// When Graph last refused an untagged send as outside the window.
    pub standard_refused_ms: Option<UnixMs>,
    /// When Graph last refused a `HUMAN_AGENT` send as outside the window.
    pub human_agent_refused_ms: Option<UnixMs>,
}

impl WindowFacts {
    /// What `account` knows of its window with a person, from every
    /// account's facts. An account configured as `me` (Graph's name for
    /// "the token's own account") matches whichever id the webhooks carry,
    /// so it sees the union.
    pub fn of_account(account: &str, rows: &[(String, WindowFacts)]) -> Option<WindowFacts> {
        rows.iter()
            .filter(|(a, _)| account == ME || a == account)
            .map(|(_, facts)| *facts)
            .reduce(|a, b| WindowFacts {
                last_inbound_ms: a.last_inbound_ms.max(b.last_inbound_ms),
                standard_refused_ms: a.standard_refused_ms.max(b.standard_refused_ms),
                human_agent_refused_ms: a.human_agent_refused_ms.max(b.human_agent_refused_ms),
            })
    }
}

/// Graph's alias for the account a token belongs to.
pub const ME: &str = "me";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowState {
    Open,
    HumanAgentOnly,
    Closed,
    Unknown,
}

impl WindowState {
    pub fn as_str(self) -> &'static str {
        match self {
            WindowState::Open => "OPEN",
            WindowState::HumanAgentOnly => "HUMAN_AGENT_ONLY",
            WindowState::Closed => "CLOSED",
            WindowState::Unknown => "UNKNOWN",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub last_inbound_ms: Option<UnixMs>,
    pub standard_closes_ms: Option<UnixMs>,
    pub human_agent_closes_ms: Option<UnixMs>,
    pub state: WindowState,
}

/// Is a recipient the gateway never heard from sent through?
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum WindowPolicy {
    /// Yes: the conversation may predate the gateway; Graph has the last word.
    #[default]
    Lenient,
    /// No: refuse without calling Graph.
    Strict,
}

/// What to do with a send, given the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Send,
    /// Outside 24 hours but inside 7 days, with `--auto-human-agent`.
    SendWithHumanAgent,
    /// Outside the window; `closed_at` is unknown only in strict mode for a
    /// recipient never heard from.
    Refuse {
        closed_at: Option<UnixMs>,
    },
}

impl Window {
    /// Each window closes at the earlier of its length after the last
    /// inbound event and a refusal from Graph seen since that event.
    pub fn evaluate(facts: Option<&WindowFacts>, now: UnixMs) -> Window {
        let facts = facts.copied().unwrap_or_default();
        let last = facts.last_inbound_ms;
        let since_last = |refused: Option<UnixMs>| refused.filter(|r| last.is_none_or(|l| *r >= l));
        let earliest = |a: Option<UnixMs>, b: Option<UnixMs>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let human_agent = earliest(
            last.map(|l| l + HUMAN_AGENT_MS),
            since_last(facts.human_agent_refused_ms),
        );
        let standard = earliest(
            earliest(
                last.map(|l| l + STANDARD_MS),
                since_last(facts.standard_refused_ms),
            ),
            human_agent,
        );
        let state = match (standard, human_agent) {
            (None, _) => WindowState::Unknown,
            (Some(s), _) if now < s => WindowState::Open,
            (_, Some(h)) if now < h => WindowState::HumanAgentOnly,
            _ => WindowState::Closed,
        };
        Window {
            last_inbound_ms: last,
            standard_closes_ms: standard,
            human_agent_closes_ms: human_agent,
            state,
        }
    }

    pub fn decide(
        &self,
        tagged_human_agent: bool,
        policy: WindowPolicy,
        auto_human_agent: bool,
        now: UnixMs,
    ) -> Decision {
        let unknown = || match policy {
            WindowPolicy::Lenient => Decision::Send,
            WindowPolicy::Strict => Decision::Refuse { closed_at: None },
        };
        let within = |closes: Option<UnixMs>| closes.map(|c| now < c);
        if tagged_human_agent {
            return match within(self.human_agent_closes_ms) {
                Some(true) => Decision::Send,
                Some(false) => Decision::Refuse {
                    closed_at: self.human_agent_closes_ms,
                },
                None => unknown(),
            };
        }
        match within(self.standard_closes_ms) {
            Some(true) => Decision::Send,
            Some(false) if auto_human_agent && within(self.human_agent_closes_ms) == Some(true) => {
                Decision::SendWithHumanAgent
            }
            Some(false) => Decision::Refuse {
                closed_at: self.standard_closes_ms,
            },
            None => unknown(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_sees_its_own_facts_and_me_sees_every_accounts() {
        let facts = |at| WindowFacts {
            last_inbound_ms: Some(at),
            standard_refused_ms: None,
            human_agent_refused_ms: None,
        };
        let rows = vec![("1".to_owned(), facts(10)), ("2".to_owned(), facts(20))];
        assert_eq!(WindowFacts::of_account("1", &rows), Some(facts(10)));
        assert_eq!(WindowFacts::of_account("me", &rows), Some(facts(20)));
        assert_eq!(WindowFacts::of_account("3", &rows), None);
    }

    const T0: i64 = 1_700_000_000_000;

    fn after_message() -> WindowFacts {
        WindowFacts {
            last_inbound_ms: Some(T0),
            ..WindowFacts::default()
        }
    }

    #[test]
    fn the_standard_window_closes_at_exactly_24_hours() {
        let facts = after_message();
        let just_before = Window::evaluate(Some(&facts), T0 + STANDARD_MS - 1);
        assert_eq!(just_before.state, WindowState::Open);
        assert_eq!(
            just_before.decide(false, WindowPolicy::Lenient, false, T0 + STANDARD_MS - 1),
            Decision::Send
        );
        let at = Window::evaluate(Some(&facts), T0 + STANDARD_MS);
        assert_eq!(at.state, WindowState::HumanAgentOnly);
        assert_eq!(at.standard_closes_ms, Some(T0 + STANDARD_MS));
        assert_eq!(
            at.decide(false, WindowPolicy::Lenient, false, T0 + STANDARD_MS),
            Decision::Refuse {
                closed_at: Some(T0 + STANDARD_MS)
            }
        );
        assert_eq!(
            at.decide(true, WindowPolicy::Lenient, false, T0 + STANDARD_MS),
            Decision::Send
        );
        assert_eq!(
            at.decide(false, WindowPolicy::Lenient, true, T0 + STANDARD_MS),
            Decision::SendWithHumanAgent
        );
    }

    #[test]
    fn the_human_agent_window_closes_at_exactly_7_days() {
        let facts = after_message();
        let before = Window::evaluate(Some(&facts), T0 + HUMAN_AGENT_MS - 1);
        assert_eq!(before.state, WindowState::HumanAgentOnly);
        assert_eq!(
            before.decide(true, WindowPolicy::Strict, false, T0 + HUMAN_AGENT_MS - 1),
            Decision::Send
        );
        let at = Window::evaluate(Some(&facts), T0 + HUMAN_AGENT_MS);
        assert_eq!(at.state, WindowState::Closed);
        let closed = Decision::Refuse {
            closed_at: Some(T0 + HUMAN_AGENT_MS),
        };
        assert_eq!(
            at.decide(true, WindowPolicy::Lenient, false, T0 + HUMAN_AGENT_MS),
            closed
        );
        assert_eq!(
            at.decide(false, WindowPolicy::Lenient, true, T0 + HUMAN_AGENT_MS),
            Decision::Refuse {
                closed_at: Some(T0 + STANDARD_MS)
            }
        );
    }

    #[test]
    fn strangers_are_sent_through_unless_strict() {
        let w = Window::evaluate(None, T0);
        assert_eq!(w.state, WindowState::Unknown);
        assert_eq!(
            w.decide(false, WindowPolicy::Lenient, false, T0),
            Decision::Send
        );
        assert_eq!(
            w.decide(true, WindowPolicy::Lenient, false, T0),
            Decision::Send
        );
        assert_eq!(
            w.decide(false, WindowPolicy::Strict, false, T0),
            Decision::Refuse { closed_at: None }
        );
    }

    #[test]
    fn a_refusal_from_graph_closes_the_window_until_the_user_writes_again() {
        let refused = WindowFacts {
            last_inbound_ms: Some(T0),
            standard_refused_ms: Some(T0 + 1000),
            human_agent_refused_ms: None,
        };
        let w = Window::evaluate(Some(&refused), T0 + 2000);
        assert_eq!(w.standard_closes_ms, Some(T0 + 1000));
        assert_eq!(w.state, WindowState::HumanAgentOnly);
        // A refusal older than the last message no longer counts.
        let renewed = WindowFacts {
            last_inbound_ms: Some(T0 + 5000),
            ..refused
        };
        assert_eq!(
            Window::evaluate(Some(&renewed), T0 + 6000).state,
            WindowState::Open
        );
        // Graph refused a stranger: closed, though we never saw them write.
        let stranger = WindowFacts {
            standard_refused_ms: Some(T0),
            ..WindowFacts::default()
        };
        let w = Window::evaluate(Some(&stranger), T0 + 1);
        assert_eq!(w.state, WindowState::Closed);
        assert_eq!(
            w.decide(false, WindowPolicy::Lenient, false, T0 + 1),
            Decision::Refuse {
                closed_at: Some(T0)
            }
        );
        assert_eq!(
            w.decide(true, WindowPolicy::Lenient, false, T0 + 1),
            Decision::Send
        );
        let both = WindowFacts {
            human_agent_refused_ms: Some(T0),
            ..stranger
        };
        assert_eq!(
            Window::evaluate(Some(&both), T0 + 1).decide(
                true,
                WindowPolicy::Lenient,
                false,
                T0 + 1
            ),
            Decision::Refuse {
                closed_at: Some(T0)
            }
        );
    }
}
