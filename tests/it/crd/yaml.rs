//! YAML documents decoded as `kubectl apply` decodes them (sigs.k8s.io/yaml over go-yaml, which
//! follows YAML 1.1), into JSON values: a plain scalar that YAML 1.1 or YAML 1.2 would read as a
//! boolean, null, number or timestamp is not a string here either, and a key given twice in one
//! mapping is an error, as strict field validation makes it.
//!
//! Anchors, aliases and tags other than `!!str` are refused: nothing we print uses them, and a
//! check that half-understood them would prove nothing.

use serde_json::{Map, Number, Value};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Every non-empty document of a YAML stream (kubectl skips empty ones too).
pub fn documents(text: &str) -> Result<Vec<Value>, String> {
    let mut events = Events::default();
    Parser::new_from_str(text)
        .load(&mut events, true)
        .map_err(|error| format!("not YAML: {error}"))?;
    let mut builder = Builder {
        events: events.0.into_iter().peekable(),
    };
    let mut documents = Vec::new();
    while let Some((event, mark)) = builder.events.next() {
        match event {
            Event::DocumentStart => {
                if matches!(builder.events.peek(), Some((Event::DocumentEnd, _))) {
                    continue;
                }
                let value = builder.value()?;
                if !value.is_null() {
                    documents.push(value);
                }
            }
            Event::DocumentEnd | Event::StreamStart | Event::StreamEnd => {}
            other => return Err(format!("unexpected {other:?} at line {}", mark.line())),
        }
    }
    Ok(documents)
}

/// The one document of `text`.
pub fn document(text: &str) -> Result<Value, String> {
    let mut all = documents(text)?;
    match all.len() {
        1 => Ok(all.remove(0)),
        count => Err(format!("{count} documents where one was expected")),
    }
}

#[derive(Default)]
struct Events(Vec<(Event, Marker)>);

impl MarkedEventReceiver for Events {
    fn on_event(&mut self, event: Event, mark: Marker) {
        self.0.push((event, mark));
    }
}

struct Builder {
    events: std::iter::Peekable<std::vec::IntoIter<(Event, Marker)>>,
}

impl Builder {
    fn value(&mut self) -> Result<Value, String> {
        let Some((event, mark)) = self.events.next() else {
            return Err("the document ends early".to_string());
        };
        let line = mark.line();
        match event {
            Event::Scalar(text, style, anchor, tag) => {
                refuse_anchor(anchor, line)?;
                scalar(text, style, tag.as_ref(), line)
            }
            Event::SequenceStart(anchor, tag) => {
                refuse_anchor(anchor, line)?;
                refuse_tag(tag.as_ref(), line)?;
                let mut items = Vec::new();
                while !matches!(self.events.peek(), Some((Event::SequenceEnd, _))) {
                    items.push(self.value()?);
                }
                self.events.next();
                Ok(Value::Array(items))
            }
            Event::MappingStart(anchor, tag) => {
                refuse_anchor(anchor, line)?;
                refuse_tag(tag.as_ref(), line)?;
                let mut map = Map::new();
                while !matches!(self.events.peek(), Some((Event::MappingEnd, _))) {
                    let key_line = self.events.peek().map_or(line, |(_, mark)| mark.line());
                    let key = match self.value()? {
                        Value::String(key) => key,
                        // go-yaml turns booleans, numbers and null into their JSON text.
                        Value::Null => "null".to_string(),
                        Value::Bool(flag) => flag.to_string(),
                        Value::Number(number) => number.to_string(),
                        other => {
                            return Err(format!(
                                "line {key_line}: a key must be a scalar, not {other}"
                            ));
                        }
                    };
                    let value = self.value()?;
                    if map.insert(key.clone(), value).is_some() {
                        return Err(format!(
                            "line {key_line}: duplicate field \"{key}\" (strict decoding refuses it)"
                        ));
                    }
                }
                self.events.next();
                Ok(Value::Object(map))
            }
            Event::Alias(_) => Err(format!("line {line}: aliases are not supported here")),
            other => Err(format!("line {line}: unexpected {other:?}")),
        }
    }
}

fn refuse_anchor(anchor: usize, line: usize) -> Result<(), String> {
    if anchor == 0 {
        Ok(())
    } else {
        Err(format!("line {line}: anchors are not supported here"))
    }
}

fn refuse_tag(tag: Option<&yaml_rust2::parser::Tag>, line: usize) -> Result<(), String> {
    match tag {
        None => Ok(()),
        Some(tag) => Err(format!("line {line}: tag {tag:?} is not supported here")),
    }
}

fn scalar(
    text: String,
    style: TScalarStyle,
    tag: Option<&yaml_rust2::parser::Tag>,
    line: usize,
) -> Result<Value, String> {
    if let Some(tag) = tag {
        return if tag.suffix == "str" && matches!(tag.handle.as_str(), "tag:yaml.org,2002:" | "!!")
        {
            Ok(Value::String(text))
        } else {
            Err(format!("line {line}: tag {tag:?} is not supported here"))
        };
    }
    if style != TScalarStyle::Plain {
        return Ok(Value::String(text));
    }
    resolve_plain(&text).map_err(|problem| format!("line {line}: {problem}"))
}

/// A plain scalar as YAML 1.1 (go-yaml) or YAML 1.2 resolves it; where the two differ, the
/// one that is not a string wins, since either reader may meet the text. Timestamps, `.inf` and
/// `.nan` have no JSON form: kubectl cannot send them as given, so they are errors.
pub fn resolve_plain(text: &str) -> Result<Value, String> {
    const NULLS: &[&str] = &["", "~", "null", "Null", "NULL"];
    const TRUE: &[&str] = &[
        "y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON",
    ];
    const FALSE: &[&str] = &[
        "n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF",
    ];
    if NULLS.contains(&text) {
        return Ok(Value::Null);
    }
    if TRUE.contains(&text) {
        return Ok(Value::Bool(true));
    }
    if FALSE.contains(&text) {
        return Ok(Value::Bool(false));
    }
    if let Some(integer) = yaml_integer(text) {
        return i64::try_from(integer)
            .map(|integer| Value::Number(Number::from(integer)))
            .map_err(|_| format!("{text} is an integer out of range"));
    }
    if let Some(float) = yaml_float(text) {
        return Number::from_f64(float)
            .map(Value::Number)
            .ok_or_else(|| format!("{text} is a float with no JSON form"));
    }
    if looks_like_timestamp(text) {
        return Err(format!("{text} is a YAML 1.1 timestamp, not a string"));
    }
    Ok(Value::String(text.to_string()))
}

fn split_sign(text: &str) -> (i128, &str) {
    match text.as_bytes().first() {
        Some(b'-') => (-1, &text[1..]),
        Some(b'+') => (1, &text[1..]),
        _ => (1, text),
    }
}

fn all_in(text: &str, allowed: impl Fn(char) -> bool) -> bool {
    !text.is_empty() && text.chars().all(allowed)
}

/// YAML 1.1 integers (with `_`, binary, octal with a leading 0, hex, base 60) and YAML 1.2
/// ones (`0o` octal).
fn yaml_integer(text: &str) -> Option<i128> {
    let (sign, body) = split_sign(text);
    let parse = |digits: &str, radix: u32| -> Option<i128> {
        let cleaned: String = digits.chars().filter(|c| *c != '_').collect();
        if cleaned.is_empty() {
            return None;
        }
        i128::from_str_radix(&cleaned, radix).ok().map(|n| sign * n)
    };
    if let Some(digits) = body.strip_prefix("0b") {
        return all_in(digits, |c| c == '0' || c == '1' || c == '_')
            .then(|| parse(digits, 2))
            .flatten();
    }
    if let Some(digits) = body.strip_prefix("0x") {
        return all_in(digits, |c| c.is_ascii_hexdigit() || c == '_')
            .then(|| parse(digits, 16))
            .flatten();
    }
    if let Some(digits) = body.strip_prefix("0o") {
        return all_in(digits, |c| ('0'..='7').contains(&c) || c == '_')
            .then(|| parse(digits, 8))
            .flatten();
    }
    if body.len() > 1 && body.starts_with('0') {
        return all_in(&body[1..], |c| ('0'..='7').contains(&c) || c == '_')
            .then(|| parse(&body[1..], 8))
            .flatten();
    }
    if body.contains(':') {
        // Base 60: 1:20 is 80.
        let mut total: i128 = 0;
        for (index, part) in body.split(':').enumerate() {
            let ok = if index == 0 {
                all_in(part, |c| c.is_ascii_digit() || c == '_') && !part.starts_with('0')
            } else {
                all_in(part, |c| c.is_ascii_digit()) && part.len() <= 2
            };
            if !ok {
                return None;
            }
            total = total * 60 + parse(part, 10)?.abs();
        }
        return Some(sign * total);
    }
    if all_in(body, |c| c.is_ascii_digit() || c == '_')
        && body.starts_with(|c: char| c.is_ascii_digit())
    {
        return parse(body, 10);
    }
    None
}

/// YAML 1.1 and 1.2 floats: `1.5`, `.5`, `1.`, `1e5` (1.2), `1.0e+5`, `.inf`, `.nan`, base 60.
fn yaml_float(text: &str) -> Option<f64> {
    let (_, body) = split_sign(text);
    if matches!(body, ".inf" | ".Inf" | ".INF") {
        return Some(f64::INFINITY);
    }
    if matches!(text, ".nan" | ".NaN" | ".NAN") {
        return Some(f64::NAN);
    }
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(at) => (&body[..at], Some(&body[at + 1..])),
        None => (body, None),
    };
    if let Some(exponent) = exponent {
        let (_, digits) = split_sign(exponent);
        if !all_in(digits, |c| c.is_ascii_digit()) {
            return None;
        }
    }
    let dots = mantissa.matches('.').count();
    let mantissa_ok = all_in(mantissa, |c| c.is_ascii_digit() || c == '.' || c == '_')
        && mantissa.chars().any(|c| c.is_ascii_digit())
        && (dots == 1 || (dots == 0 && exponent.is_some()));
    if mantissa_ok {
        let cleaned: String = text.chars().filter(|c| *c != '_').collect();
        return cleaned.parse().ok().or(Some(0.0));
    }
    // Base 60 with a fraction: 1:20.5.
    if body.contains(':') && body.contains('.') {
        let (whole, _) = body.split_once('.')?;
        return yaml_integer(whole).map(|n| n as f64);
    }
    None
}

/// YAML 1.1 timestamps: `2001-12-14`, `2001-12-14t21:59:43.10-05:00`, ...
fn looks_like_timestamp(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() >= 8
        && bytes[..4].iter().all(u8::is_ascii_digit)
        && bytes[4] == b'-'
        && bytes[5].is_ascii_digit()
}
