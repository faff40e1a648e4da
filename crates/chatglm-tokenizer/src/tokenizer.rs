//! The ChatGLM tokenizer: SentencePiece plus the text rules and special tokens of each generation,
//! giving the ids of the Python `ChatGLMTokenizer` (transformers 4.33 behaviour).

use std::path::{Path, PathBuf};

use crate::config::{ChatVersion, ConfigError, TokenizerConfig, inspect_folder};
use crate::special::{RoleIds, SpecialIds};
use crate::spm::{InvalidId, ModelError, PieceType, SentencePiece};
use crate::text;

/// Errors of the ChatGLM tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The model folder or its configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The SentencePiece model file is missing or corrupt.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The model file lacks a piece the ChatGLM version needs (e.g. `[gMASK]` in ice_text.model).
    #[error("{path}: the vocabulary has no {piece:?} piece, so it is not a {version} tokenizer")]
    MissingSpecial {
        /// The model file.
        path: PathBuf,
        /// The missing piece.
        piece: String,
        /// The version that needs it.
        version: ChatVersion,
    },
    /// An id outside the vocabulary was given to decode.
    #[error(transparent)]
    InvalidId(#[from] InvalidId),
}

/// Names of the specials that ChatGLM2/3 place after the SentencePiece vocabulary, in id order.
const V2_SPECIALS: [&str; 5] = ["[MASK]", "[gMASK]", "[sMASK]", "sop", "eop"];
/// ChatGLM3 role tokens, following `V2_SPECIALS`.
pub const ROLE_TOKENS: [&str; 4] = ["<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"];

/// A ChatGLM tokenizer (any generation).
#[derive(Debug, Clone)]
pub struct Tokenizer {
    pub(crate) sp: SentencePiece,
    pub(crate) config: TokenizerConfig,
    pub(crate) special: SpecialIds,
    /// v2/v3: names of the specials after the vocabulary, id = `sp.vocab_size() + index`.
    pub(crate) extra_specials: Vec<&'static str>,
    /// v1: strings split out of the text before encoding (Python's no-split special tokens).
    pub(crate) v1_no_split: Vec<(&'static str, u32)>,
}

impl Tokenizer {
    /// Loads the tokenizer of a downloaded model folder, detecting the version from its files.
    ///
    /// # Errors
    /// [`TokenizerError`] naming the file when the model is missing or corrupt.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        let folder = inspect_folder(dir)?;
        Self::from_dir_with_version(
            folder.model_file.parent().unwrap_or(Path::new(".")),
            folder.version,
        )
    }

    /// Loads the tokenizer of a model folder as the given version (overriding detection).
    ///
    /// # Errors
    /// [`TokenizerError`] naming the file when the model is missing or corrupt.
    pub fn from_dir_with_version(
        dir: impl AsRef<Path>,
        version: ChatVersion,
    ) -> Result<Self, TokenizerError> {
        let dir = dir.as_ref();
        let folder = inspect_folder(dir)?;
        let config = match &folder.config_file {
            Some(path) => TokenizerConfig::from_file(path, version)?,
            None => TokenizerConfig::new(version),
        };
        Self::from_files(&folder.model_file, config)
    }

    /// Loads a tokenizer from a SentencePiece file and explicit settings.
    ///
    /// # Errors
    /// [`TokenizerError`] naming the file when it is missing, corrupt or lacks ChatGLM pieces.
    pub fn from_files(
        model_path: impl AsRef<Path>,
        config: TokenizerConfig,
    ) -> Result<Self, TokenizerError> {
        let path = model_path.as_ref();
        let sp = SentencePiece::from_file(path)?;
        Self::from_sentencepiece(sp, config, path)
    }

    /// Builds a tokenizer around an already loaded SentencePiece model (`path` names it in errors).
    ///
    /// # Errors
    /// [`TokenizerError::MissingSpecial`] when a ChatGLM-6B vocabulary lacks its special pieces.
    pub fn from_sentencepiece(
        sp: SentencePiece,
        config: TokenizerConfig,
        path: &Path,
    ) -> Result<Self, TokenizerError> {
        let version = config.version;
        if version == ChatVersion::V1 {
            let n = config.num_image_tokens;
            let get = |piece: &str| {
                sp.get_id(piece)
                    .map(|id| id + n)
                    .ok_or_else(|| TokenizerError::MissingSpecial {
                        path: path.to_owned(),
                        piece: piece.to_owned(),
                        version,
                    })
            };
            let special = SpecialIds {
                mask: get("[MASK]")?,
                gmask: get("[gMASK]")?,
                smask: get("[sMASK]")?,
                sop: get("<sop>")?,
                eop: get("<eop>")?,
                eos: get("<eop>")?,
                pad: get("<pad>")?,
                unk: sp.unk_id() + n,
                roles: None,
            };
            let v1_no_split = vec![
                ("<sop>", special.sop),
                ("<eop>", special.eop),
                ("<unk>", special.unk),
                ("<pad>", special.pad),
                ("[MASK]", special.mask),
            ];
            return Ok(Self {
                sp,
                config,
                special,
                extra_specials: Vec::new(),
                v1_no_split,
            });
        }
        let base = sp.vocab_size() as u32;
        let mut extra_specials: Vec<&'static str> = V2_SPECIALS.to_vec();
        if version == ChatVersion::V3 {
            extra_specials.extend(ROLE_TOKENS);
        }
        let eos = sp.get_id("</s>").unwrap_or(2);
        let special = SpecialIds {
            mask: base,
            gmask: base + 1,
            smask: base + 2,
            sop: base + 3,
            eop: base + 4,
            eos,
            pad: sp.unk_id(),
            unk: sp.unk_id(),
            roles: (version == ChatVersion::V3).then_some(RoleIds {
                system: base + 5,
                user: base + 6,
                assistant: base + 7,
                observation: base + 8,
            }),
        };
        Ok(Self {
            sp,
            config,
            special,
            extra_specials,
            v1_no_split: Vec::new(),
        })
    }

    /// The ChatGLM generation of this tokenizer.
    pub fn version(&self) -> ChatVersion {
        self.config.version
    }

    /// The settings in use.
    pub fn config(&self) -> &TokenizerConfig {
        &self.config
    }

    /// Sets whether ChatGLM3 role tokens typed in text become special ids (`encode_special_tokens`).
    pub fn set_encode_special_tokens(&mut self, on: bool) {
        self.config.encode_special_tokens = on;
    }

    /// The underlying SentencePiece model.
    pub fn sentencepiece(&self) -> &SentencePiece {
        &self.sp
    }

    /// All special ids.
    pub fn special_ids(&self) -> &SpecialIds {
        &self.special
    }

    /// `[gMASK]`.
    pub fn gmask_id(&self) -> u32 {
        self.special.gmask
    }

    /// `[MASK]`.
    pub fn mask_id(&self) -> u32 {
        self.special.mask
    }

    /// `<sop>`/`sop`: the token that starts the answer.
    pub fn sop_id(&self) -> u32 {
        self.special.sop
    }

    /// Same as [`Tokenizer::sop_id`] (the generation BOS).
    pub fn bos_id(&self) -> u32 {
        self.special.sop
    }

    /// `<eop>`/`eop`.
    pub fn eop_id(&self) -> u32 {
        self.special.eop
    }

    /// The end-of-sequence id generation stops at (`<eop>` in v1, `</s>` in v2/v3).
    pub fn eos_id(&self) -> u32 {
        self.special.eos
    }

    /// The padding id.
    pub fn pad_id(&self) -> u32 {
        self.special.pad
    }

    /// Ids that end a reply in `chat()`: v1 `<eop>`, v2 `</s>`, v3 `</s> <|user|> <|observation|>`.
    pub fn stop_ids(&self) -> Vec<u32> {
        match self.special.roles {
            Some(r) => vec![self.special.eos, r.user, r.observation],
            None => vec![self.special.eos],
        }
    }

    /// Id of a ChatGLM3 role token by name (`"user"` or `"<|user|>"`).
    pub fn role_id(&self, role: &str) -> Option<u32> {
        let roles = self.special.roles?;
        let name = role.trim_start_matches("<|").trim_end_matches("|>");
        Some(match name {
            "system" => roles.system,
            "user" => roles.user,
            "assistant" => roles.assistant,
            "observation" => roles.observation,
            _ => return None,
        })
    }

    /// Total number of ids (what the model's embedding must cover).
    pub fn vocab_size(&self) -> usize {
        match self.config.version {
            ChatVersion::V1 => self.sp.vocab_size() + self.config.num_image_tokens as usize,
            _ => self.sp.vocab_size() + self.extra_specials.len(),
        }
    }

    /// The id of a token string as the Python `convert_tokens_to_ids` gives it.
    pub fn token_to_id(&self, token: &str) -> u32 {
        match self.config.version {
            ChatVersion::V1 => {
                let n = self.config.num_image_tokens;
                if let Some(k) = token
                    .strip_prefix("<image_")
                    .and_then(|t| t.strip_suffix('>'))
                    && !k.is_empty()
                    && k.bytes().all(|b| b.is_ascii_digit())
                    && let Ok(k) = k.parse::<u32>()
                {
                    return k;
                }
                self.sp.piece_to_id(token) + n
            }
            _ => match self.extra_specials.iter().position(|s| *s == token) {
                Some(i) => self.sp.vocab_size() as u32 + i as u32,
                None => self.sp.piece_to_id(token),
            },
        }
    }

    /// The token string of an id as the Python `convert_ids_to_tokens` gives it.
    ///
    /// # Errors
    /// [`InvalidId`] for an id outside the vocabulary.
    pub fn id_to_token(&self, id: u32) -> Result<String, InvalidId> {
        let vocab_size = self.vocab_size();
        let invalid = InvalidId { id, vocab_size };
        match self.config.version {
            ChatVersion::V1 => {
                let n = self.config.num_image_tokens;
                if id < n {
                    return Ok(format!("<image_{id}>"));
                }
                self.sp
                    .id_to_piece(id - n)
                    .map(str::to_owned)
                    .ok_or(invalid)
            }
            version => {
                let base = self.sp.vocab_size() as u32;
                if id >= base {
                    let name = self
                        .extra_specials
                        .get((id - base) as usize)
                        .ok_or(invalid)?;
                    return Ok(if version == ChatVersion::V3 {
                        (*name).to_owned()
                    } else {
                        String::new()
                    });
                }
                if id == self.special.eos
                    || id == self.special.pad
                    || Some(id) == self.sp.get_id("<s>")
                {
                    return Ok(String::new());
                }
                self.sp.id_to_piece(id).map(str::to_owned).ok_or(invalid)
            }
        }
    }

    /// Converts ids to token strings (`convert_ids_to_tokens`).
    ///
    /// # Errors
    /// [`InvalidId`] for an id outside the vocabulary.
    pub fn ids_to_tokens(&self, ids: &[u32]) -> Result<Vec<String>, InvalidId> {
        ids.iter().map(|&id| self.id_to_token(id)).collect()
    }

    /// True for ids the Python tokenizer drops with `skip_special_tokens=True`.
    pub fn is_skippable_special(&self, id: u32) -> bool {
        match self.config.version {
            ChatVersion::V1 => {
                let s = &self.special;
                [s.sop, s.eop, s.unk, s.pad, s.mask].contains(&id)
            }
            _ => false,
        }
    }

    /// True for any special or control id (never produced from plain text).
    pub fn is_special(&self, id: u32) -> bool {
        match self.config.version {
            ChatVersion::V1 => {
                let n = self.config.num_image_tokens;
                id >= n
                    && matches!(
                        self.sp.piece_type(id - n),
                        Some(PieceType::Control | PieceType::Unknown)
                    )
            }
            _ => {
                id >= self.sp.vocab_size() as u32
                    || matches!(
                        self.sp.piece_type(id),
                        Some(PieceType::Control | PieceType::Unknown)
                    )
            }
        }
    }

    /// Splits text into the token strings the Python `tokenizer.tokenize(text)` returns.
    pub fn tokenize(&self, text: &str) -> Vec<String> {
        let mut out = Vec::new();
        self.tokenize_with(text, |piece, _| out.push(piece.to_owned()));
        out
    }

    /// Core of encoding: calls `emit(token, id)` for each token of `text` (no added specials).
    pub(crate) fn tokenize_with(&self, text: &str, mut emit: impl FnMut(&str, u32)) {
        match self.config.version {
            ChatVersion::V1 => {
                let n = self.config.num_image_tokens;
                let lowered;
                let text = if self.config.do_lower_case {
                    lowered = text::lower_outside(text, &self.v1_no_split);
                    lowered.as_str()
                } else {
                    text
                };
                for chunk in text::split_no_split(text, &self.v1_no_split) {
                    match chunk {
                        text::Chunk::Special(token, id) => emit(token, id),
                        text::Chunk::Text(t) => {
                            let t = text::preprocess_v1(t, &self.config);
                            // `<image_N>` is never a piece, so the id is the piece id plus N.
                            self.sp.encode_each(&t, |piece, id| emit(piece, id + n));
                        }
                    }
                }
            }
            ChatVersion::V2 | ChatVersion::V3 => {
                let roles: &[&str] = if self.config.version == ChatVersion::V3
                    && self.config.encode_special_tokens
                {
                    &ROLE_TOKENS
                } else {
                    &[]
                };
                for chunk in text::split_exact(text, roles) {
                    match chunk {
                        text::Chunk::Special(token, _) => emit(token, self.token_to_id(token)),
                        text::Chunk::Text(t) => {
                            // The Python class maps every piece through its special table, so a
                            // piece spelled like a special (`sop`) takes the special's id.
                            let base = self.sp.vocab_size() as u32;
                            self.sp.encode_each(t, |piece, id| {
                                let special = if piece.len() <= 15 {
                                    self.extra_specials.iter().position(|s| *s == piece)
                                } else {
                                    None
                                };
                                emit(piece, special.map_or(id, |i| base + i as u32));
                            });
                        }
                    }
                }
            }
        }
    }

    /// Encodes text into ids; `add_special` adds `[gMASK] <sop>` after (v1) or `[gMASK] sop`
    /// before (v2, v3) the text, as `tokenizer.encode(text)` does.
    pub fn encode(&self, text: &str, add_special: bool) -> Vec<u32> {
        let mut ids = Vec::new();
        self.tokenize_with(text, |_, id| ids.push(id));
        if add_special {
            self.build_inputs_with_special_tokens(ids)
        } else {
            ids
        }
    }

    /// Adds the special tokens around already encoded ids (`build_inputs_with_special_tokens`).
    pub fn build_inputs_with_special_tokens(&self, mut ids: Vec<u32>) -> Vec<u32> {
        match self.config.version {
            ChatVersion::V1 => {
                ids.extend([self.special.gmask, self.special.sop]);
                ids
            }
            _ => {
                let mut out = Vec::with_capacity(ids.len() + 2);
                out.extend([self.special.gmask, self.special.sop]);
                out.extend(ids);
                out
            }
        }
    }

    /// Decodes ids to text as `tokenizer.decode(ids, skip_special_tokens=skip_special)` does:
    /// v1 drops padding, reverses `<n>`/tab/blank pieces and cleans up spaces before punctuation;
    /// v2/v3 decode the pieces as they are (v3 writes its specials by name).
    ///
    /// # Errors
    /// [`InvalidId`] for an id outside the vocabulary.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, InvalidId> {
        let mut tokens = Vec::with_capacity(ids.len());
        for &id in ids {
            if self.config.version == ChatVersion::V1 && id == self.special.pad {
                continue;
            }
            let token = self.id_to_token(id)?;
            if skip_special && self.is_skippable_special(id) {
                continue;
            }
            tokens.push(token);
        }
        Ok(self.tokens_to_string(&tokens))
    }

    /// Joins token strings into text (`convert_tokens_to_string` plus the v1 clean-up).
    pub fn tokens_to_string<S: AsRef<str>>(&self, tokens: &[S]) -> String {
        let text = self.sp.decode_pieces(tokens);
        match self.config.version {
            ChatVersion::V1 => text::clean_up_tokenization(&text::postprocess_v1(
                &text,
                self.config.max_blank_length,
            )),
            _ => text,
        }
    }
}
