//! ChatGLM-6B's 2D position ids and attention-mask rules, computed on the host.
//!
//! For a prompt `context + [gMASK] + [<sop>] + answer...`:
//! - the context (everything before `<sop>`) attends bidirectionally, from `<sop>` on it is causal;
//! - position ids count 0.. over the context and stay at the gMASK index from `<sop>` on;
//! - block position ids are 0 over the context and 1, 2, 3... from `<sop>`.
//!
//! A decoding step continues the same rule (position = mask index, block = steps since `<sop>`
//! plus one). Batches are left-padded as the original tokenizer does: positions are those of the
//! unpadded sequence, and pad rows/columns are masked. A P-Tuning v2 prefix occupies the first
//! key slots and is visible to every token.
//!
//! When a sequence has no `<sop>` the whole of it is context, and with no mask token positions
//! simply count on (the tokenizer's fallbacks); the model code itself would reject such input.

use crate::modules::attention::MASK_VALUE;

/// The special ids the rules depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialIds {
    /// `<sop>`.
    pub bos: u32,
    /// `[MASK]`.
    pub mask: u32,
    /// `[gMASK]`.
    pub gmask: u32,
}

/// 2D position ids of a batch, row-major `[batch, seq]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PositionIds {
    /// Rows.
    pub batch: usize,
    /// Columns.
    pub seq: usize,
    /// First component (the position id).
    pub position: Vec<i64>,
    /// Second component (the block position id).
    pub block: Vec<i64>,
}

/// Where the parts of one (unpadded) sequence are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqLayout {
    /// Unpadded prompt length.
    pub len: usize,
    /// Index of `<sop>` (or `len` when absent): the bidirectional part.
    pub context_len: usize,
    /// Index of `[gMASK]` (preferred, as the model code does) or `[MASK]`.
    pub mask_pos: Option<usize>,
}

impl SeqLayout {
    /// Analyses an unpadded prompt.
    pub fn of(ids: &[u32], special: SpecialIds) -> Self {
        let find = |id: u32| ids.iter().position(|&t| t == id);
        SeqLayout {
            len: ids.len(),
            context_len: find(special.bos).unwrap_or(ids.len()),
            mask_pos: find(special.gmask).or_else(|| find(special.mask)),
        }
    }

    /// The 2D position of the token at unpadded index `t` (prompt or generated).
    pub fn position(&self, t: usize) -> (i64, i64) {
        if t < self.context_len {
            (t as i64, 0)
        } else {
            let pos = self.mask_pos.unwrap_or(t);
            (pos as i64, (t - self.context_len + 1) as i64)
        }
    }

    /// Whether the token at index `query` sees the token at index `key` (both unpadded).
    pub fn visible(&self, query: usize, key: usize) -> bool {
        key < self.context_len || key <= query
    }
}

/// A left-padded batch of prompts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchLayout {
    /// Per row.
    pub rows: Vec<SeqLayout>,
    /// Padded prompt width (the longest prompt).
    pub width: usize,
}

impl BatchLayout {
    /// Analyses prompts (unpadded).
    pub fn new(prompts: &[Vec<u32>], special: SpecialIds) -> Self {
        let rows: Vec<SeqLayout> = prompts.iter().map(|p| SeqLayout::of(p, special)).collect();
        let width = rows.iter().map(|r| r.len).max().unwrap_or(0);
        Self { rows, width }
    }

    /// Widens the padded prompt to `width` columns (more left padding on every row; a narrower
    /// `width` is ignored). The real tokens' results do not change: pads are masked out.
    pub fn pad_to(mut self, width: usize) -> Self {
        self.width = self.width.max(width);
        self
    }

    /// Left padding of row `i`.
    pub fn pad(&self, i: usize) -> usize {
        self.width - self.rows[i].len
    }

    /// Left-padded ids `[batch * width]`.
    pub fn padded_ids(&self, prompts: &[Vec<u32>], pad_id: u32) -> Vec<i64> {
        let mut out = Vec::with_capacity(prompts.len() * self.width);
        for (i, p) in prompts.iter().enumerate() {
            out.extend(std::iter::repeat_n(pad_id as i64, self.pad(i)));
            out.extend(p.iter().map(|&t| t as i64));
        }
        out
    }

    /// Positions of the padded prompt (pads get `(0, 0)`).
    pub fn prompt_positions(&self) -> PositionIds {
        let mut position = Vec::with_capacity(self.rows.len() * self.width);
        let mut block = Vec::with_capacity(self.rows.len() * self.width);
        for (i, row) in self.rows.iter().enumerate() {
            let pad = self.pad(i);
            for c in 0..self.width {
                let (p, b) = if c < pad {
                    (0, 0)
                } else {
                    row.position(c - pad)
                };
                position.push(p);
                block.push(b);
            }
        }
        PositionIds {
            batch: self.rows.len(),
            seq: self.width,
            position,
            block,
        }
    }

    /// Positions of decoding step `step` (0 = the first generated token, at column `width`).
    pub fn step_positions(&self, step: usize) -> PositionIds {
        let (position, block) = self
            .rows
            .iter()
            .map(|row| row.position(row.len + step))
            .unzip();
        PositionIds {
            batch: self.rows.len(),
            seq: 1,
            position,
            block,
        }
    }

    /// Additive mask of the prompt, `[batch, 1, width, keys]` flattened, for keys laid out as
    /// `prefix_len` prefix slots, then the `width` prompt columns, then unused slots up to `keys`.
    pub fn prompt_mask(&self, prefix_len: usize, keys: usize) -> Vec<f32> {
        let w = self.width;
        let mut out = vec![MASK_VALUE; self.rows.len() * w * keys];
        for (i, row) in self.rows.iter().enumerate() {
            let pad = self.pad(i);
            for r in 0..w {
                let line = &mut out[(i * w + r) * keys..(i * w + r + 1) * keys];
                line[..prefix_len].fill(0.0);
                if r < pad {
                    continue;
                }
                for c in pad..w {
                    if row.visible(r - pad, c - pad) {
                        line[prefix_len + c] = 0.0;
                    }
                }
            }
        }
        out
    }

    /// Additive mask of decoding step `step`, `[batch, 1, 1, keys]` flattened: the prefix, the
    /// unpadded prompt and the `step + 1` generated columns are visible.
    pub fn step_mask(&self, step: usize, prefix_len: usize, keys: usize) -> Vec<f32> {
        let mut out = vec![MASK_VALUE; self.rows.len() * keys];
        for i in 0..self.rows.len() {
            let line = &mut out[i * keys..(i + 1) * keys];
            line[..prefix_len].fill(0.0);
            line[prefix_len + self.pad(i)..prefix_len + self.width + step + 1].fill(0.0);
        }
        out
    }
}

/// The tiny fixtures' special ids, for unit tests.
#[cfg(test)]
pub(crate) const TEST_SPECIAL: SpecialIds = SpecialIds {
    bos: 294,
    mask: 290,
    gmask: 291,
};

#[cfg(test)]
mod tests {
    use super::*;

    const SP: SpecialIds = TEST_SPECIAL;

    #[test]
    fn prompt_positions_follow_the_2d_rule() {
        let layout = BatchLayout::new(&[vec![5, 6, 7, 291, 294]], SP);
        let p = layout.prompt_positions();
        assert_eq!(p.position, vec![0, 1, 2, 3, 3]);
        assert_eq!(p.block, vec![0, 0, 0, 0, 1]);
        let s = layout.step_positions(0);
        assert_eq!((s.position[0], s.block[0]), (3, 2));
        let s = layout.step_positions(4);
        assert_eq!((s.position[0], s.block[0]), (3, 6));
    }

    #[test]
    fn chatglm_cpp_mask_rows() {
        // chatglm.cpp's fixture: ids [0, 1, 2] with <sop> = 2: mask rows [[0,0,1],[0,0,1],[0,0,0]].
        let sp = SpecialIds {
            bos: 2,
            mask: 9,
            gmask: 1,
        };
        let layout = BatchLayout::new(&[vec![0, 1, 2]], sp);
        let m = layout.prompt_mask(0, 3);
        let hidden: Vec<u8> = m.iter().map(|&v| u8::from(v != 0.0)).collect();
        assert_eq!(hidden, vec![0, 0, 1, 0, 0, 1, 0, 0, 0]);
        let p = layout.prompt_positions();
        assert_eq!(p.position, vec![0, 1, 1]);
        assert_eq!(p.block, vec![0, 0, 1]);
    }

    #[test]
    fn left_padding_keeps_unpadded_positions_and_masks_pads() {
        let layout = BatchLayout::new(&[vec![5, 291, 294], vec![5, 6, 7, 291, 294]], SP);
        assert_eq!(layout.width, 5);
        let p = layout.prompt_positions();
        assert_eq!(&p.position[..5], &[0, 0, 0, 1, 1]);
        assert_eq!(&p.block[..5], &[0, 0, 0, 0, 1]);
        let m = layout.prompt_mask(2, 9);
        // Row 0, query column 2 (its first real token): prefix visible, pads hidden, its context visible.
        let line = &m[2 * 9..3 * 9];
        assert_eq!(&line[..2], &[0.0, 0.0]);
        assert_eq!(&line[2..4], &[MASK_VALUE, MASK_VALUE]);
        assert_eq!(&line[4..6], &[0.0, 0.0]);
        assert_eq!(
            line[6], MASK_VALUE,
            "<sop> is causal: not visible from the context"
        );
        let step = layout.step_mask(1, 2, 9);
        assert_eq!(
            &step[..9],
            &[0.0, 0.0, MASK_VALUE, MASK_VALUE, 0.0, 0.0, 0.0, 0.0, 0.0]
        );
        assert_eq!(&step[9..18], &[0.0; 9]);
    }
}
