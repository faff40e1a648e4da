//! A small reader for the SentencePiece `ModelProto` protobuf (only the fields the encoder needs).
//!
//! The wire format is decoded by hand so that a corrupt file gives a precise error (truncated
//! field, invalid wire type) instead of a panic, and so the crate needs no code generator.

/// Errors met while decoding the protobuf bytes of a model file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    /// The bytes end in the middle of a field.
    #[error("truncated protobuf: field {field} at byte {offset} runs past the end of the data")]
    Truncated {
        /// Field number being read (0 when the key itself was cut).
        field: u32,
        /// Byte offset where the field starts.
        offset: usize,
    },
    /// A field key that no protobuf encoder writes (field 0 or wire type 3, 4, 6, 7).
    #[error(
        "not a protobuf message: invalid key (field {field}, wire type {wire_type}) at byte {offset}"
    )]
    InvalidKey {
        /// Field number of the key.
        field: u64,
        /// Wire type of the key.
        wire_type: u64,
        /// Byte offset of the key.
        offset: usize,
    },
    /// A varint longer than 10 bytes.
    #[error("not a protobuf message: malformed varint at byte {offset}")]
    BadVarint {
        /// Byte offset of the varint.
        offset: usize,
    },
    /// A string field that is not valid UTF-8.
    #[error("string field {field} at byte {offset} is not valid UTF-8")]
    BadString {
        /// Field number.
        field: u32,
        /// Byte offset of the field.
        offset: usize,
    },
}

/// One decoded field value.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Value<'a> {
    Varint(u64),
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// Iterates over the `(field number, value, offset)` triples of one message.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    /// Offset of `data` inside the whole file, for error messages.
    base: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(data: &'a [u8], base: usize) -> Self {
        Self { data, pos: 0, base }
    }

    fn varint(&mut self, field: u32) -> Result<u64, ProtoError> {
        let start = self.pos;
        let mut result = 0u64;
        for shift in 0..10 {
            let Some(&byte) = self.data.get(self.pos) else {
                return Err(ProtoError::Truncated {
                    field,
                    offset: self.base + start,
                });
            };
            self.pos += 1;
            result |= u64::from(byte & 0x7f) << (7 * shift);
            if byte & 0x80 == 0 {
                return Ok(result);
            }
        }
        Err(ProtoError::BadVarint {
            offset: self.base + start,
        })
    }

    fn take(&mut self, n: usize, field: u32, start: usize) -> Result<&'a [u8], ProtoError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let Some(end) = end else {
            return Err(ProtoError::Truncated {
                field,
                offset: self.base + start,
            });
        };
        let out = &self.data[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    /// Reads the next field, or `None` at the end of the message.
    pub(crate) fn next_field(&mut self) -> Result<Option<(u32, Value<'a>, usize)>, ProtoError> {
        if self.pos >= self.data.len() {
            return Ok(None);
        }
        let start = self.pos;
        let key = self.varint(0)?;
        let field = key >> 3;
        let wire_type = key & 7;
        if field == 0 || field > u64::from(u32::MAX >> 3) || !matches!(wire_type, 0 | 1 | 2 | 5) {
            return Err(ProtoError::InvalidKey {
                field,
                wire_type,
                offset: self.base + start,
            });
        }
        let field = field as u32;
        let value = match wire_type {
            0 => Value::Varint(self.varint(field)?),
            1 => {
                self.take(8, field, start)?;
                Value::Fixed64
            }
            2 => {
                let len = self.varint(field)?;
                let len = usize::try_from(len).unwrap_or(usize::MAX);
                Value::Bytes(self.take(len, field, start)?)
            }
            _ => {
                let b = self.take(4, field, start)?;
                let mut a = [0u8; 4];
                a.copy_from_slice(b);
                Value::Fixed32(u32::from_le_bytes(a))
            }
        };
        Ok(Some((field, value, self.base + start)))
    }

    /// Offset of the current position inside the file.
    pub(crate) fn offset_of(&self, sub: &[u8]) -> usize {
        self.base + (sub.as_ptr() as usize).saturating_sub(self.data.as_ptr() as usize)
    }
}

/// Type of a piece, as stored in the model (`ModelProto.SentencePiece.Type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PieceType {
    /// An ordinary piece.
    Normal,
    /// The unknown piece (`<unk>`).
    Unknown,
    /// A control symbol (`<s>`, `</s>`, `[gMASK]` in ChatGLM-6B): never produced from text.
    Control,
    /// A user-defined symbol: always matched whole in the text.
    UserDefined,
    /// A piece kept in the vocabulary but never produced by the encoder.
    Unused,
    /// A byte piece `<0xNN>` used by byte fallback.
    Byte,
}

impl PieceType {
    fn from_code(code: u64) -> Option<Self> {
        Some(match code {
            1 => Self::Normal,
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => return None,
        })
    }
}

/// One vocabulary entry.
#[derive(Debug, Clone, PartialEq)]
pub struct PieceProto {
    /// The piece text (`▁` stands for a space).
    pub piece: String,
    /// The piece score (log probability for unigram, merge priority for BPE).
    pub score: f32,
    /// The piece type.
    pub kind: PieceType,
}

/// `NormalizerSpec`: how text is normalised before segmentation.
#[derive(Debug, Clone, PartialEq)]
pub struct NormalizerSpecProto {
    /// Rule name (`nmt_nfkc`, `identity`, ...), informative only.
    pub name: String,
    /// The compiled normalisation rules (a double-array trie plus replacement strings).
    pub precompiled_charsmap: Vec<u8>,
    /// Prepend `▁` to the text.
    pub add_dummy_prefix: bool,
    /// Drop leading/trailing spaces and collapse runs of spaces.
    pub remove_extra_whitespaces: bool,
    /// Replace spaces with `▁`.
    pub escape_whitespaces: bool,
}

impl Default for NormalizerSpecProto {
    fn default() -> Self {
        Self {
            name: String::new(),
            precompiled_charsmap: Vec::new(),
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
            escape_whitespaces: true,
        }
    }
}

/// Segmentation algorithm of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelType {
    /// Unigram language model (Viterbi).
    Unigram,
    /// Byte-pair encoding (merge by score).
    Bpe,
    /// Whitespace-delimited words.
    Word,
    /// One piece per character.
    Char,
}

/// The `TrainerSpec` fields that change encoding or decoding.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainerSpecProto {
    /// Raw `model_type` code (1 unigram, 2 BPE, 3 word, 4 char).
    pub model_type_code: u64,
    /// Unknown characters are written as UTF-8 byte pieces.
    pub byte_fallback: bool,
    /// `▁` goes at the end of words instead of the start.
    pub treat_whitespace_as_suffix: bool,
    /// Text shown for `<unk>` when decoding.
    pub unk_surface: String,
}

impl Default for TrainerSpecProto {
    fn default() -> Self {
        Self {
            model_type_code: 1,
            byte_fallback: false,
            treat_whitespace_as_suffix: false,
            unk_surface: " \u{2047} ".to_owned(),
        }
    }
}

/// The decoded model file.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ModelProto {
    /// The vocabulary, in id order.
    pub pieces: Vec<PieceProto>,
    /// Trainer settings that matter at inference.
    pub trainer: TrainerSpecProto,
    /// Normaliser settings.
    pub normalizer: NormalizerSpecProto,
    /// Optional denormaliser applied to decoded text.
    pub denormalizer: Option<NormalizerSpecProto>,
}

fn string(bytes: &[u8], field: u32, offset: usize) -> Result<String, ProtoError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| ProtoError::BadString { field, offset })
}

fn parse_piece(data: &[u8], base: usize) -> Result<PieceProto, ProtoError> {
    let mut r = Reader::new(data, base);
    let mut piece = PieceProto {
        piece: String::new(),
        score: 0.0,
        kind: PieceType::Normal,
    };
    while let Some((field, value, offset)) = r.next_field()? {
        match (field, value) {
            (1, Value::Bytes(b)) => piece.piece = string(b, field, offset)?,
            (2, Value::Fixed32(bits)) => piece.score = f32::from_bits(bits),
            (3, Value::Varint(code)) => {
                // Unknown enum values are kept as normal pieces, like protobuf does for proto2.
                piece.kind = PieceType::from_code(code).unwrap_or(PieceType::Normal);
            }
            _ => {}
        }
    }
    Ok(piece)
}

fn parse_trainer(data: &[u8], base: usize) -> Result<TrainerSpecProto, ProtoError> {
    let mut r = Reader::new(data, base);
    let mut spec = TrainerSpecProto::default();
    while let Some((field, value, offset)) = r.next_field()? {
        match (field, value) {
            (3, Value::Varint(v)) => spec.model_type_code = v,
            (35, Value::Varint(v)) => spec.byte_fallback = v != 0,
            (24, Value::Varint(v)) => spec.treat_whitespace_as_suffix = v != 0,
            (44, Value::Bytes(b)) => spec.unk_surface = string(b, field, offset)?,
            _ => {}
        }
    }
    Ok(spec)
}

fn parse_normalizer(data: &[u8], base: usize) -> Result<NormalizerSpecProto, ProtoError> {
    let mut r = Reader::new(data, base);
    let mut spec = NormalizerSpecProto::default();
    while let Some((field, value, offset)) = r.next_field()? {
        match (field, value) {
            (1, Value::Bytes(b)) => spec.name = string(b, field, offset)?,
            (2, Value::Bytes(b)) => spec.precompiled_charsmap = b.to_vec(),
            (3, Value::Varint(v)) => spec.add_dummy_prefix = v != 0,
            (4, Value::Varint(v)) => spec.remove_extra_whitespaces = v != 0,
            (5, Value::Varint(v)) => spec.escape_whitespaces = v != 0,
            _ => {}
        }
    }
    Ok(spec)
}

impl ModelProto {
    /// Decodes a `ModelProto` from the bytes of a `.model` file.
    ///
    /// # Errors
    /// [`ProtoError`] when the bytes are not a well-formed protobuf message.
    pub fn parse(data: &[u8]) -> Result<Self, ProtoError> {
        let mut r = Reader::new(data, 0);
        let mut model = ModelProto::default();
        while let Some((field, value, _)) = r.next_field()? {
            if let Value::Bytes(b) = value {
                let base = r.offset_of(b);
                match field {
                    1 => model.pieces.push(parse_piece(b, base)?),
                    2 => model.trainer = parse_trainer(b, base)?,
                    3 => model.normalizer = parse_normalizer(b, base)?,
                    5 => model.denormalizer = Some(parse_normalizer(b, base)?),
                    _ => {}
                }
            }
        }
        Ok(model)
    }

    /// The model type, or `None` for a code this crate does not know.
    pub fn model_type(&self) -> Option<ModelType> {
        Some(match self.trainer.model_type_code {
            1 => ModelType::Unigram,
            2 => ModelType::Bpe,
            3 => ModelType::Word,
            4 => ModelType::Char,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_and_invalid_bytes_are_errors() {
        // Field 1 (length-delimited) claiming 10 bytes with only 2 present.
        assert!(matches!(
            ModelProto::parse(&[0x0a, 10, 1, 2]),
            Err(ProtoError::Truncated { .. })
        ));
        // Wire type 7 does not exist.
        assert!(matches!(
            ModelProto::parse(&[0x0f]),
            Err(ProtoError::InvalidKey { .. })
        ));
        // An unterminated varint.
        assert!(matches!(
            ModelProto::parse(&[0x08, 0x80]),
            Err(ProtoError::Truncated { .. })
        ));
    }

    #[test]
    fn reads_a_piece() {
        // pieces { piece: "ab" score: 1.5 type: USER_DEFINED }
        let mut piece = vec![0x0a, 2, b'a', b'b', 0x15];
        piece.extend_from_slice(&1.5f32.to_le_bytes());
        piece.extend_from_slice(&[0x18, 4]);
        let mut data = vec![0x0a, piece.len() as u8];
        data.extend_from_slice(&piece);
        let model = ModelProto::parse(&data).unwrap();
        assert_eq!(
            model.pieces,
            vec![PieceProto {
                piece: "ab".into(),
                score: 1.5,
                kind: PieceType::UserDefined
            }]
        );
        assert_eq!(model.model_type(), Some(ModelType::Unigram));
    }
}
