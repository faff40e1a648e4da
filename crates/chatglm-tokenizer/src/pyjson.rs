//! Order-preserving JSON values with Python's `json.dumps(indent=4, ensure_ascii=False)` output,
//! and a parser for the Python literals of a ChatGLM3 tool call (`tool_call(city="北京", n=3)`).

use std::fmt::Write as _;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq, Serializer};

/// A JSON value that keeps object keys in their original order (as Python dicts do).
#[derive(Debug, Clone, PartialEq)]
pub enum OrderedJson {
    /// `null` / `None`.
    Null,
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string.
    String(String),
    /// A list.
    Array(Vec<OrderedJson>),
    /// An object, keys in insertion order.
    Object(Vec<(String, OrderedJson)>),
}

impl<'de> serde::Deserialize<'de> for OrderedJson {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OrderedJson;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<OrderedJson, E> {
                Ok(OrderedJson::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<OrderedJson, E> {
                Ok(OrderedJson::Null)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<OrderedJson, E> {
                Ok(OrderedJson::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<OrderedJson, E> {
                Ok(OrderedJson::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<OrderedJson, E> {
                Ok(i64::try_from(v).map_or(OrderedJson::Float(v as f64), OrderedJson::Int))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<OrderedJson, E> {
                Ok(OrderedJson::Float(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OrderedJson, E> {
                Ok(OrderedJson::String(v.to_owned()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<OrderedJson, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = a.next_element()? {
                    out.push(v);
                }
                Ok(OrderedJson::Array(out))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<OrderedJson, A::Error> {
                let mut out: Vec<(String, OrderedJson)> = Vec::new();
                while let Some((k, v)) = a.next_entry::<String, OrderedJson>()? {
                    // Python keeps the last value of a repeated key, at the first key's place.
                    match out.iter_mut().find(|(key, _)| *key == k) {
                        Some(slot) => slot.1 = v,
                        None => out.push((k, v)),
                    }
                }
                Ok(OrderedJson::Object(out))
            }
        }
        d.deserialize_any(V)
    }
}

impl serde::Serialize for OrderedJson {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Null => s.serialize_unit(),
            Self::Bool(b) => s.serialize_bool(*b),
            Self::Int(i) => s.serialize_i64(*i),
            Self::Float(f) => s.serialize_f64(*f),
            Self::String(t) => s.serialize_str(t),
            Self::Array(a) => {
                let mut seq = s.serialize_seq(Some(a.len()))?;
                for v in a {
                    seq.serialize_element(v)?;
                }
                seq.end()
            }
            Self::Object(o) => {
                let mut map = s.serialize_map(Some(o.len()))?;
                for (k, v) in o {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

/// Python `repr(float)` / `json.dumps` of a float.
fn py_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    // Rust's `{:e}` gives the shortest round-trip digits, as Python's repr does.
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..16).contains(&exp) {
        let s = format!("{f}");
        if s.contains('.') { s } else { format!("{s}.0") }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    }
}

fn py_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

impl OrderedJson {
    /// `json.dumps(value, indent=4, ensure_ascii=False)`.
    pub fn to_python_json(&self) -> String {
        let mut out = String::new();
        self.write_py(&mut out, 0);
        out
    }

    fn write_py(&self, out: &mut String, depth: usize) {
        let pad = |out: &mut String, d: usize| {
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', 4 * d));
        };
        match self {
            Self::Null => out.push_str("null"),
            Self::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Self::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Self::Float(f) => out.push_str(&py_float(*f)),
            Self::String(s) => py_string(s, out),
            Self::Array(a) if a.is_empty() => out.push_str("[]"),
            Self::Object(o) if o.is_empty() => out.push_str("{}"),
            Self::Array(a) => {
                out.push('[');
                for (i, v) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    pad(out, depth + 1);
                    v.write_py(out, depth + 1);
                }
                pad(out, depth);
                out.push(']');
            }
            Self::Object(o) => {
                out.push('{');
                for (i, (k, v)) in o.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    pad(out, depth + 1);
                    py_string(k, out);
                    out.push_str(": ");
                    v.write_py(out, depth + 1);
                }
                pad(out, depth);
                out.push('}');
            }
        }
    }
}

/// Parses `tool_call(name=value, ...)` where values are Python literals; returns the keyword
/// arguments in order.
pub(crate) fn parse_tool_call(code: &str) -> Result<Vec<(String, OrderedJson)>, String> {
    let mut p = Parser {
        s: code.trim().as_bytes(),
        i: 0,
        src: code.trim(),
    };
    p.expect_word("tool_call")?;
    p.ws();
    p.expect(b'(')?;
    let mut args = Vec::new();
    loop {
        p.ws();
        if p.eat(b')') {
            break;
        }
        let name = p.ident()?;
        p.ws();
        p.expect(b'=')?;
        let value = p.value()?;
        args.push((name, value));
        p.ws();
        if p.eat(b',') {
            continue;
        }
        p.expect(b')')?;
        break;
    }
    p.ws();
    if p.i != p.s.len() {
        return Err(format!("unexpected text after the call at byte {}", p.i));
    }
    Ok(args)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    src: &'a str,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) -> bool {
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn expect(&mut self, c: u8) -> Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!("expected '{}' at byte {}", c as char, self.i))
        }
    }
    fn expect_word(&mut self, w: &str) -> Result<(), String> {
        if self.ident()? == w {
            Ok(())
        } else {
            Err(format!("expected `{w}(...)`"))
        }
    }
    fn ident(&mut self) -> Result<String, String> {
        let start = self.i;
        while self.i < self.s.len()
            && (self.s[self.i].is_ascii_alphanumeric()
                || self.s[self.i] == b'_'
                || self.s[self.i] >= 0x80)
        {
            self.i += 1;
        }
        if start == self.i {
            return Err(format!("expected a name at byte {start}"));
        }
        Ok(self.src[start..self.i].to_owned())
    }
    fn value(&mut self) -> Result<OrderedJson, String> {
        self.ws();
        match self.s.get(self.i) {
            Some(b'"' | b'\'') => self.string().map(OrderedJson::String),
            Some(b'[' | b'(') => {
                let close = if self.s[self.i] == b'[' { b']' } else { b')' };
                self.i += 1;
                let mut items = Vec::new();
                loop {
                    self.ws();
                    if self.eat(close) {
                        break;
                    }
                    items.push(self.value()?);
                    self.ws();
                    if !self.eat(b',') {
                        self.expect(close)?;
                        break;
                    }
                }
                Ok(OrderedJson::Array(items))
            }
            Some(b'{') => {
                self.i += 1;
                let mut items: Vec<(String, OrderedJson)> = Vec::new();
                loop {
                    self.ws();
                    if self.eat(b'}') {
                        break;
                    }
                    let key = match self.value()? {
                        OrderedJson::String(k) => k,
                        other => other.to_python_json(),
                    };
                    self.ws();
                    self.expect(b':')?;
                    let v = self.value()?;
                    match items.iter_mut().find(|(k, _)| *k == key) {
                        Some(slot) => slot.1 = v,
                        None => items.push((key, v)),
                    }
                    self.ws();
                    if !self.eat(b',') {
                        self.expect(b'}')?;
                        break;
                    }
                }
                Ok(OrderedJson::Object(items))
            }
            Some(c) if c.is_ascii_digit() || *c == b'-' || *c == b'+' || *c == b'.' => {
                self.number()
            }
            Some(_) => match self.ident()?.as_str() {
                "True" => Ok(OrderedJson::Bool(true)),
                "False" => Ok(OrderedJson::Bool(false)),
                "None" => Ok(OrderedJson::Null),
                other => Err(format!("unsupported Python expression `{other}`")),
            },
            None => Err("unexpected end of the call".into()),
        }
    }
    fn number(&mut self) -> Result<OrderedJson, String> {
        let start = self.i;
        while self.i < self.s.len()
            && matches!(
                self.s[self.i],
                b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E' | b'_'
            )
        {
            self.i += 1;
        }
        let text = self.src[start..self.i].replace('_', "");
        if let Ok(i) = text.parse::<i64>() {
            return Ok(OrderedJson::Int(i));
        }
        text.parse::<f64>()
            .map(OrderedJson::Float)
            .map_err(|_| format!("bad number `{text}`"))
    }
    fn string(&mut self) -> Result<String, String> {
        let quote = self.s[self.i];
        let triple = self.s[self.i..].starts_with(&[quote; 3]);
        self.i += if triple { 3 } else { 1 };
        let mut out = String::new();
        loop {
            let rest = &self.src[self.i..];
            let Some(c) = rest.chars().next() else {
                return Err("unterminated string".into());
            };
            if triple && rest.as_bytes().starts_with(&[quote; 3]) {
                self.i += 3;
                return Ok(out);
            }
            if !triple && c as u32 == u32::from(quote) {
                self.i += 1;
                return Ok(out);
            }
            self.i += c.len_utf8();
            if c != '\\' {
                out.push(c);
                continue;
            }
            let Some(e) = self.src[self.i..].chars().next() else {
                return Err("unterminated escape".into());
            };
            self.i += e.len_utf8();
            match e {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                '0' => out.push('\0'),
                'u' | 'x' | 'U' => {
                    let n = match e {
                        'x' => 2,
                        'u' => 4,
                        _ => 8,
                    };
                    let hex = self.src.get(self.i..self.i + n).ok_or("bad escape")?;
                    let v = u32::from_str_radix(hex, 16).map_err(|_| "bad escape")?;
                    out.push(char::from_u32(v).ok_or("bad escape")?);
                    self.i += n;
                }
                '\n' => {}
                other => out.push(other),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dumps_like_python() {
        let v: OrderedJson =
            serde_json::from_str(r#"{"name": "天气", "b": [1, 2.5, 1e20, true, null], "a": {}}"#)
                .unwrap();
        assert_eq!(
            v.to_python_json(),
            "{\n    \"name\": \"天气\",\n    \"b\": [\n        1,\n        2.5,\n        1e+20,\n        true,\n        null\n    ],\n    \"a\": {}\n}"
        );
    }

    #[test]
    fn parses_tool_calls() {
        let args =
            parse_tool_call("tool_call(city='北京', days=3, opts={'x': [True, None]})").unwrap();
        assert_eq!(args[0], ("city".into(), OrderedJson::String("北京".into())));
        assert_eq!(args[1], ("days".into(), OrderedJson::Int(3)));
        assert!(parse_tool_call("os.system('x')").is_err());
    }
}
