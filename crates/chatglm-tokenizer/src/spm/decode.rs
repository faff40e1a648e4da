//! SentencePiece decoding: pieces back to text, byte pieces reassembled into UTF-8.

use super::{InvalidId, SPACE_SYMBOL, SentencePiece};
use crate::spm::proto::PieceType;

/// Decodes one UTF-8 character the way SentencePiece's `DecodeUTF8` does: `(char, length)`,
/// `None` with length 1 for a malformed or incomplete sequence.
pub(crate) fn decode_utf8(bytes: &[u8]) -> (Option<char>, usize) {
    let b0 = bytes[0];
    let trail = |i: usize| bytes.get(i).is_some_and(|&b| b & 0xc0 == 0x80);
    let cp = |v: u32, len: usize, min: u32| {
        let valid = v >= min && !(0xd800..0xe000).contains(&v) && v <= 0x10ffff;
        if valid {
            (char::from_u32(v), len)
        } else {
            (None, 1)
        }
    };
    if b0 < 0x80 {
        return (Some(char::from(b0)), 1);
    }
    if b0 & 0xe0 == 0xc0 && trail(1) {
        return cp(
            (u32::from(b0 & 0x1f) << 6) | u32::from(bytes[1] & 0x3f),
            2,
            0x80,
        );
    }
    if b0 & 0xf0 == 0xe0 && trail(1) && trail(2) {
        let v = (u32::from(b0 & 0x0f) << 12)
            | (u32::from(bytes[1] & 0x3f) << 6)
            | u32::from(bytes[2] & 0x3f);
        return cp(v, 3, 0x800);
    }
    if b0 & 0xf8 == 0xf0 && trail(1) && trail(2) && trail(3) {
        let v = (u32::from(b0 & 0x07) << 18)
            | (u32::from(bytes[1] & 0x3f) << 12)
            | (u32::from(bytes[2] & 0x3f) << 6)
            | u32::from(bytes[3] & 0x3f);
        return cp(v, 4, 0x10000);
    }
    (None, 1)
}

/// Appends bytes from byte pieces to `text`, one replacement character per malformed byte.
pub(crate) fn flush_bytes(bytes: &mut Vec<u8>, text: &mut String) {
    let mut offset = 0;
    while offset < bytes.len() {
        let (c, len) = decode_utf8(&bytes[offset..]);
        text.push(c.unwrap_or('\u{fffd}'));
        offset += len;
    }
    bytes.clear();
}

impl SentencePiece {
    /// Decodes one non-byte piece: `(text, consumed a leading ▁ at the start)`.
    fn decode_piece<'a>(
        &'a self,
        piece: &'a str,
        id: u32,
        is_bos_ws: bool,
    ) -> (std::borrow::Cow<'a, str>, bool) {
        match self.kind(id) {
            PieceType::Control => return ("".into(), false),
            PieceType::Unknown => {
                let text = if self.id_to_piece(id) == Some(piece) {
                    self.unk_surface.as_str()
                } else {
                    piece
                };
                return (text.into(), false);
            }
            _ => {}
        }
        let mut piece = piece;
        let mut has_bos_ws = false;
        if is_bos_ws && self.decode_strips_bos_ws {
            if let Some(rest) = piece.strip_prefix(SPACE_SYMBOL) {
                piece = rest;
                has_bos_ws = true;
            }
            if self.decode_remove_extra_ws {
                has_bos_ws = false;
            }
        }
        let text = if piece.contains(SPACE_SYMBOL) {
            piece.replace(SPACE_SYMBOL, " ").into()
        } else {
            piece.into()
        };
        (text, has_bos_ws)
    }

    fn decode_iter<'a>(&'a self, items: impl Iterator<Item = (&'a str, u32)>) -> String {
        let mut text = String::new();
        let mut bytes = Vec::new();
        let mut is_bos_ws = true;
        let mut bos_ws_seen = false;
        for (piece, id) in items {
            let byte = self.byte_of[id as usize];
            if byte >= 0 {
                bytes.push(byte as u8);
                continue;
            }
            flush_bytes(&mut bytes, &mut text);
            if bos_ws_seen || !text.is_empty() {
                is_bos_ws = false;
            }
            let (decoded, seen) = self.decode_piece(piece, id, is_bos_ws);
            bos_ws_seen = seen;
            text.push_str(&decoded);
        }
        flush_bytes(&mut bytes, &mut text);
        match &self.denormalizer {
            Some(d) => d.normalize(&text, &super::trie::Trie::default()),
            None => text,
        }
    }

    /// Decodes piece strings (`SentencePieceProcessor.decode_pieces`). Strings that are not in
    /// the vocabulary are copied through as they are.
    pub fn decode_pieces<S: AsRef<str>>(&self, pieces: &[S]) -> String {
        self.decode_iter(pieces.iter().map(|p| {
            let p = p.as_ref();
            (p, self.piece_to_id(p))
        }))
    }

    /// Decodes ids (`SentencePieceProcessor.decode(ids)`).
    ///
    /// # Errors
    /// [`InvalidId`] for an id outside the vocabulary.
    pub fn decode(&self, ids: &[u32]) -> Result<String, InvalidId> {
        let vocab_size = self.vocab_size();
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab_size) {
            return Err(InvalidId { id, vocab_size });
        }
        Ok(self.decode_iter(
            ids.iter()
                .map(|&id| (self.proto_pieces[id as usize].piece.as_str(), id)),
        ))
    }

    /// True for byte pieces `<0xNN>`.
    pub fn is_byte(&self, id: u32) -> bool {
        self.byte_of.get(id as usize).is_some_and(|&b| b >= 0)
    }

    /// The byte a byte piece stands for.
    pub fn byte_value(&self, id: u32) -> Option<u8> {
        self.byte_of
            .get(id as usize)
            .and_then(|&b| u8::try_from(b).ok())
    }
}
