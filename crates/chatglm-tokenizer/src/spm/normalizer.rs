//! SentencePiece text normalisation: the compiled character map stored in the model file
//! (`precompiled_charsmap`, e.g. NMT-NFKC), whitespace rules and the dummy prefix.

use super::proto::NormalizerSpecProto;
use super::trie::Trie;

/// The whitespace symbol `▁` (U+2581).
pub const SPACE_SYMBOL: &str = "\u{2581}";

/// Errors in the compiled normalisation rules of a model.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NormalizerError {
    /// The `precompiled_charsmap` blob is shorter than its header says.
    #[error("normalizer `{name}`: precompiled_charsmap is broken ({detail})")]
    BrokenCharsMap {
        /// Normaliser name from the model.
        name: String,
        /// What is wrong.
        detail: &'static str,
    },
}

/// The double-array trie of a compiled character map (darts-clone layout).
#[derive(Debug, Clone)]
struct CharsMap {
    units: Vec<u32>,
    /// Replacement strings, each terminated by a NUL byte.
    normalized: Vec<u8>,
}

impl CharsMap {
    fn parse(blob: &[u8], name: &str) -> Result<Self, NormalizerError> {
        let broken = |detail| NormalizerError::BrokenCharsMap {
            name: name.to_owned(),
            detail,
        };
        if blob.len() <= 4 {
            return Err(broken("blob shorter than its 4-byte header"));
        }
        let size = u32::from_le_bytes([blob[0], blob[1], blob[2], blob[3]]) as usize;
        if size >= blob.len() {
            return Err(broken("trie size exceeds the blob size"));
        }
        let rest = &blob[4..];
        if size > rest.len() || !size.is_multiple_of(4) {
            return Err(broken("trie size is not a whole number of 4-byte units"));
        }
        let units = rest[..size]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(Self {
            units,
            normalized: rest[size..].to_vec(),
        })
    }

    /// Longest rule matching a prefix of `input`: `(consumed bytes, replacement)`.
    fn longest_match(&self, input: &[u8]) -> Option<(usize, &[u8])> {
        #[inline]
        fn offset(unit: u32) -> usize {
            ((unit >> 10) << ((unit & (1 << 9)) >> 6)) as usize
        }
        #[inline]
        fn label(unit: u32) -> u32 {
            unit & ((1 << 31) | 0xff)
        }
        #[inline]
        fn has_leaf(unit: u32) -> bool {
            (unit >> 8) & 1 == 1
        }
        let units = &self.units;
        let mut best: Option<(usize, u32)> = None;
        let mut node_pos = offset(*units.first()?);
        for (i, &b) in input.iter().enumerate() {
            node_pos ^= usize::from(b);
            let unit = *units.get(node_pos)?;
            if label(unit) != u32::from(b) {
                break;
            }
            node_pos ^= offset(unit);
            if has_leaf(unit) {
                let value = units.get(node_pos)? & 0x7fff_ffff;
                best = Some((i + 1, value));
            }
        }
        let (len, value) = best?;
        let start = value as usize;
        let tail = self.normalized.get(start..)?;
        let end = tail.iter().position(|&c| c == 0).unwrap_or(tail.len());
        Some((len, &tail[..end]))
    }
}

/// Normaliser configured from a model's `NormalizerSpec`.
#[derive(Debug, Clone)]
pub(crate) struct Normalizer {
    charsmap: Option<CharsMap>,
    add_dummy_prefix: bool,
    remove_extra_whitespaces: bool,
    escape_whitespaces: bool,
    treat_whitespace_as_suffix: bool,
}

/// Length of the UTF-8 sequence announced by a lead byte (SentencePiece's `OneCharLen`).
#[inline]
pub(crate) fn one_char_len(lead: u8) -> usize {
    const TABLE: [usize; 16] = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4];
    TABLE[usize::from(lead >> 4)]
}

impl Normalizer {
    pub(crate) fn new(
        spec: &NormalizerSpecProto,
        treat_whitespace_as_suffix: bool,
    ) -> Result<Self, NormalizerError> {
        let charsmap = if spec.precompiled_charsmap.is_empty() {
            None
        } else {
            Some(CharsMap::parse(&spec.precompiled_charsmap, &spec.name)?)
        };
        Ok(Self {
            charsmap,
            add_dummy_prefix: spec.add_dummy_prefix,
            remove_extra_whitespaces: spec.remove_extra_whitespaces,
            escape_whitespaces: spec.escape_whitespaces,
            treat_whitespace_as_suffix,
        })
    }

    /// Normalises one prefix of `input`: `(normalised text, bytes consumed)`.
    #[inline]
    fn normalize_prefix<'a>(&'a self, input: &'a [u8], user_defined: &Trie) -> (&'a [u8], usize) {
        if let Some((len, _)) = user_defined.longest_prefix(input) {
            return (&input[..len], len);
        }
        if let Some(map) = &self.charsmap
            && let Some((len, out)) = map.longest_match(input)
        {
            return (out, len);
        }
        // The input is valid UTF-8 (it comes from a `&str`), so the lead byte gives the length.
        let len = one_char_len(input[0]).min(input.len());
        (&input[..len], len)
    }

    /// Normalises `input` as SentencePiece does before segmentation. `user_defined` holds the
    /// user-defined symbols, which are copied through untouched.
    pub(crate) fn normalize(&self, input: &str, user_defined: &Trie) -> String {
        let mut input = input.as_bytes();
        if self.remove_extra_whitespaces {
            while !input.is_empty() {
                let (piece, consumed) = self.normalize_prefix(input, user_defined);
                if piece != b" " {
                    break;
                }
                input = &input[consumed..];
            }
        }
        if input.is_empty() {
            return String::new();
        }
        let space: &[u8] = if self.escape_whitespaces {
            SPACE_SYMBOL.as_bytes()
        } else {
            b" "
        };
        let mut out: Vec<u8> = Vec::with_capacity(input.len() * 3);
        if !self.treat_whitespace_as_suffix && self.add_dummy_prefix {
            out.extend_from_slice(space);
        }
        let mut is_prev_space = self.remove_extra_whitespaces;
        while !input.is_empty() {
            let (mut piece, consumed) = self.normalize_prefix(input, user_defined);
            if is_prev_space {
                while let [b' ', rest @ ..] = piece {
                    piece = rest;
                }
            }
            if !piece.is_empty() {
                if self.escape_whitespaces && piece.contains(&b' ') {
                    for &c in piece {
                        if c == b' ' {
                            out.extend_from_slice(space);
                        } else {
                            out.push(c);
                        }
                    }
                } else {
                    out.extend_from_slice(piece);
                }
                is_prev_space = piece.ends_with(b" ");
            }
            input = &input[consumed..];
            if !self.remove_extra_whitespaces {
                is_prev_space = false;
            }
        }
        if self.remove_extra_whitespaces {
            while out.ends_with(space) {
                out.truncate(out.len() - space.len());
            }
        }
        if self.treat_whitespace_as_suffix && self.add_dummy_prefix {
            out.extend_from_slice(space);
        }
        match String::from_utf8(out) {
            Ok(s) => s,
            // Only a corrupt character map can produce invalid UTF-8.
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }
}
