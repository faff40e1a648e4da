//! Python jieba's HMM for unknown words (`jieba.finalseg`) at full precision.
//!
//! jieba-rs embeds the same model with its emission log-probabilities rounded to 6 decimals,
//! which changes rare near-tie Viterbi decisions (`常在便细领管`: Python cuts `常 在 便 细 领管`,
//! the rounded model `常在 便 细 领管`). Every emission value in jieba's `prob_emit.py` is exactly
//! `math.log(count / total)` with an integer count and one total per state, so
//! `data/jieba_hmm_counts.txt` (made by `scripts/export_hmm.py`) stores the counts and the model
//! is rebuilt here with the same two floating-point operations.

use std::fmt::Write as _;

use jieba_rs::HmmModel;

/// The counts table: `# comments`, one line of per-state totals (B E M S), then one line per
/// character `char count_B count_E count_M count_S`.
const COUNTS: &str = include_str!("../data/jieba_hmm_counts.txt");

/// `finalseg.MIN_FLOAT`, jieba's log(0).
const MIN_FLOAT: f64 = -3.14e100;

/// `prob_start.P` in state order B, E, M, S.
const START: [f64; 4] = [
    -0.26268660809250016,
    MIN_FLOAT,
    MIN_FLOAT,
    -1.4652633398537678,
];

/// `prob_trans.P` (row: from, column: to; B, E, M, S), impossible moves at `MIN_FLOAT`.
const TRANS: [[f64; 4]; 4] = [
    [MIN_FLOAT, -0.510825623765990, -0.916290731874155, MIN_FLOAT],
    [
        -0.5897149736854513,
        MIN_FLOAT,
        MIN_FLOAT,
        -0.8085250474669937,
    ],
    [
        MIN_FLOAT,
        -0.33344856811948514,
        -1.2603623820268226,
        MIN_FLOAT,
    ],
    [
        -0.7211965654669841,
        MIN_FLOAT,
        MIN_FLOAT,
        -0.6658631448798212,
    ],
];

/// Emission log-probability of a character seen `count` times in a state seen `total` times,
/// as Python computed it: `math.log(count / total)`.
pub(crate) fn emission(count: u64, total: u64) -> f64 {
    (count as f64 / total as f64).ln()
}

/// Per-state emission lists (`char`, log-probability) from the embedded counts.
pub(crate) fn emissions() -> [Vec<(char, f64)>; 4] {
    let mut lines = COUNTS
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty());
    let mut out: [Vec<(char, f64)>; 4] = Default::default();
    let Some(totals_line) = lines.next() else {
        return out;
    };
    let totals: Vec<u64> = totals_line
        .split(' ')
        .filter_map(|t| t.parse().ok())
        .collect();
    for line in lines {
        let mut fields = line.split(' ');
        let Some(c) = fields.next().and_then(|f| f.chars().next()) else {
            continue;
        };
        for ((state, field), &total) in out.iter_mut().zip(fields).zip(&totals) {
            match field.parse::<u64>() {
                Ok(0) | Err(_) => {}
                Ok(count) => state.push((c, emission(count, total))),
            }
        }
    }
    out
}

/// The model in jieba-rs's `HmmModel` text format. Floats are written with Rust's shortest
/// round-trip form, so parsing gives back the same bits.
fn model_text() -> String {
    let mut text = String::with_capacity(1 << 20);
    let row = |values: &[f64; 4]| values.map(|v| format!("{v:e}")).join(" ");
    let _ = writeln!(text, "{}", row(&START));
    for line in &TRANS {
        let _ = writeln!(text, "{}", row(line));
    }
    for state in emissions() {
        let pairs: Vec<String> = state.iter().map(|(c, v)| format!("{c}:{v:e}")).collect();
        let _ = writeln!(text, "{}", pairs.join(","));
    }
    text
}

/// Python jieba's HMM as a jieba-rs model.
pub(crate) fn python_hmm() -> HmmModel {
    let text = model_text();
    // The table is part of the crate and checked by the tests below.
    HmmModel::load(&mut text.as_bytes()).expect("embedded HMM table is well formed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emissions_equal_python_floats() {
        let e = emissions();
        let lookup =
            |state: usize, c: char| e[state].iter().find(|(x, _)| *x == c).map(|(_, v)| *v);
        // Values printed by CPython from jieba/finalseg/prob_emit.py (states B, E, M, S).
        assert_eq!(lookup(0, '常'), Some(-6.79283148381173));
        assert_eq!(lookup(1, '常'), Some(-6.361227457484643));
        assert_eq!(lookup(2, '常'), Some(-5.5081500302418664));
        assert_eq!(lookup(3, '常'), Some(-7.739229844298024));
        assert_eq!(lookup(3, '在'), Some(-3.717220480130881));
        assert_eq!(lookup(1, '细'), Some(-8.217134403448025));
        assert_eq!(lookup(0, '丂'), None);
        assert_eq!(lookup(3, '丂'), Some(-16.522012861691227));
        // Sizes of Python's tables restricted to U+4E00..U+9FD5.
        let sizes: Vec<usize> = e.iter().map(Vec::len).collect();
        assert_eq!(sizes, [6857, 7439, 6409, 14518]);
    }

    #[test]
    fn model_loads() {
        let _ = python_hmm();
    }
}
