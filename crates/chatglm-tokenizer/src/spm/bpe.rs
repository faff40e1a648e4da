//! SentencePiece BPE segmentation: merge adjacent symbols by piece score, highest first.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::{FxMap, SentencePiece};
use crate::spm::proto::PieceType;

/// A candidate merge of the symbols `left` and `right` into a piece of `size` bytes.
#[derive(Debug, Clone, Copy)]
struct Pair {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
    id: u32,
}

impl PartialEq for Pair {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Pair {}
impl PartialOrd for Pair {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pair {
    /// Higher score first; on equal scores the leftmost pair first (SentencePiece's order).
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

#[derive(Debug, Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: usize,
    next: usize,
    freeze: bool,
    /// Vocabulary id of the symbol, `u32::MAX` when it is not a piece.
    id: u32,
}

const NIL: usize = usize::MAX;

/// Merged UNUSED piece -> the byte ranges `(start, len)` of its two halves.
type RevMerge = FxMap<String, ((usize, usize), (usize, usize))>;

/// Segments `text` (already normalised) into `(start, end, id)` pieces; pieces that are not in
/// the vocabulary get the unknown id.
pub(crate) fn encode(model: &SentencePiece, text: &str, out: &mut Vec<(usize, usize, u32)>) {
    let bytes = text.as_bytes();
    if bytes.is_empty() {
        return;
    }
    // Symbols, linked within segments. Merges never cross a segment boundary: one sits around
    // every frozen (user-defined) symbol and, when no piece has `▁` after another character,
    // before each `▁` that follows a non-`▁` character. Merging segment by segment gives the
    // same pieces as merging the whole text and keeps the agenda small.
    let space = super::SPACE_SYMBOL.as_bytes();
    let mut symbols: Vec<Symbol> = Vec::with_capacity(bytes.len());
    let mut segments: Vec<usize> = vec![0];
    let mut pos = 0;
    while pos < bytes.len() {
        let (len, freeze) = model.prefix_match(&bytes[pos..]);
        let index = symbols.len();
        let id = model.get_id(&text[pos..pos + len]).unwrap_or(u32::MAX);
        let boundary = index > 0
            && (freeze
                || symbols[index - 1].freeze
                || (model.bpe_splits_at_space
                    && bytes[pos..].starts_with(space)
                    && !bytes[..pos].ends_with(space)));
        if boundary {
            segments.push(index);
        } else if index > 0 {
            symbols[index - 1].next = index;
        }
        symbols.push(Symbol {
            start: pos,
            len,
            prev: if index == 0 || boundary {
                NIL
            } else {
                index - 1
            },
            next: NIL,
            freeze,
            id,
        });
        pos += len;
    }
    segments.push(symbols.len());
    let mut agenda: BinaryHeap<Pair> = BinaryHeap::with_capacity(symbols.len());
    // Merged piece -> its two halves, for pieces of type UNUSED (resegmentation).
    let mut rev_merge: RevMerge = FxMap::default();

    let add_pair = |symbols: &[Symbol],
                    agenda: &mut BinaryHeap<Pair>,
                    rev_merge: &mut RevMerge,
                    left: usize,
                    right: usize| {
        if left == NIL || right == NIL || symbols[left].freeze || symbols[right].freeze {
            return;
        }
        let (l, r) = (symbols[left], symbols[right]);
        let piece = &text[l.start..l.start + l.len + r.len];
        let Some(&id) = model.pieces.get(piece) else {
            return;
        };
        agenda.push(Pair {
            score: model.score(id),
            left,
            right,
            size: piece.len(),
            id,
        });
        if model.kind(id) == PieceType::Unused {
            rev_merge.insert(piece.to_owned(), ((l.start, l.len), (r.start, r.len)));
        }
    };

    for seg in segments.windows(2) {
        let (lo, hi) = (seg[0], seg[1]);
        for i in lo + 1..hi {
            add_pair(&symbols, &mut agenda, &mut rev_merge, i - 1, i);
        }
        while let Some(top) = agenda.pop() {
            let (l, r) = (symbols[top.left], symbols[top.right]);
            if l.len == 0 || r.len == 0 || l.len + r.len != top.size {
                continue;
            }
            symbols[top.left].len += r.len;
            symbols[top.left].id = top.id;
            symbols[top.left].next = r.next;
            if r.next != NIL {
                symbols[r.next].prev = top.left;
            }
            symbols[top.right].len = 0;
            let prev = symbols[top.left].prev;
            let next = symbols[top.left].next;
            add_pair(&symbols, &mut agenda, &mut rev_merge, prev, top.left);
            add_pair(&symbols, &mut agenda, &mut rev_merge, top.left, next);
        }
    }

    fn resegment(
        model: &SentencePiece,
        text: &str,
        rev_merge: &RevMerge,
        start: usize,
        len: usize,
        id: u32,
        out: &mut Vec<(usize, usize, u32)>,
    ) {
        if id == u32::MAX || model.kind(id) != PieceType::Unused {
            let id = if id == u32::MAX { model.unk_id } else { id };
            out.push((start, start + len, id));
            return;
        }
        match rev_merge.get(&text[start..start + len]) {
            Some(&((ls, ll), (rs, rl))) => {
                let left = model.get_id(&text[ls..ls + ll]).unwrap_or(u32::MAX);
                let right = model.get_id(&text[rs..rs + rl]).unwrap_or(u32::MAX);
                resegment(model, text, rev_merge, ls, ll, left, out);
                resegment(model, text, rev_merge, rs, rl, right, out);
            }
            None => out.push((start, start + len, id)),
        }
    }

    for seg in segments.windows(2) {
        let mut index = seg[0];
        while index != NIL && index < seg[1] {
            let s = symbols[index];
            resegment(model, text, &rev_merge, s.start, s.len, s.id, out);
            index = s.next;
        }
    }
}
