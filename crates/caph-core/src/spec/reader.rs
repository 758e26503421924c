//! A walker over a parsed TOML document that keeps spans, so every problem names its line and column.
//!
//! Each section of the spec is read by asking for its keys one by one; the reader records a
//! diagnostic for every missing, mistyped or unknown key and goes on, so one run reports them all.

use std::ops::Range;

use toml::de::{DeTable, DeValue};

use crate::diagnostic::{Diagnostic, LineIndex, did_you_mean};

/// A value together with where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct At<T> {
    pub(crate) value: T,
    pub(crate) span: Range<usize>,
}

/// One table of the document and the dotted field path that leads to it.
#[derive(Debug, Clone)]
pub(crate) struct Section<'a, 'i> {
    pub(crate) field: String,
    pub(crate) table: &'a DeTable<'i>,
    pub(crate) span: Range<usize>,
}

impl Section<'_, '_> {
    /// The dotted path of `key` inside this section.
    pub(crate) fn field_of(&self, key: &str) -> String {
        if self.field.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.field)
        }
    }

    /// How to name this section in a fix: `[kubernetes]`, or "the top level".
    fn header(&self) -> String {
        if self.field.is_empty() {
            "the top level".to_string()
        } else {
            format!("[{}]", self.field)
        }
    }
}

/// Collects diagnostics while a document is read.
#[derive(Debug)]
pub(crate) struct Reader<'s> {
    file: &'s str,
    source: &'s str,
    index: LineIndex,
    pub(crate) diagnostics: Vec<Diagnostic>,
    /// Problems that do not stop a build (end of life, for example); `validate --strict` fails on them.
    pub(crate) warnings: Vec<Diagnostic>,
}

impl<'s> Reader<'s> {
    pub(crate) fn new(file: &'s str, source: &'s str) -> Reader<'s> {
        Reader {
            file,
            source,
            index: LineIndex::new(source),
            diagnostics: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// Records a warning: like [`Reader::error`], but the spec stays valid.
    pub(crate) fn warning(
        &mut self,
        span: &Range<usize>,
        field: &str,
        message: impl Into<String>,
        help: Option<String>,
    ) {
        self.error(span, field, message, help);
        if let Some(warning) = self.diagnostics.pop() {
            self.warnings.push(warning);
        }
    }

    pub(crate) fn error(
        &mut self,
        span: &Range<usize>,
        field: &str,
        message: impl Into<String>,
        help: Option<String>,
    ) {
        let (line, column) = self.index.position(self.source, span.start);
        self.diagnostics.push(Diagnostic {
            file: self.file.to_string(),
            line,
            column,
            field: field.to_string(),
            message: message.into(),
            help,
        });
    }

    /// Reports every key of `section` that is not in `allowed`, with a did-you-mean where one is close.
    pub(crate) fn check_keys(&mut self, section: &Section<'_, '_>, allowed: &[&str]) {
        for key in section.table.keys() {
            let name: &str = key.get_ref();
            if allowed.contains(&name) {
                continue;
            }
            let help = match did_you_mean(name, allowed) {
                Some(suggestion) => Some(format!("did you mean `{suggestion}`?")),
                None => Some(format!(
                    "known keys in {}: {}",
                    section.header(),
                    allowed.join(", ")
                )),
            };
            self.error(
                &key.span(),
                &section.field_of(name),
                "is not a known key",
                help,
            );
        }
    }

    /// Reports each of `keys` present in `section`: they do not apply in this combination.
    pub(crate) fn disallow(
        &mut self,
        section: &Section<'_, '_>,
        keys: &[&str],
        message: &str,
        help: &str,
    ) {
        for key in keys {
            if let Some(value) = section.table.get(*key) {
                self.error(
                    &value.span(),
                    &section.field_of(key),
                    message,
                    Some(help.to_string()),
                );
            }
        }
    }

    fn item<'a, 'i>(
        section: &Section<'a, 'i>,
        key: &str,
    ) -> Option<(&'a DeValue<'i>, Range<usize>)> {
        section
            .table
            .get(key)
            .map(|value| (value.get_ref(), value.span()))
    }

    fn missing(&mut self, section: &Section<'_, '_>, key: &str, example: &str) {
        let help = Some(format!("add `{key} = {example}` to {}", section.header()));
        self.error(&section.span, &section.field_of(key), "is missing", help);
    }

    fn wrong_type(
        &mut self,
        span: &Range<usize>,
        field: &str,
        expected: &str,
        found: &DeValue<'_>,
    ) {
        self.error(
            span,
            field,
            format!("must be {expected}, not {}", describe(found)),
            None,
        );
    }

    /// A sub-table; `None` (with a diagnostic when `required`) when absent or not a table.
    pub(crate) fn section<'a, 'i>(
        &mut self,
        parent: &Section<'a, 'i>,
        key: &str,
        required: bool,
    ) -> Option<Section<'a, 'i>> {
        let field = parent.field_of(key);
        match Self::item(parent, key) {
            Some((DeValue::Table(table), span)) => Some(Section { field, table, span }),
            Some((other, span)) => {
                self.wrong_type(&span, &field, "a table", other);
                None
            }
            None => {
                if required {
                    let help = Some(format!("add a [{field}] table"));
                    self.error(&parent.span, &field, "is missing", help);
                }
                None
            }
        }
    }

    /// An optional string.
    pub(crate) fn string(&mut self, section: &Section<'_, '_>, key: &str) -> Option<At<String>> {
        match Self::item(section, key)? {
            (DeValue::String(text), span) => Some(At {
                value: text.to_string(),
                span,
            }),
            (other, span) => {
                self.wrong_type(&span, &section.field_of(key), "a string", other);
                None
            }
        }
    }

    /// A required string; `example` is shown in the fix when it is missing.
    pub(crate) fn required_string(
        &mut self,
        section: &Section<'_, '_>,
        key: &str,
        example: &str,
    ) -> Option<At<String>> {
        if section.table.get(key).is_none() {
            self.missing(section, key, example);
            return None;
        }
        self.string(section, key)
    }

    /// An optional boolean.
    pub(crate) fn bool(&mut self, section: &Section<'_, '_>, key: &str) -> Option<At<bool>> {
        match Self::item(section, key)? {
            (DeValue::Boolean(flag), span) => Some(At { value: *flag, span }),
            (other, span) => {
                self.wrong_type(&span, &section.field_of(key), "true or false", other);
                None
            }
        }
    }

    /// An optional non-negative integer.
    pub(crate) fn integer(&mut self, section: &Section<'_, '_>, key: &str) -> Option<At<u64>> {
        match Self::item(section, key)? {
            (DeValue::Integer(integer), span) => {
                let parsed =
                    u64::from_str_radix(&integer.as_str().replace('_', ""), integer.radix());
                match parsed {
                    Ok(value) => Some(At { value, span }),
                    Err(_) => {
                        let field = section.field_of(key);
                        self.error(
                            &span,
                            &field,
                            format!("{} is not a non-negative integer", integer.as_str()),
                            None,
                        );
                        None
                    }
                }
            }
            (other, span) => {
                self.wrong_type(&span, &section.field_of(key), "an integer", other);
                None
            }
        }
    }

    /// An optional array of strings; items of another type are reported and skipped.
    pub(crate) fn string_list(
        &mut self,
        section: &Section<'_, '_>,
        key: &str,
    ) -> Option<Vec<At<String>>> {
        let field = section.field_of(key);
        match Self::item(section, key)? {
            (DeValue::Array(items), _) => {
                let mut strings = Vec::new();
                for (position, item) in items.iter().enumerate() {
                    match item.get_ref() {
                        DeValue::String(text) => strings.push(At {
                            value: text.to_string(),
                            span: item.span(),
                        }),
                        other => self.wrong_type(
                            &item.span(),
                            &format!("{field}[{position}]"),
                            "a string",
                            other,
                        ),
                    }
                }
                Some(strings)
            }
            (other, span) => {
                self.wrong_type(&span, &field, "an array of strings", other);
                None
            }
        }
    }

    /// An optional table whose values are all strings, as (key, value) pairs in key order.
    pub(crate) fn string_map(
        &mut self,
        section: &Section<'_, '_>,
        key: &str,
    ) -> Vec<(At<String>, At<String>)> {
        let Some(inner) = self.section(section, key, false) else {
            return Vec::new();
        };
        let mut pairs = Vec::new();
        for (name, value) in inner.table.iter() {
            let field = inner.field_of(name.get_ref());
            match value.get_ref() {
                DeValue::String(text) => pairs.push((
                    At {
                        value: name.get_ref().to_string(),
                        span: name.span(),
                    },
                    At {
                        value: text.to_string(),
                        span: value.span(),
                    },
                )),
                other => self.wrong_type(&value.span(), &field, "a string", other),
            }
        }
        pairs
    }

    /// An optional array of tables (`[[key]]`), each as a section named `key[i]`.
    pub(crate) fn table_array<'a, 'i>(
        &mut self,
        section: &Section<'a, 'i>,
        key: &str,
    ) -> Vec<Section<'a, 'i>> {
        let field = section.field_of(key);
        match Self::item(section, key) {
            None => Vec::new(),
            Some((DeValue::Array(items), _)) => {
                let mut sections = Vec::new();
                for (position, item) in items.iter().enumerate() {
                    let item_field = format!("{field}[{position}]");
                    match item.get_ref() {
                        DeValue::Table(table) => sections.push(Section {
                            field: item_field,
                            table,
                            span: item.span(),
                        }),
                        other => self.wrong_type(&item.span(), &item_field, "a table", other),
                    }
                }
                sections
            }
            Some((other, span)) => {
                let help = Some(format!("write each entry as a [[{field}]] table"));
                self.error(
                    &span,
                    &field,
                    format!("must be an array of tables, not {}", describe(other)),
                    help,
                );
                Vec::new()
            }
        }
    }
}

/// "a string", "an integer", ... for messages about wrong types.
fn describe(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}
