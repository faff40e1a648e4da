//! Chat prompts with history and reply post-processing, as each generation's `chat()` does:
//! ChatGLM-6B `[Round i]\n问：..\n答：`, ChatGLM2-6B `[Round i]\n\n问：...`, ChatGLM3-6B
//! `build_chat_input` (role tokens, system message with tools, observations).

use serde::{Deserialize, Serialize};

use crate::config::ChatVersion;
pub use crate::pyjson::OrderedJson;
use crate::text::py_isspace;
use crate::tokenizer::Tokenizer;

/// Errors of the chat helpers.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// A ChatGLM3-only feature was used with another version.
    #[error("{feature} needs a ChatGLM3 tokenizer, this one is {version}")]
    NeedsV3 {
        /// What was asked for.
        feature: &'static str,
        /// The tokenizer's version.
        version: ChatVersion,
    },
    /// A tool call in a reply could not be parsed.
    #[error("cannot parse the tool call of `{name}`: {detail} (in {code:?})")]
    ToolCall {
        /// The tool name (the reply's metadata line).
        name: String,
        /// The call text.
        code: String,
        /// What is wrong.
        detail: String,
    },
}

/// Speaker of a ChatGLM3 message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// System prompt (may carry tools).
    System,
    /// The user.
    User,
    /// The model.
    Assistant,
    /// A tool result.
    Observation,
}

impl Role {
    /// The role name (`"user"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::User => "user",
            Self::Assistant => "assistant",
            Self::Observation => "observation",
        }
    }
}

/// One ChatGLM3 history entry (`{"role", "content", "metadata"?, "tools"?}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Speaker.
    pub role: Role,
    /// Text (for an assistant tool call, the call code).
    pub content: String,
    /// Metadata line after the role token (a tool name for tool calls).
    #[serde(default)]
    pub metadata: String,
    /// Tools offered in a system message (written after the content as indented JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<OrderedJson>,
}

impl Message {
    /// A message without metadata or tools.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            metadata: String::new(),
            tools: None,
        }
    }
}

/// A tool call parsed from a ChatGLM3 reply.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    /// Tool name (the metadata line).
    pub name: String,
    /// Keyword arguments of `tool_call(...)`, in order.
    pub parameters: OrderedJson,
}

/// What a ChatGLM3 reply turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Plain text.
    Text(String),
    /// A tool call (a system message offered tools).
    ToolCall(ToolCall),
    /// Content addressed to a named tool without tools in the system message.
    Named {
        /// The metadata line.
        name: String,
        /// The content.
        content: String,
    },
}

/// The ChatGLM-6B prompt: the query alone without history, else `[Round i]\n问：q\n答：r\n` per
/// past turn (from 0) then `[Round n]\n问：query\n答：`.
pub fn build_prompt_v1(query: &str, history: &[(String, String)]) -> String {
    if history.is_empty() {
        return query.to_owned();
    }
    let mut prompt = String::new();
    for (i, (q, r)) in history.iter().enumerate() {
        prompt.push_str(&format!("[Round {i}]\n问：{q}\n答：{r}\n"));
    }
    prompt.push_str(&format!("[Round {}]\n问：{query}\n答：", history.len()));
    prompt
}

/// The ChatGLM2-6B prompt: `[Round i]\n\n问：q\n\n答：r\n\n` per past turn (from 1) then
/// `[Round n]\n\n问：query\n\n答：`.
pub fn build_prompt_v2(query: &str, history: &[(String, String)]) -> String {
    let mut prompt = String::new();
    for (i, (q, r)) in history.iter().enumerate() {
        prompt.push_str(&format!("[Round {}]\n\n问：{q}\n\n答：{r}\n\n", i + 1));
    }
    prompt.push_str(&format!(
        "[Round {}]\n\n问：{query}\n\n答：",
        history.len() + 1
    ));
    prompt
}

fn py_strip(s: &str) -> &str {
    s.trim_matches(py_isspace)
}

/// Matches Python's `[\u4e00-\u9fff]`.
fn is_cjk(c: char) -> bool {
    ('\u{4e00}'..='\u{9fff}').contains(&c)
}

/// ChatGLM-6B `process_response`: strip, `[[训练时间]]` -> `2023年`, and `,!:;?` next to CJK
/// characters become full-width.
pub fn process_response_v1(response: &str) -> String {
    let mut text = py_strip(response).replace("[[训练时间]]", "2023年");
    for (half, full) in [
        (',', '，'),
        ('!', '！'),
        (':', '：'),
        (';', '；'),
        ('?', '？'),
    ] {
        for cjk_first in [true, false] {
            let chars: Vec<char> = text.chars().collect();
            let mut out = String::with_capacity(text.len());
            let mut i = 0;
            while i < chars.len() {
                let next = chars.get(i + 1).copied();
                if cjk_first && is_cjk(chars[i]) && next == Some(half) {
                    out.push(chars[i]);
                    out.push(full);
                    i += 2;
                } else if !cjk_first && chars[i] == half && next.is_some_and(is_cjk) {
                    out.push(full);
                    out.extend(next);
                    i += 2;
                } else {
                    out.push(chars[i]);
                    i += 1;
                }
            }
            text = out;
        }
    }
    text
}

/// ChatGLM2-6B `process_response`: strip and `[[训练时间]]` -> `2023年`.
pub fn process_response_v2(response: &str) -> String {
    py_strip(response).replace("[[训练时间]]", "2023年")
}

/// ChatGLM3-6B `process_response`: splits the decoded reply at `<|assistant|>`, appends each part
/// to `history` as an assistant message, and returns the last part: text, or a tool call when
/// its metadata line names a tool. A part without a newline is taken as plain text (the Python
/// code raises there).
///
/// # Errors
/// [`ChatError::ToolCall`] when the system message offers tools and the call cannot be parsed.
pub fn process_response_v3(output: &str, history: &mut Vec<Message>) -> Result<Reply, ChatError> {
    let mut reply = Reply::Text(String::new());
    let has_tools = history
        .first()
        .is_some_and(|m| m.role == Role::System && m.tools.is_some());
    for part in output.split("<|assistant|>") {
        let (metadata, content) = part.split_once('\n').unwrap_or(("", part));
        if py_strip(metadata).is_empty() {
            let content = py_strip(content).to_owned();
            history.push(Message {
                role: Role::Assistant,
                content: content.clone(),
                metadata: metadata.to_owned(),
                tools: None,
            });
            reply = Reply::Text(content.replace("[[训练时间]]", "2023年"));
        } else {
            history.push(Message {
                role: Role::Assistant,
                content: content.to_owned(),
                metadata: metadata.to_owned(),
                tools: None,
            });
            let name = py_strip(metadata).to_owned();
            if has_tools {
                let lines: Vec<&str> = content.split('\n').collect();
                let code = if lines.len() >= 2 {
                    lines[1..lines.len() - 1].join("\n")
                } else {
                    String::new()
                };
                let args = crate::pyjson::parse_tool_call(&code).map_err(|detail| {
                    ChatError::ToolCall {
                        name: name.clone(),
                        code: code.clone(),
                        detail,
                    }
                })?;
                reply = Reply::ToolCall(ToolCall {
                    name,
                    parameters: OrderedJson::Object(args),
                });
            } else {
                reply = Reply::Named {
                    name,
                    content: content.to_owned(),
                };
            }
        }
    }
    Ok(reply)
}

impl Tokenizer {
    /// The chat prompt text of ChatGLM-6B or ChatGLM2-6B for `query` after `history` turns.
    /// For ChatGLM3 (whose prompt is built from ids) this is the ChatGLM2 text form.
    pub fn build_prompt(&self, query: &str, history: &[(String, String)]) -> String {
        match self.version() {
            ChatVersion::V1 => build_prompt_v1(query, history),
            _ => build_prompt_v2(query, history),
        }
    }

    /// The input ids `chat()` feeds the model: the encoded prompt with its special tokens (v1,
    /// v2), or `build_chat_input` with the turns as user/assistant messages (v3).
    pub fn build_prompt_ids(&self, query: &str, history: &[(String, String)]) -> Vec<u32> {
        if self.version() == ChatVersion::V3 {
            let messages: Vec<Message> = history
                .iter()
                .flat_map(|(q, r)| {
                    [
                        Message::new(Role::User, q.clone()),
                        Message::new(Role::Assistant, r.clone()),
                    ]
                })
                .collect();
            return self.build_chat_ids_v3(query, &messages, Role::User);
        }
        self.encode(&self.build_prompt(query, history), true)
    }

    /// ChatGLM2 `build_stream_inputs` with history: the ids of the new turn only, to extend a
    /// conversation whose earlier turns are already in the key/value cache.
    pub fn build_turn_continuation_v2(&self, query: &str, history_len: usize) -> Vec<u32> {
        let prompt = format!("\n\n[Round {}]\n\n问：{query}\n\n答：", history_len + 1);
        let ids = self.encode(&prompt, false);
        ids.get(1..).map(<[u32]>::to_vec).unwrap_or_default()
    }

    /// ChatGLM3 `build_single_message`: role token, `metadata\n`, then the message.
    ///
    /// # Errors
    /// [`ChatError::NeedsV3`] for a ChatGLM-6B or ChatGLM2 tokenizer.
    pub fn build_single_message(
        &self,
        role: Role,
        metadata: &str,
        message: &str,
    ) -> Result<Vec<u32>, ChatError> {
        let Some(role_id) = self.role_id(role.as_str()) else {
            return Err(ChatError::NeedsV3 {
                feature: "build_single_message",
                version: self.version(),
            });
        };
        Ok(self.single_message(role_id, metadata, message))
    }

    fn single_message(&self, role_id: u32, metadata: &str, message: &str) -> Vec<u32> {
        let mut ids = vec![role_id];
        ids.extend(self.sp_encode_v3(&format!("{metadata}\n")));
        ids.extend(self.sp_encode_v3(message));
        ids
    }

    /// ChatGLM3 `SPTokenizer.encode`: plain SentencePiece ids, no special-token handling.
    fn sp_encode_v3(&self, text: &str) -> Vec<u32> {
        self.sp.encode(text)
    }

    fn build_chat_ids_v3(&self, query: &str, history: &[Message], role: Role) -> Vec<u32> {
        let role_id = |r: Role| self.role_id(r.as_str()).unwrap_or(self.special.unk);
        let mut ids = Vec::new();
        for m in history {
            let mut content = m.content.clone();
            if m.role == Role::System
                && let Some(tools) = &m.tools
            {
                content = format!("{content}\n{}", tools.to_python_json());
            }
            ids.extend(self.single_message(role_id(m.role), &m.metadata, &content));
        }
        ids.extend(self.single_message(role_id(role), "", query));
        ids.push(role_id(Role::Assistant));
        self.build_inputs_with_special_tokens(ids)
    }

    /// ChatGLM3 `build_chat_input`: `[gMASK] sop`, every history message, the query as `role`,
    /// then `<|assistant|>`.
    ///
    /// # Errors
    /// [`ChatError::NeedsV3`] for a ChatGLM-6B or ChatGLM2 tokenizer.
    pub fn build_chat_input(
        &self,
        query: &str,
        history: &[Message],
        role: Role,
    ) -> Result<Vec<u32>, ChatError> {
        if self.version() != ChatVersion::V3 {
            return Err(ChatError::NeedsV3 {
                feature: "build_chat_input",
                version: self.version(),
            });
        }
        Ok(self.build_chat_ids_v3(query, history, role))
    }

    /// The reply post-processing of ChatGLM-6B or ChatGLM2-6B (`process_response`); for ChatGLM3
    /// use [`process_response_v3`], which also parses tool calls.
    pub fn process_response(&self, response: &str) -> String {
        match self.version() {
            ChatVersion::V1 => process_response_v1(response),
            _ => process_response_v2(response),
        }
    }
}
