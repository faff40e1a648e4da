//! SentencePiece unigram segmentation: Viterbi search for the best-scoring piece sequence.

use super::SentencePiece;
use super::normalizer::one_char_len;
use crate::spm::proto::PieceType;

/// Penalty subtracted from the lowest piece score to score an unknown character.
const UNK_PENALTY: f32 = 10.0;

#[derive(Debug, Clone, Copy)]
struct BestPath {
    id: u32,
    score: f32,
    starts_at: usize,
}

const UNSET: usize = usize::MAX;

/// Segments `text` (already normalised) into `(start, end, id)` pieces; unknown characters get
/// the model's unknown id.
pub(crate) fn encode(model: &SentencePiece, text: &str, out: &mut Vec<(usize, usize, u32)>) {
    let bytes = text.as_bytes();
    let size = bytes.len();
    if size == 0 {
        return;
    }
    let unk_score = model.min_score - UNK_PENALTY;
    let mut best = vec![
        BestPath {
            id: 0,
            score: 0.0,
            starts_at: UNSET
        };
        size + 1
    ];
    let mut starts_at = 0;
    while starts_at < size {
        let till_here = best[starts_at].score;
        let mblen = one_char_len(bytes[starts_at]).min(size - starts_at);
        let mut has_single_node = false;
        model
            .piece_trie
            .for_each_prefix(&bytes[starts_at..], |length, id| {
                let kind = model.kind(id);
                if kind == PieceType::Unused {
                    return;
                }
                let target = &mut best[starts_at + length];
                // User-defined symbols get a bonus so they are always chosen. Path scores are
                // single precision: the released library (0.2.x wheels) compares float sums, which
                // decides ties such as `.` + `...` against `...` + `.`.
                let score: f32 = if kind == PieceType::UserDefined {
                    (f64::from(length as f32 * model.max_score) - 0.1) as f32
                } else {
                    model.score(id)
                };
                let candidate = score + till_here;
                if target.starts_at == UNSET || candidate > target.score {
                    *target = BestPath {
                        id,
                        score: candidate,
                        starts_at,
                    };
                }
                if length == mblen {
                    has_single_node = true;
                }
            });
        if !has_single_node {
            let target = &mut best[starts_at + mblen];
            let candidate = unk_score + till_here;
            if target.starts_at == UNSET || candidate > target.score {
                *target = BestPath {
                    id: model.unk_id,
                    score: candidate,
                    starts_at,
                };
            }
        }
        starts_at += mblen;
    }
    let first = out.len();
    let mut ends_at = size;
    while ends_at > 0 {
        let node = best[ends_at];
        out.push((node.starts_at, ends_at, node.id));
        ends_at = node.starts_at;
    }
    out[first..].reverse();
}
