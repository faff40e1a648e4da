//! Stop strings applied to a stream of text deltas, engine-independent.

/// Holds back text that could be the start of a stop string, cuts the stream at the first match.
#[derive(Debug, Default)]
pub(crate) struct StopFilter {
    stops: Vec<String>,
    pending: String,
}

/// What [`StopFilter::push`] decided.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Filtered {
    /// Text that is safe to send on.
    pub text: String,
    /// A stop string was found: generation must end and nothing more is sent.
    pub stopped: bool,
}

impl StopFilter {
    /// A filter for these stop strings (empty strings are ignored).
    pub(crate) fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            pending: String::new(),
        }
    }

    /// Adds a delta and returns what can be sent now.
    pub(crate) fn push(&mut self, delta: &str) -> Filtered {
        if self.stops.is_empty() {
            return Filtered {
                text: delta.to_string(),
                stopped: false,
            };
        }
        self.pending.push_str(delta);
        let first = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min();
        if let Some(at) = first {
            let text = self.pending[..at].to_string();
            self.pending.clear();
            return Filtered {
                text,
                stopped: true,
            };
        }
        // Keep the longest tail that is the beginning of some stop string.
        let keep_from = self
            .pending
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let tail = &self.pending[i..];
                self.stops.iter().any(|s| s.starts_with(tail))
            })
            .unwrap_or(self.pending.len());
        let text = self.pending[..keep_from].to_string();
        self.pending.drain(..keep_from);
        Filtered {
            text,
            stopped: false,
        }
    }

    /// The held-back text once the stream ended without a match.
    pub(crate) fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], deltas: &[&str]) -> (String, bool) {
        let mut f = StopFilter::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for d in deltas {
            let r = f.push(d);
            out.push_str(&r.text);
            if r.stopped {
                return (out, true);
            }
        }
        out.push_str(&f.finish());
        (out, false)
    }

    #[test]
    fn cuts_at_a_stop_split_across_deltas() {
        assert_eq!(
            run(&["END"], &["ab", "cE", "N", "Dxyz"]),
            ("abc".into(), true)
        );
    }

    #[test]
    fn releases_a_false_start_and_flushes() {
        assert_eq!(run(&["END"], &["aE", "Nb", "E"]), ("aENbE".into(), false));
    }

    #[test]
    fn earliest_of_several_stops_wins_and_multibyte_is_safe() {
        assert_eq!(
            run(&["。", "问："], &["你好", "问", "：再见。"]),
            ("你好".into(), true)
        );
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
    }
}
