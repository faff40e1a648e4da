//! Text rules of the Python tokenizers around SentencePiece: special-token splitting, the
//! ChatGLM-6B whitespace pieces and the decode clean-up of transformers.

use crate::config::TokenizerConfig;

/// A piece of input text: plain text or a special token typed in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunk<'a> {
    Text(&'a str),
    Special(&'a str, u32),
}

/// Python's `str.isspace` for one character.
pub(crate) fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Splits `text` at the leftmost-longest occurrences of `tokens` (exact match, text kept as is).
pub(crate) fn split_exact<'a>(text: &'a str, tokens: &[&'static str]) -> Vec<Chunk<'a>> {
    let with_ids: Vec<(&'static str, u32)> = tokens.iter().map(|t| (*t, 0)).collect();
    split_raw(text, &with_ids)
}

fn split_raw<'a>(text: &'a str, tokens: &[(&'static str, u32)]) -> Vec<Chunk<'a>> {
    let mut out = Vec::new();
    if tokens.is_empty() {
        out.push(Chunk::Text(text));
        return out;
    }
    let bytes = text.as_bytes();
    let mut first = [false; 256];
    for (t, _) in tokens {
        if let Some(&b) = t.as_bytes().first() {
            first[usize::from(b)] = true;
        }
    }
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        if !first[usize::from(bytes[i])] {
            i += 1;
            continue;
        }
        let best = tokens
            .iter()
            .filter(|(t, _)| bytes[i..].starts_with(t.as_bytes()))
            .max_by_key(|(t, _)| t.len());
        match best {
            Some(&(token, id)) => {
                if start < i {
                    out.push(Chunk::Text(&text[start..i]));
                }
                out.push(Chunk::Special(&text[i..i + token.len()], id));
                i += token.len();
                start = i;
            }
            None => i += 1,
        }
    }
    if start < bytes.len() {
        out.push(Chunk::Text(&text[start..]));
    }
    out
}

/// The splitting of transformers' slow `tokenize()` for no-split special tokens: text around a
/// special token loses its whitespace on that side, and empty pieces are dropped.
pub(crate) fn split_no_split<'a>(text: &'a str, tokens: &[(&'static str, u32)]) -> Vec<Chunk<'a>> {
    let mut chunks = split_raw(text, tokens);
    for i in 0..chunks.len() {
        if let Chunk::Special(..) = chunks[i] {
            if let Some(Chunk::Text(t)) = chunks.get(i + 1) {
                chunks[i + 1] = Chunk::Text(t.trim_start_matches(py_isspace));
            }
            if i > 0
                && let Chunk::Text(t) = chunks[i - 1]
            {
                chunks[i - 1] = Chunk::Text(t.trim_end_matches(py_isspace));
            }
        }
    }
    chunks.retain(|c| !matches!(c, Chunk::Text("")));
    chunks
}

/// Lower-cases `text` outside the given special tokens (transformers' `do_lower_case` step).
pub(crate) fn lower_outside(text: &str, tokens: &[(&'static str, u32)]) -> String {
    split_raw(text, tokens)
        .into_iter()
        .map(|c| match c {
            Chunk::Text(t) => t.to_lowercase(),
            Chunk::Special(t, _) => t.to_owned(),
        })
        .collect()
}

/// Applies `remove_space` and `do_lower_case` (ChatGLM-6B `preprocess_text`).
fn preprocess_text(text: &str, config: &TokenizerConfig) -> String {
    let mut out = if config.remove_space {
        text.split(py_isspace)
            .filter(|w| !w.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    } else {
        text.to_owned()
    };
    if config.do_lower_case {
        out = out.to_lowercase();
    }
    out
}

/// ChatGLM-6B text rules before SentencePiece: `\n` -> `<n>`, `\t` -> `<|tab|>`, runs of spaces
/// -> `<|blank_N|>` (longest first, `N <= max_blank_length`, a leftover single space stays).
pub(crate) fn preprocess_v1(text: &str, config: &TokenizerConfig) -> String {
    let text = if config.remove_space || config.do_lower_case {
        std::borrow::Cow::Owned(preprocess_text(text, config))
    } else {
        std::borrow::Cow::Borrowed(text)
    };
    let max = config.max_blank_length.max(1);
    let mut out = String::with_capacity(text.len() + text.len() / 4);
    let mut spaces = 0usize;
    let flush = |out: &mut String, mut run: usize| {
        if max >= 2 {
            while run >= max {
                out.push_str(&format!("<|blank_{max}|>"));
                run -= max;
            }
        }
        match run {
            0 => {}
            1 => out.push(' '),
            n if max >= 2 => out.push_str(&format!("<|blank_{n}|>")),
            n => out.extend(std::iter::repeat_n(' ', n)),
        }
    };
    for c in text.chars() {
        if c == ' ' {
            spaces += 1;
            continue;
        }
        if spaces > 0 {
            flush(&mut out, spaces);
            spaces = 0;
        }
        match c {
            '\n' => out.push_str("<n>"),
            '\t' => out.push_str("<|tab|>"),
            c => out.push(c),
        }
    }
    flush(&mut out, spaces);
    out
}

/// Reverses the ChatGLM-6B text rules on decoded text.
pub(crate) fn postprocess_v1(text: &str, max_blank_length: usize) -> String {
    if !text.contains('<') {
        return text.to_owned();
    }
    let mut out = text.replace("<n>", "\n").replace("<|tab|>", "\t");
    if out.contains("<|blank_") {
        for i in 2..=max_blank_length {
            let token = format!("<|blank_{i}|>");
            if out.contains(&token) {
                out = out.replace(&token, &" ".repeat(i));
            }
        }
    }
    out
}

/// transformers' `clean_up_tokenization`: removes the space before punctuation and contractions.
pub(crate) fn clean_up_tokenization(text: &str) -> String {
    if !text.contains(' ') {
        return text.to_owned();
    }
    text.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
}

/// The clean-up patterns, for the streaming decoder's hold-back rule.
pub(crate) const CLEAN_UP_PATTERNS: [&str; 10] = [
    " .", " ?", " !", " ,", " ' ", " n't", " 'm", " 's", " 've", " 're",
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ChatVersion, TokenizerConfig};

    #[test]
    fn blank_runs_follow_python_replace_order() {
        let c = TokenizerConfig::new(ChatVersion::V1);
        assert_eq!(preprocess_v1("a  b", &c), "a<|blank_2|>b");
        assert_eq!(preprocess_v1(&" ".repeat(81), &c), "<|blank_80|> ");
        assert_eq!(
            preprocess_v1(&format!("a{}b", " ".repeat(100)), &c),
            "a<|blank_80|><|blank_20|>b"
        );
        assert_eq!(preprocess_v1("x\n\ty ", &c), "x<n><|tab|>y ");
    }

    #[test]
    fn no_split_tokens_strip_neighbours() {
        let toks = [("<eop>", 7)];
        assert_eq!(
            split_no_split("text <eop> more", &toks),
            vec![
                Chunk::Text("text"),
                Chunk::Special("<eop>", 7),
                Chunk::Text("more")
            ]
        );
        assert_eq!(
            split_no_split("  <eop>  ", &toks),
            vec![Chunk::Special("<eop>", 7)]
        );
    }
}
