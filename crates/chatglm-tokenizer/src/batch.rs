//! Batch encoding with truncation and left padding, building the attention masks and position
//! ids of the Python tokenizers' `_pad` (2D GLM positions and a `[seq, seq]` mask for
//! ChatGLM-6B; a padding mask and linear positions for ChatGLM2/3).

use crate::config::ChatVersion;
use crate::tokenizer::Tokenizer;

/// How to pad a batch (transformers' `padding` argument).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Padding {
    /// No padding (`padding=False`).
    #[default]
    DoNotPad,
    /// Pad to the longest sequence (`padding=True`).
    Longest,
    /// Pad to [`BatchOptions::max_length`] (`padding="max_length"`).
    MaxLength,
}

/// Options of [`Tokenizer::encode_batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchOptions {
    /// Add `[gMASK]` and `<sop>`/`sop`.
    pub add_special: bool,
    /// Padding strategy (always on the left, as the ChatGLM tokenizers pad).
    pub padding: Padding,
    /// `max_length`: target of `Padding::MaxLength` and limit of `truncation`.
    pub max_length: Option<usize>,
    /// Cut the text ids (before the specials are added) so each sequence fits `max_length`.
    pub truncation: bool,
    /// Round the padded length up to a multiple of this.
    pub pad_to_multiple_of: Option<usize>,
}

impl Default for BatchOptions {
    fn default() -> Self {
        Self {
            add_special: true,
            padding: Padding::DoNotPad,
            max_length: None,
            truncation: false,
            pad_to_multiple_of: None,
        }
    }
}

/// Attention mask of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttentionMask {
    /// ChatGLM-6B: `[batch][seq][seq]`, `true` = masked (cannot attend). The context attends
    /// bidirectionally, from `<sop>` on the mask is causal, padding is masked.
    Glm(Vec<Vec<Vec<bool>>>),
    /// ChatGLM2/3: `[batch][seq]`, 1 for tokens and 0 for padding.
    Padding(Vec<Vec<u32>>),
}

/// Position ids of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PositionIds {
    /// ChatGLM-6B: per sequence `[positions, block positions]`, each `[seq]`.
    Glm2d(Vec<[Vec<u32>; 2]>),
    /// ChatGLM2/3: `[batch][seq]`, `0..` after the padding.
    Linear(Vec<Vec<u32>>),
}

/// Output of [`Tokenizer::encode_batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchEncoding {
    /// `[batch][seq]` ids, left-padded with the pad id.
    pub input_ids: Vec<Vec<u32>>,
    /// The attention mask, when the Python tokenizer builds one (always for v2/v3; for v1 when a
    /// padding or `max_length` is set).
    pub attention_mask: Option<AttentionMask>,
    /// The position ids, under the same condition.
    pub position_ids: Option<PositionIds>,
}

/// ChatGLM-6B mask and 2D positions of one unpadded sequence.
///
/// # Shapes
/// `ids: [seq]` -> mask `[seq][seq]` (`true` = masked), positions `2 x [seq]`.
pub fn glm_mask_and_positions(
    ids: &[u32],
    sop: u32,
    mask: u32,
    gmask: u32,
) -> (Vec<Vec<bool>>, [Vec<u32>; 2]) {
    let len = ids.len();
    let context = ids.iter().position(|&t| t == sop).unwrap_or(len);
    let matrix = (0..len)
        .map(|i| (0..len).map(|j| j > i && j >= context).collect())
        .collect();
    let mask_token = if ids.contains(&mask) { mask } else { gmask };
    let mask_position = ids.iter().position(|&t| t == mask_token);
    let positions = (0..len)
        .map(|i| match mask_position {
            Some(p) if i >= context => p as u32,
            _ => i as u32,
        })
        .collect();
    let blocks = (0..len)
        .map(|i| {
            if i < context {
                0
            } else {
                (i - context + 1) as u32
            }
        })
        .collect();
    (matrix, [positions, blocks])
}

impl Tokenizer {
    /// Encodes several texts like the Python tokenizer called on a list (`tokenizer(texts, ...)`).
    pub fn encode_batch<S: AsRef<str>>(
        &self,
        texts: &[S],
        options: &BatchOptions,
    ) -> BatchEncoding {
        let seqs: Vec<Vec<u32>> = texts
            .iter()
            .map(|t| {
                let mut ids = self.encode(t.as_ref(), false);
                if options.truncation
                    && let Some(max) = options.max_length
                {
                    let specials = if options.add_special { 2 } else { 0 };
                    ids.truncate(max.saturating_sub(specials));
                }
                if options.add_special {
                    self.build_inputs_with_special_tokens(ids)
                } else {
                    ids
                }
            })
            .collect();
        self.pad_batch(seqs, options)
    }

    /// Pads already encoded sequences and builds their masks and positions (`tokenizer.pad`).
    pub fn pad_batch(&self, seqs: Vec<Vec<u32>>, options: &BatchOptions) -> BatchEncoding {
        let longest = seqs.iter().map(Vec::len).max().unwrap_or(0);
        let mut target = match options.padding {
            Padding::Longest => Some(longest),
            Padding::MaxLength => Some(options.max_length.unwrap_or(longest)),
            Padding::DoNotPad => options.max_length,
        };
        if let (Some(t), Some(m)) = (target, options.pad_to_multiple_of)
            && m > 0
            && !t.is_multiple_of(m)
        {
            target = Some((t / m + 1) * m);
        }
        let pad_to = |len: usize| match (options.padding, target) {
            (Padding::DoNotPad, _) | (_, None) => 0,
            (_, Some(t)) => t.saturating_sub(len),
        };
        let pad = self.pad_id();
        let mut input_ids = Vec::with_capacity(seqs.len());
        if self.version() == ChatVersion::V1 {
            let build = target.is_some();
            let (mut masks, mut positions) = (Vec::new(), Vec::new());
            for ids in seqs {
                let d = pad_to(ids.len());
                if build {
                    let s = self.special_ids();
                    let (m, [p, b]) = glm_mask_and_positions(&ids, s.sop, s.mask, s.gmask);
                    let total = ids.len() + d;
                    let mut padded = vec![vec![true; total]; d];
                    padded.extend(m.into_iter().map(|row| {
                        let mut r = vec![true; d];
                        r.extend(row);
                        r
                    }));
                    masks.push(padded);
                    let pad_front = |v: Vec<u32>| [vec![0; d], v].concat();
                    positions.push([pad_front(p), pad_front(b)]);
                }
                input_ids.push([vec![pad; d], ids].concat());
            }
            return BatchEncoding {
                input_ids,
                attention_mask: build.then_some(AttentionMask::Glm(masks)),
                position_ids: build.then_some(PositionIds::Glm2d(positions)),
            };
        }
        let (mut masks, mut positions) = (Vec::new(), Vec::new());
        for ids in seqs {
            let d = pad_to(ids.len());
            masks.push([vec![0; d], vec![1; ids.len()]].concat());
            positions.push([vec![0; d], (0..ids.len() as u32).collect()].concat());
            input_ids.push([vec![pad; d], ids].concat());
        }
        BatchEncoding {
            input_ids,
            attention_mask: Some(AttentionMask::Padding(masks)),
            position_ids: Some(PositionIds::Linear(positions)),
        }
    }
}
