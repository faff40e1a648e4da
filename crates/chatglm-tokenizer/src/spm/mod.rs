//! A SentencePiece processor in pure Rust: reads a `.model` protobuf as shipped and encodes and
//! decodes exactly as the C++ library (`sentencepiece` 0.2) does, for BPE, unigram, word and char
//! models, with byte fallback, user-defined and control pieces and the model's normaliser.

mod bpe;
mod decode;
mod error;
pub mod normalizer;
pub mod proto;
mod trie;
mod unigram;

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::Path;

pub use error::{InvalidId, InvalidModel, ModelError};
pub use normalizer::{NormalizerError, SPACE_SYMBOL};
pub use proto::{ModelProto, ModelType, PieceType, ProtoError};

use normalizer::{Normalizer, one_char_len};
use trie::Trie;

/// A small, fast multiplicative hasher (FxHash) for piece lookups.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FxHasher(u64);

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let v = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.0 = (self.0.rotate_left(5) ^ u64::from(i)).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

pub(crate) type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// A loaded SentencePiece model.
#[derive(Debug, Clone)]
pub struct SentencePiece {
    proto_pieces: Vec<proto::PieceProto>,
    /// Normal, user-defined and unused pieces.
    pub(crate) pieces: FxMap<String, u32>,
    /// Control, unknown and byte pieces.
    reserved: FxMap<String, u32>,
    pub(crate) unk_id: u32,
    byte_fallback: bool,
    /// Id of each byte piece `<0xNN>` (valid when `byte_fallback`).
    byte_ids: [u32; 256],
    /// Byte value of each id, or -1.
    byte_of: Vec<i16>,
    model_type: ModelType,
    normalizer: Normalizer,
    denormalizer: Option<Normalizer>,
    user_defined: Trie,
    pub(crate) piece_trie: Trie,
    pub(crate) min_score: f32,
    pub(crate) max_score: f32,
    unk_surface: String,
    decode_strips_bos_ws: bool,
    decode_remove_extra_ws: bool,
    /// BPE: no piece has `▁` after another character, so merges never cross into a word.
    pub(crate) bpe_splits_at_space: bool,
    /// First bytes of the reserved pieces (skips their map for most lookups).
    reserved_first: [bool; 256],
}

/// The byte named by a piece `<0xNN>` (upper-case hex, as SentencePiece writes it).
fn piece_to_byte(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2
        || !hex
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(&c))
    {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

impl SentencePiece {
    /// Loads a model file.
    ///
    /// # Errors
    /// [`ModelError`] naming the file: missing, unreadable, a Git LFS pointer, or not a valid
    /// SentencePiece model (truncated, not a protobuf, unknown model type, ...).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                ModelError::Missing {
                    path: path.to_owned(),
                }
            } else {
                ModelError::Io {
                    path: path.to_owned(),
                    source,
                }
            }
        })?;
        if bytes.starts_with(b"version https://git-lfs") {
            return Err(ModelError::LfsPointer {
                path: path.to_owned(),
            });
        }
        Self::from_bytes(&bytes).map_err(|source| ModelError::Invalid {
            path: path.to_owned(),
            source,
        })
    }

    /// Loads a model from the bytes of a `.model` file.
    ///
    /// # Errors
    /// [`InvalidModel`] when the bytes are not a valid SentencePiece model.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, InvalidModel> {
        Self::from_proto(ModelProto::parse(bytes)?)
    }

    /// Builds the processor from a decoded protobuf, checking it as SentencePiece does.
    ///
    /// # Errors
    /// [`InvalidModel`] when the vocabulary or settings are inconsistent.
    pub fn from_proto(proto: ModelProto) -> Result<Self, InvalidModel> {
        if proto.pieces.is_empty() {
            return Err(InvalidModel::NoPieces);
        }
        let model_type = proto.model_type().ok_or(InvalidModel::UnknownModelType {
            code: proto.trainer.model_type_code,
        })?;
        let byte_fallback = proto.trainer.byte_fallback;
        let mut pieces = FxMap::default();
        let mut reserved = FxMap::default();
        let mut unk = Vec::new();
        let mut byte_ids = [u32::MAX; 256];
        let mut byte_of = vec![-1i16; proto.pieces.len()];
        let mut user_defined = Vec::new();
        let (mut min_score, mut max_score) = (f32::MAX, f32::MIN_POSITIVE);
        for (id, p) in proto.pieces.iter().enumerate() {
            if p.piece.is_empty() {
                return Err(InvalidModel::EmptyPiece { id });
            }
            let normal = matches!(
                p.kind,
                PieceType::Normal | PieceType::UserDefined | PieceType::Unused
            );
            let map = if normal { &mut pieces } else { &mut reserved };
            if map.insert(p.piece.clone(), id as u32).is_some() {
                return Err(InvalidModel::Duplicate {
                    piece: p.piece.clone(),
                    id,
                });
            }
            match p.kind {
                PieceType::UserDefined => user_defined.push((p.piece.as_bytes(), id as u32)),
                PieceType::Unknown => unk.push(id as u32),
                PieceType::Byte => {
                    if !byte_fallback {
                        let detail = "found although byte_fallback is false";
                        return Err(InvalidModel::BytePiece {
                            piece: p.piece.clone(),
                            detail,
                        });
                    }
                    let Some(b) = piece_to_byte(&p.piece) else {
                        return Err(InvalidModel::BytePiece {
                            piece: p.piece.clone(),
                            detail: "not <0xNN>",
                        });
                    };
                    byte_ids[usize::from(b)] = id as u32;
                    byte_of[id] = i16::from(b);
                }
                PieceType::Normal => {
                    min_score = min_score.min(p.score);
                    max_score = max_score.max(p.score);
                }
                PieceType::Control | PieceType::Unused => {}
            }
        }
        if unk.len() != 1 {
            return Err(InvalidModel::Unknown { count: unk.len() });
        }
        if byte_fallback {
            let found = byte_ids.iter().filter(|&&id| id != u32::MAX).count();
            if found != 256 {
                return Err(InvalidModel::MissingBytes { found });
            }
        }
        let treat_suffix = proto.trainer.treat_whitespace_as_suffix;
        let normalizer = Normalizer::new(&proto.normalizer, treat_suffix)?;
        let denormalizer = match &proto.denormalizer {
            Some(spec) if !spec.precompiled_charsmap.is_empty() => {
                Some(Normalizer::new(spec, false)?)
            }
            _ => None,
        };
        let piece_trie = if model_type == ModelType::Unigram {
            Trie::new(pieces.iter().map(|(k, &v)| (k.as_bytes(), v)))
        } else {
            Trie::default()
        };
        let user_defined = Trie::new(user_defined);
        let bpe_splits_at_space = !treat_suffix
            && !pieces.keys().any(|p| {
                p.char_indices().any(|(i, c)| {
                    i > 0
                        && p[i..].starts_with(SPACE_SYMBOL)
                        && !p[..i].ends_with(SPACE_SYMBOL)
                        && c == '\u{2581}'
                })
            });
        let mut reserved_first = [false; 256];
        for p in reserved.keys() {
            reserved_first[usize::from(p.as_bytes()[0])] = true;
        }
        Ok(Self {
            reserved_first,
            bpe_splits_at_space,
            unk_id: unk[0],
            byte_fallback,
            byte_ids,
            byte_of,
            model_type,
            normalizer,
            denormalizer,
            user_defined,
            piece_trie,
            min_score,
            max_score,
            unk_surface: proto.trainer.unk_surface.clone(),
            decode_strips_bos_ws: proto.normalizer.add_dummy_prefix
                || proto.normalizer.remove_extra_whitespaces,
            decode_remove_extra_ws: proto.normalizer.remove_extra_whitespaces,
            pieces,
            reserved,
            proto_pieces: proto.pieces,
        })
    }

    /// Number of pieces in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.proto_pieces.len()
    }

    /// The segmentation algorithm of the model.
    pub fn model_type(&self) -> ModelType {
        self.model_type
    }

    /// Id of the unknown piece.
    pub fn unk_id(&self) -> u32 {
        self.unk_id
    }

    /// The text of piece `id`.
    pub fn id_to_piece(&self, id: u32) -> Option<&str> {
        self.proto_pieces.get(id as usize).map(|p| p.piece.as_str())
    }

    /// The id of `piece`, or the unknown id when it is not in the vocabulary (like
    /// `SentencePieceProcessor::PieceToId`).
    pub fn piece_to_id(&self, piece: &str) -> u32 {
        self.get_id(piece).unwrap_or(self.unk_id)
    }

    /// The id of `piece` if it is in the vocabulary.
    pub fn get_id(&self, piece: &str) -> Option<u32> {
        let reserved = match piece.as_bytes().first() {
            Some(&b) if self.reserved_first[usize::from(b)] => self.reserved.get(piece),
            _ => None,
        };
        reserved.or_else(|| self.pieces.get(piece)).copied()
    }

    /// The type of piece `id`.
    pub fn piece_type(&self, id: u32) -> Option<PieceType> {
        self.proto_pieces.get(id as usize).map(|p| p.kind)
    }

    /// The score of piece `id` (0 for out-of-range ids).
    pub fn piece_score(&self, id: u32) -> f32 {
        self.proto_pieces.get(id as usize).map_or(0.0, |p| p.score)
    }

    #[inline]
    pub(crate) fn score(&self, id: u32) -> f32 {
        self.proto_pieces[id as usize].score
    }

    #[inline]
    pub(crate) fn kind(&self, id: u32) -> PieceType {
        self.proto_pieces[id as usize].kind
    }

    /// Longest user-defined symbol at the start of `bytes` (`(len, true)`), else one character.
    #[inline]
    pub(crate) fn prefix_match(&self, bytes: &[u8]) -> (usize, bool) {
        match self.user_defined.longest_prefix(bytes) {
            Some((len, _)) => (len, true),
            None => (one_char_len(bytes[0]).min(bytes.len()), false),
        }
    }

    /// Normalises text as the model does before segmentation (`▁` for spaces, dummy prefix).
    pub fn normalize(&self, text: &str) -> String {
        self.normalizer.normalize(text, &self.user_defined)
    }

    /// Segments normalised text, calling `emit(piece, id)` for each output piece, with byte
    /// fallback and merging of unknown runs as `SentencePieceProcessor::Encode` does.
    fn encode_normalized(&self, normalized: &str, mut emit: impl FnMut(&str, u32)) {
        let mut segments: Vec<(usize, usize, u32)> = Vec::new();
        match self.model_type {
            ModelType::Unigram => unigram::encode(self, normalized, &mut segments),
            ModelType::Bpe => bpe::encode(self, normalized, &mut segments),
            ModelType::Char => {
                let bytes = normalized.as_bytes();
                let mut pos = 0;
                while pos < bytes.len() {
                    let (len, _) = self.prefix_match(&bytes[pos..]);
                    segments.push((
                        pos,
                        pos + len,
                        self.piece_to_id(&normalized[pos..pos + len]),
                    ));
                    pos += len;
                }
            }
            ModelType::Word => {
                for (s, e) in split_into_words(normalized) {
                    segments.push((s, e, self.piece_to_id(&normalized[s..e])));
                }
            }
        }
        let mut pending_unk: Option<String> = None;
        for (s, e, id) in segments {
            let piece = &normalized[s..e];
            let is_unk = id == self.unk_id;
            if is_unk && self.byte_fallback {
                if let Some(p) = pending_unk.take() {
                    emit(&p, self.unk_id);
                }
                for &b in piece.as_bytes() {
                    let byte_id = self.byte_ids[usize::from(b)];
                    emit(self.id_to_piece(byte_id).unwrap_or_default(), byte_id);
                }
            } else if is_unk {
                pending_unk.get_or_insert_with(String::new).push_str(piece);
            } else {
                if let Some(p) = pending_unk.take() {
                    emit(&p, self.unk_id);
                }
                emit(piece, id);
            }
        }
        if let Some(p) = pending_unk.take() {
            emit(&p, self.unk_id);
        }
    }

    /// Encodes text into ids (`SentencePieceProcessor.encode(text)`).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        self.encode_into(text, &mut ids);
        ids
    }

    /// Encodes text, appending the ids to `ids`.
    pub fn encode_into(&self, text: &str, ids: &mut Vec<u32>) {
        let normalized = self.normalize(text);
        self.encode_normalized(&normalized, |_, id| ids.push(id));
    }

    /// Encodes text into piece strings (`encode(text, out_type=str)`).
    pub fn encode_as_pieces(&self, text: &str) -> Vec<String> {
        let normalized = self.normalize(text);
        let mut pieces = Vec::new();
        self.encode_normalized(&normalized, |p, _| pieces.push(p.to_owned()));
        pieces
    }

    /// Encodes text, calling `f(piece, id)` for each output piece (no allocation per piece).
    pub fn encode_each(&self, text: &str, f: impl FnMut(&str, u32)) {
        let normalized = self.normalize(text);
        self.encode_normalized(&normalized, f);
    }

    /// Encodes text into `(piece, id)` pairs.
    pub fn encode_with_pieces(&self, text: &str) -> Vec<(String, u32)> {
        let normalized = self.normalize(text);
        let mut out = Vec::new();
        self.encode_normalized(&normalized, |p, id| out.push((p.to_owned(), id)));
        out
    }
}

/// SentencePiece's `SplitIntoWords` (whitespace symbol starts a word), as byte ranges.
fn split_into_words(text: &str) -> Vec<(usize, usize)> {
    let mut words: Vec<(usize, usize)> = Vec::new();
    let bytes = text.as_bytes();
    let mut pos = 0;
    while pos < bytes.len() {
        let len = one_char_len(bytes[pos]).min(bytes.len() - pos);
        let is_ws = &bytes[pos..pos + len] == SPACE_SYMBOL.as_bytes();
        if pos == 0 || is_ws {
            words.push((pos, pos));
        }
        if let Some(last) = words.last_mut() {
            last.1 = pos + len;
        }
        pos += len;
    }
    words
}
