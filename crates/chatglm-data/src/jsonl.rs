//! JSON lines output in the two layouts the P-Tuning v2 trainer reads.

use std::io::Write;
use std::path::Path;

use serde::Serialize;
use serde_json::ser::Formatter;

use crate::atomic::StagedFile;
use crate::error::{Error, Result};
use crate::record::Record;

/// The JSON layout of an output line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Style {
    /// `{"content": q, "summary": a}`, the ADGEN layout of the official example (history dropped).
    #[default]
    Adgen,
    /// `{"prompt": q, "response": a, "history": [[q, a], ...]}`, the official chat layout.
    Chat,
}

#[derive(Serialize)]
struct AdgenLine<'a> {
    content: &'a str,
    summary: &'a str,
}

#[derive(Serialize)]
struct ChatLine<'a> {
    prompt: &'a str,
    response: &'a str,
    history: &'a [(String, String)],
}

/// serde_json formatter that spaces like Python's `json.dumps(obj, ensure_ascii=False)`:
/// `", "` between items and `": "` after keys. Escaping is already identical (only `"`, `\` and
/// control characters are escaped, as `\n`-style or lowercase `\u00XX`), so a line is
/// byte-for-byte what the Python tooling writes, e.g. the study note's `d1.json`.
struct PythonStyle;

impl Formatter for PythonStyle {
    fn begin_array_value<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_key<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
}

/// Writes one JSON line (with its `\n`) for `record` in `style`.
///
/// Text is kept exactly: newlines, quotes, backslashes and emoji go through serde_json's escaping
/// and come back unchanged when the line is parsed.
///
/// # Errors
/// The writer's I/O error.
pub fn write_line(out: &mut dyn Write, record: &Record, style: Style) -> std::io::Result<()> {
    let mut ser = serde_json::Serializer::with_formatter(&mut *out, PythonStyle);
    let res = match style {
        Style::Adgen => AdgenLine {
            content: &record.prompt,
            summary: &record.response,
        }
        .serialize(&mut ser),
        Style::Chat => ChatLine {
            prompt: &record.prompt,
            response: &record.response,
            history: &record.history,
        }
        .serialize(&mut ser),
    };
    res.map_err(std::io::Error::other)?;
    out.write_all(b"\n")
}

/// Writes all records as JSON lines into a temporary file beside `path`, ready to
/// [`commit`](StagedFile::commit). Stage every output first, then commit them, so an error
/// leaves no output at all.
///
/// # Errors
/// [`Error::Io`] naming `path`.
pub fn stage_jsonl(path: &Path, records: &[Record], style: Style) -> Result<StagedFile> {
    if style == Style::Adgen && records.iter().any(|r| !r.history.is_empty()) {
        tracing::warn!(
            "{}: ADGEN style has no history field; conversation history is dropped (use the chat style to keep it)",
            path.display()
        );
    }
    StagedFile::write_with(path, |out| {
        for r in records {
            write_line(out, r, style).map_err(|e| Error::io(path, e))?;
        }
        Ok(())
    })
}

/// Writes all records to `path` as JSON lines, atomically (temporary file, then rename).
///
/// # Errors
/// [`Error::Io`] naming `path`.
pub fn write_jsonl(path: &Path, records: &[Record], style: Style) -> Result<()> {
    stage_jsonl(path, records, style)?.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(r: &Record, style: Style) -> String {
        let mut v = Vec::new();
        write_line(&mut v, r, style).unwrap();
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn python_spacing_and_escapes() {
        let r = Record::new("a \"q\"\n\\ 😀\u{1}\t", "é/");
        assert_eq!(
            line(&r, Style::Adgen),
            "{\"content\": \"a \\\"q\\\"\\n\\\\ 😀\\u0001\\t\", \"summary\": \"é/\"}\n"
        );
    }

    #[test]
    fn chat_layout_with_history() {
        let mut r = Record::new("q", "a");
        r.history = vec![("q0".into(), "a0".into()), ("q1".into(), "a1".into())];
        assert_eq!(
            line(&r, Style::Chat),
            "{\"prompt\": \"q\", \"response\": \"a\", \"history\": [[\"q0\", \"a0\"], [\"q1\", \"a1\"]]}\n"
        );
        let empty = Record::new("q", "a");
        assert_eq!(
            line(&empty, Style::Chat),
            "{\"prompt\": \"q\", \"response\": \"a\", \"history\": []}\n"
        );
    }
}
