//! `tokenizer_config.json` settings and detection of the ChatGLM generation from a model folder.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The ChatGLM generation a tokenizer (and its chat format) belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatVersion {
    /// ChatGLM-6B: `ice_text.model`, text rules (`<n>`, blanks), `[gMASK] <sop>` appended.
    V1,
    /// ChatGLM2-6B: `tokenizer.model`, specials after the vocabulary, `[gMASK] sop` prefix.
    V2,
    /// ChatGLM3-6B: as V2 plus role tokens and `build_chat_input`.
    V3,
}

/// Another name for [`ChatVersion`].
pub type TokenizerVersion = ChatVersion;

impl std::str::FromStr for ChatVersion {
    type Err = ConfigError;

    /// Parses `v1`/`1`/`chatglm`/`chatglm-6b`, `v2`/`2`/`chatglm2`, `v3`/`3`/`chatglm3`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s
            .trim()
            .to_ascii_lowercase()
            .replace(['_', '-'], "")
            .as_str()
        {
            "v1" | "1" | "chatglm" | "chatglm6b" | "glm1" => Ok(Self::V1),
            "v2" | "2" | "chatglm2" | "chatglm26b" => Ok(Self::V2),
            "v3" | "3" | "chatglm3" | "chatglm36b" => Ok(Self::V3),
            _ => Err(ConfigError::UnknownVersion {
                value: s.to_owned(),
            }),
        }
    }
}

impl std::fmt::Display for ChatVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::V1 => "v1",
            Self::V2 => "v2",
            Self::V3 => "v3",
        })
    }
}

/// Problems with a model folder or its configuration files.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Neither `ice_text.model` nor `tokenizer.model` is in the folder.
    #[error(
        "{dir}: no tokenizer model found (expected ice_text.model for ChatGLM-6B or tokenizer.model for ChatGLM2/3)"
    )]
    NoModelFile {
        /// The folder.
        dir: PathBuf,
    },
    /// A JSON configuration file could not be read or parsed.
    #[error("{path}: {detail}")]
    BadJson {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A version string that names no ChatGLM generation.
    #[error("unknown ChatGLM version {value:?} (use v1, v2 or v3)")]
    UnknownVersion {
        /// The text given.
        value: String,
    },
}

/// Settings of the Python `ChatGLMTokenizer` that change ids, read from `tokenizer_config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizerConfig {
    /// Which generation's rules apply.
    pub version: ChatVersion,
    /// ChatGLM-6B: ids are offset by this many image tokens (`num_image_tokens`, 0 in the release).
    pub num_image_tokens: u32,
    /// ChatGLM-6B: the longest space run written as one `<|blank_N|>` piece.
    pub max_blank_length: usize,
    /// `remove_space`: strip the text and collapse whitespace runs to one space.
    pub remove_space: bool,
    /// `do_lower_case`: lower-case the text.
    pub do_lower_case: bool,
    /// ChatGLM3: role tokens typed in the text (`<|user|>`) become their special ids.
    pub encode_special_tokens: bool,
}

impl TokenizerConfig {
    /// Defaults of the Python tokenizer for `version`.
    pub fn new(version: ChatVersion) -> Self {
        Self {
            version,
            num_image_tokens: 0,
            max_blank_length: 80,
            remove_space: false,
            do_lower_case: false,
            encode_special_tokens: false,
        }
    }

    /// Reads the settings from a `tokenizer_config.json`, keeping `version`.
    ///
    /// # Errors
    /// [`ConfigError::BadJson`] naming the file when it cannot be read or parsed.
    pub fn from_file(path: impl AsRef<Path>, version: ChatVersion) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let raw = read_json(path)?;
        Self::from_json(&raw, version).map_err(|detail| ConfigError::BadJson {
            path: path.to_owned(),
            detail,
        })
    }

    fn from_json(raw: &serde_json::Value, version: ChatVersion) -> Result<Self, String> {
        #[derive(Deserialize)]
        struct Raw {
            num_image_tokens: Option<u32>,
            max_blank_length: Option<usize>,
            remove_space: Option<bool>,
            do_lower_case: Option<bool>,
            encode_special_tokens: Option<bool>,
        }
        let r: Raw =
            serde_json::from_value(raw.clone()).map_err(|e| format!("invalid field: {e}"))?;
        let mut config = Self::new(version);
        // The ChatGLM-6B Python class defaults to 20000 image tokens when the file says nothing.
        config.num_image_tokens =
            r.num_image_tokens
                .unwrap_or(if version == ChatVersion::V1 { 20000 } else { 0 });
        if version != ChatVersion::V1 {
            config.num_image_tokens = 0;
        }
        config.max_blank_length = r.max_blank_length.unwrap_or(80);
        config.remove_space = r.remove_space.unwrap_or(false);
        config.do_lower_case = r.do_lower_case.unwrap_or(false);
        config.encode_special_tokens = r.encode_special_tokens.unwrap_or(false);
        Ok(config)
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value, ConfigError> {
    let bad = |detail: String| ConfigError::BadJson {
        path: path.to_owned(),
        detail,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))
}

/// Where the tokenizer of a model folder is and which generation it is.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelFolder {
    /// The SentencePiece model file.
    pub model_file: PathBuf,
    /// `tokenizer_config.json`, when present.
    pub config_file: Option<PathBuf>,
    /// The detected generation.
    pub version: ChatVersion,
}

/// Finds the tokenizer files of a model folder and detects the ChatGLM generation:
/// `ice_text.model` means ChatGLM-6B; with `tokenizer.model` the names in `tokenizer_config.json`
/// and `config.json` (`chatglm3`, role tokens, `chatglm2`) decide, ChatGLM2 when nothing says.
///
/// # Errors
/// [`ConfigError`] when no model file is found or a JSON file is unreadable.
pub fn inspect_folder(dir: impl AsRef<Path>) -> Result<ModelFolder, ConfigError> {
    let dir = dir.as_ref();
    let config_file = Some(dir.join("tokenizer_config.json")).filter(|p| p.is_file());
    let v1 = dir.join("ice_text.model");
    if v1.is_file() {
        return Ok(ModelFolder {
            model_file: v1,
            config_file,
            version: ChatVersion::V1,
        });
    }
    let model_file = dir.join("tokenizer.model");
    if !model_file.is_file() {
        return Err(ConfigError::NoModelFile {
            dir: dir.to_owned(),
        });
    }
    let mut hints = String::new();
    for name in ["tokenizer_config.json", "config.json"] {
        let path = dir.join(name);
        if path.is_file() {
            hints.push_str(&read_json(&path)?.to_string().to_ascii_lowercase());
        }
    }
    let version = if hints.contains("chatglm3")
        || hints.contains("<|user|>")
        || hints.contains("<|assistant|>")
    {
        ChatVersion::V3
    } else if hints.contains("chatglm2") {
        ChatVersion::V2
    } else {
        tracing::warn!(dir = %dir.display(), "cannot tell ChatGLM2 from ChatGLM3; assuming ChatGLM2 (override the version)");
        ChatVersion::V2
    };
    Ok(ModelFolder {
        model_file,
        config_file,
        version,
    })
}
