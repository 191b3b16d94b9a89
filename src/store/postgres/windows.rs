//! Each replica's copy of the windows table, read on every send. Every
//! change to a row is announced with the row as it now is and a version
//! from one sequence, so a replica applies announcements and reloads in
//! any interleaving and keeps the newest state of each row.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::model::window::WindowFacts;

/// One row of the windows table, as announced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct WindowRow {
    #[serde(rename = "a")]
    pub account: String,
    #[serde(rename = "u")]
    pub user: String,
    #[serde(rename = "v")]
    pub version: i64,
    #[serde(rename = "i")]
    pub last_inbound_ms: Option<i64>,
    #[serde(rename = "s")]
    pub standard_refused_ms: Option<i64>,
    #[serde(rename = "h")]
    pub human_agent_refused_ms: Option<i64>,
}

impl WindowRow {
    fn facts(&self) -> WindowFacts {
        WindowFacts {
            last_inbound_ms: self.last_inbound_ms,
            standard_refused_ms: self.standard_refused_ms,
            human_agent_refused_ms: self.human_agent_refused_ms,
        }
    }

    /// The latest moment the row speaks of.
    fn latest(&self) -> i64 {
        [
            self.last_inbound_ms,
            self.standard_refused_ms,
            self.human_agent_refused_ms,
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(0)
    }
}

/// Per person, each account's row.
#[derive(Debug, Default)]
pub(super) struct Mirror {
    rows: HashMap<String, Vec<WindowRow>>,
}

impl Mirror {
    pub fn from_rows(rows: impl IntoIterator<Item = WindowRow>) -> Self {
        let mut mirror = Self::default();
        for row in rows {
            mirror.put(row);
        }
        mirror
    }

    /// Takes `row` unless a newer version of it is here already.
    pub fn put(&mut self, row: WindowRow) {
        let rows = self.rows.entry(row.user.clone()).or_default();
        match rows.iter_mut().find(|r| r.account == row.account) {
            Some(old) if old.version >= row.version => {}
            Some(old) => *old = row,
            None => rows.push(row),
        }
    }

    pub fn get(&self, user: &str) -> Vec<(String, WindowFacts)> {
        let mut found: Vec<_> = self
            .rows
            .get(user)
            .map(|rows| {
                rows.iter()
                    .map(|r| (r.account.clone(), r.facts()))
                    .collect()
            })
            .unwrap_or_default();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        found
    }

    /// Forgets rows that speak of nothing since `since`, as pruning does
    /// to the table.
    pub fn prune(&mut self, since: i64) {
        self.rows.retain(|_, rows| {
            rows.retain(|r| r.latest() >= since);
            !rows.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(version: i64, inbound: Option<i64>, refused: Option<i64>) -> WindowRow {
        WindowRow {
            account: "A".into(),
            user: "U".into(),
            version,
            last_inbound_ms: inbound,
            standard_refused_ms: refused,
            human_agent_refused_ms: None,
        }
    }

    #[test]
    fn the_newest_version_of_a_row_wins_in_any_order_of_arrival() {
        let mut mirror = Mirror::default();
        mirror.put(row(7, Some(100), None));
        // An older announcement arriving late (say, after a reload that
        // already had the newer row) changes nothing.
        mirror.put(row(5, Some(50), Some(60)));
        assert_eq!(mirror.get("U")[0].1.last_inbound_ms, Some(100));
        assert_eq!(mirror.get("U")[0].1.standard_refused_ms, None);
        mirror.put(row(9, Some(100), Some(120)));
        assert_eq!(mirror.get("U")[0].1.standard_refused_ms, Some(120));
        mirror.prune(121);
        assert!(mirror.get("U").is_empty());
    }
}
