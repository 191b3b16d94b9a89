//! The windows table mirrored in memory: read on every send, changed only
//! after a commit succeeds (this process is the table's only writer).

use std::collections::HashMap;

use rusqlite::Connection;

use crate::model::window::WindowFacts;
use crate::store::StoreError;

/// The windows table in memory: per person, each account's facts.
pub(super) type Windows = HashMap<String, Vec<(String, WindowFacts)>>;

/// A change to one (account, user) row of the windows table.
pub(super) enum WindowChange {
    Inbound(i64),
    Refused { at: i64, human_agent: bool },
}

pub(super) fn apply(windows: &mut Windows, account: &str, user: &str, change: &WindowChange) {
    let rows = windows.entry(user.to_owned()).or_default();
    let facts = match rows.iter_mut().find(|(a, _)| a == account) {
        Some((_, facts)) => facts,
        None => {
            rows.push((account.to_owned(), WindowFacts::default()));
            &mut rows.last_mut().expect("just pushed").1
        }
    };
    match *change {
        // A person who writes reopens the window, whatever Graph said before
        // and whichever clock is ahead.
        WindowChange::Inbound(at) => {
            facts.last_inbound_ms = Some(facts.last_inbound_ms.map_or(at, |l| l.max(at)));
            facts.standard_refused_ms = None;
            facts.human_agent_refused_ms = None;
        }
        WindowChange::Refused {
            at,
            human_agent: false,
        } => facts.standard_refused_ms = Some(at),
        WindowChange::Refused {
            at,
            human_agent: true,
        } => facts.human_agent_refused_ms = Some(at),
    }
}

pub(super) fn latest(facts: &WindowFacts) -> i64 {
    [
        facts.last_inbound_ms,
        facts.standard_refused_ms,
        facts.human_agent_refused_ms,
    ]
    .into_iter()
    .flatten()
    .max()
    .unwrap_or(0)
}

pub(super) fn load_windows(conn: &Connection) -> Result<Windows, StoreError> {
    let mut windows = Windows::new();
    let mut stmt = conn.prepare(
        "SELECT account, user, last_inbound_ms, standard_refused_ms, human_agent_refused_ms FROM windows",
    )?;
    let rows = stmt.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, String>(1)?,
            WindowFacts {
                last_inbound_ms: row.get(2)?,
                standard_refused_ms: row.get(3)?,
                human_agent_refused_ms: row.get(4)?,
            },
        ))
    })?;
    for row in rows {
        let (account, user, facts) = row?;
        windows.entry(user).or_default().push((account, facts));
    }
    Ok(windows)
}
