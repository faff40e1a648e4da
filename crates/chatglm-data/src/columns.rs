//! Which header columns hold the question, the answer and the history.

use crate::error::{Error, Result};
use crate::location::Location;

/// Header pairs tried in order when no column is named: the first pair present wins.
pub const DEFAULT_COLUMN_PAIRS: [(&str, &str); 5] = [
    ("Q", "A"),
    ("问题", "答案"),
    ("question", "answer"),
    ("prompt", "response"),
    ("content", "summary"),
];

/// Default name of the history column (used when present and none is named).
pub const DEFAULT_HISTORY_COLUMN: &str = "history";

/// How to read inputs: which sheet and which columns.
///
/// Column names match the header cell (or JSON key) after trimming; an exact match wins, else a
/// case-insensitive one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// Read only this sheet of each workbook (all worksheets when `None`).
    pub sheet: Option<String>,
    /// Question column (default: the first present of [`DEFAULT_COLUMN_PAIRS`]).
    pub prompt_column: Option<String>,
    /// Answer column (default: the first present of [`DEFAULT_COLUMN_PAIRS`]).
    pub response_column: Option<String>,
    /// History column holding `[[q, a], ...]` (default: `history` when present).
    pub history_column: Option<String>,
}

impl ReadOptions {
    /// Reads only `sheet`.
    pub fn with_sheet(mut self, sheet: impl Into<String>) -> Self {
        self.sheet = Some(sheet.into());
        self
    }

    /// Names the question column.
    pub fn with_prompt_column(mut self, name: impl Into<String>) -> Self {
        self.prompt_column = Some(name.into());
        self
    }

    /// Names the answer column.
    pub fn with_response_column(mut self, name: impl Into<String>) -> Self {
        self.response_column = Some(name.into());
        self
    }

    /// Names the history column.
    pub fn with_history_column(mut self, name: impl Into<String>) -> Self {
        self.history_column = Some(name.into());
        self
    }
}

/// Resolved column positions in a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Columns {
    pub prompt: usize,
    pub response: usize,
    pub history: Option<usize>,
}

fn find(header: &[String], name: &str) -> Option<usize> {
    let name = name.trim();
    header.iter().position(|h| h.trim() == name).or_else(|| {
        let lower = name.to_lowercase();
        header.iter().position(|h| h.trim().to_lowercase() == lower)
    })
}

fn quoted(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(" or ")
}

/// Finds the columns `opts` asks for in `header`.
///
/// # Errors
/// [`Error::MissingColumn`] naming `location`, what was looked for and the columns found.
pub(crate) fn resolve(
    header: &[String],
    opts: &ReadOptions,
    location: &Location,
) -> Result<Columns> {
    let missing = |role: &'static str, wanted: String| Error::MissingColumn {
        location: Box::new(location.clone()),
        role,
        wanted,
        found: header.iter().map(|h| h.trim().to_owned()).collect(),
    };
    let side = |explicit: &Option<String>,
                role: &'static str,
                pick: fn(&(&'static str, &'static str)) -> &'static str| {
        match explicit {
            Some(name) => find(header, name).ok_or_else(|| missing(role, format!("{name:?}"))),
            None => {
                let names: Vec<&str> = DEFAULT_COLUMN_PAIRS.iter().map(pick).collect();
                names
                    .iter()
                    .find_map(|n| find(header, n))
                    .ok_or_else(|| missing(role, quoted(&names)))
            }
        }
    };
    let (prompt, response) = match (&opts.prompt_column, &opts.response_column) {
        (None, None) => DEFAULT_COLUMN_PAIRS
            .iter()
            .find_map(|(q, a)| Some((find(header, q)?, find(header, a)?)))
            .ok_or_else(|| {
                let pairs: Vec<String> = DEFAULT_COLUMN_PAIRS
                    .iter()
                    .map(|(q, a)| format!("{q:?}/{a:?}"))
                    .collect();
                missing("question/answer", format!("pair ({})", pairs.join(", ")))
            })?,
        (p, r) => (side(p, "question", |p| p.0)?, side(r, "answer", |p| p.1)?),
    };
    let history = match &opts.history_column {
        Some(name) => {
            Some(find(header, name).ok_or_else(|| missing("history", format!("{name:?}")))?)
        }
        None => find(header, DEFAULT_HISTORY_COLUMN),
    };
    Ok(Columns {
        prompt,
        response,
        history,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn defaults_in_order() {
        let loc = Location::file("x.csv");
        let o = ReadOptions::default();
        let c = resolve(&h(&["T", "Q", "A"]), &o, &loc).unwrap();
        assert_eq!((c.prompt, c.response, c.history), (1, 2, None));
        let c = resolve(&h(&["content", "summary", "问题", "答案"]), &o, &loc).unwrap();
        assert_eq!((c.prompt, c.response), (2, 3));
        let c = resolve(&h(&[" Question ", "ANSWER", "History"]), &o, &loc).unwrap();
        assert_eq!((c.prompt, c.response, c.history), (0, 1, Some(2)));
        // A lone "Q" without "A" does not count; the next full pair does.
        let c = resolve(&h(&["Q", "prompt", "response"]), &o, &loc).unwrap();
        assert_eq!((c.prompt, c.response), (1, 2));
    }

    #[test]
    fn explicit_and_missing() {
        let loc = Location::file("x.csv");
        let o = ReadOptions::default()
            .with_prompt_column("ask")
            .with_response_column("reply");
        let c = resolve(&h(&["reply", "ask"]), &o, &loc).unwrap();
        assert_eq!((c.prompt, c.response), (1, 0));
        let err = resolve(&h(&["ask", "other"]), &o, &loc)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"reply\"") && err.contains("\"ask\", \"other\""),
            "{err}"
        );
        let err = resolve(&h(&["x", "y"]), &ReadOptions::default(), &loc)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("x.csv") && err.contains("\"x\", \"y\""),
            "{err}"
        );
        let o = ReadOptions::default().with_history_column("hist");
        assert!(resolve(&h(&["Q", "A"]), &o, &loc).is_err());
    }
}
