//! Special token ids of a ChatGLM tokenizer.

/// Special token ids of a loaded tokenizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialIds {
    /// `[MASK]`.
    pub mask: u32,
    /// `[gMASK]`: generation mask placed before the answer.
    pub gmask: u32,
    /// `[sMASK]`.
    pub smask: u32,
    /// `<sop>` (v1) / `sop` (v2, v3): start of the answer (the BOS of generation).
    pub sop: u32,
    /// `<eop>` (v1) / `eop` (v2, v3).
    pub eop: u32,
    /// End of sequence: `<eop>` in v1, `</s>` in v2 and v3.
    pub eos: u32,
    /// Padding id (`<pad>` in v1, `<unk>` in v2 and v3).
    pub pad: u32,
    /// The unknown piece.
    pub unk: u32,
    /// ChatGLM3 role tokens `<|system|> <|user|> <|assistant|> <|observation|>`.
    pub roles: Option<RoleIds>,
}

/// ChatGLM3 role token ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoleIds {
    /// `<|system|>`.
    pub system: u32,
    /// `<|user|>`.
    pub user: u32,
    /// `<|assistant|>`.
    pub assistant: u32,
    /// `<|observation|>`.
    pub observation: u32,
}
