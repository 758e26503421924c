//! Problems found in user input, each pinned to a file, line and column, with the field and a fix.

use std::fmt;

use crate::text::Escaped;

/// One problem in a spec: where it is, which field, what is wrong and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file as the user named it (for example `images/x.toml`).
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, counted in characters.
    pub column: usize,
    /// The dotted field path, for example `image.name` or `system.files[1].path`.
    pub field: String,
    /// What is wrong, starting with the offending value where there is one.
    pub message: String,
    /// How to fix it, when there is a concrete suggestion.
    pub help: Option<String>,
}

/// One line: `file:line:col: field message; help`, with control characters escaped.
impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Escaped, so that one diagnostic is one line whatever the spec holds.
        write!(f, "{}:{}:{}: ", Escaped(&self.file), self.line, self.column)?;
        if !self.field.is_empty() {
            write!(f, "{} ", Escaped(&self.field))?;
        }
        write!(f, "{}", Escaped(&self.message))?;
        if let Some(help) = &self.help {
            write!(f, "; {}", Escaped(help))?;
        }
        Ok(())
    }
}

/// Every problem found in one spec, in source order. Validation never stops at the first one.
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, diagnostic) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{diagnostic}")?;
        }
        Ok(())
    }
}

/// Turns byte offsets into 1-based line and character columns, each in constant time (a spec
/// with a hundred thousand problems on one long line is positioned in linear time).
#[derive(Debug)]
pub(crate) struct LineIndex {
    line_starts: Vec<usize>,
    /// Characters before each [`CHECKPOINT`]-byte block of the source.
    chars_before_block: Vec<usize>,
}

/// Bytes per block of [`LineIndex::chars_before_block`].
const CHECKPOINT: usize = 256;

/// Whether `byte` starts a character (is not a UTF-8 continuation byte).
fn starts_char(byte: &u8) -> bool {
    byte & 0xC0 != 0x80
}

impl LineIndex {
    pub(crate) fn new(source: &str) -> LineIndex {
        let mut line_starts = vec![0];
        line_starts.extend(source.match_indices('\n').map(|(offset, _)| offset + 1));
        let mut chars_before_block = Vec::with_capacity(source.len() / CHECKPOINT + 1);
        let mut chars = 0;
        for block in source.as_bytes().chunks(CHECKPOINT) {
            chars_before_block.push(chars);
            chars += block.iter().filter(|byte| starts_char(byte)).count();
        }
        chars_before_block.push(chars);
        LineIndex {
            line_starts,
            chars_before_block,
        }
    }

    /// Characters in `source[..offset]`.
    fn chars_before(&self, source: &str, offset: usize) -> usize {
        let block = offset / CHECKPOINT;
        let start = block * CHECKPOINT;
        self.chars_before_block[block]
            + source.as_bytes()[start..offset]
                .iter()
                .filter(|byte| starts_char(byte))
                .count()
    }

    /// The line and column of `offset` in `source`; offsets past the end land on the last position.
    pub(crate) fn position(&self, source: &str, offset: usize) -> (usize, usize) {
        let offset = offset.min(source.len());
        let line = self.line_starts.partition_point(|&start| start <= offset) - 1;
        let line_start = self.line_starts[line];
        let column = self.chars_before(source, offset) - self.chars_before(source, line_start);
        (line + 1, column + 1)
    }
}

/// The closest of `candidates` to `word`, when it is close enough to be a likely typo.
pub(crate) fn did_you_mean<'c>(word: &str, candidates: &[&'c str]) -> Option<&'c str> {
    let word = word.to_ascii_lowercase();
    let close = candidates
        .iter()
        .map(|candidate| (edit_distance(&word, candidate), *candidate))
        .filter(|(distance, candidate)| *distance <= (candidate.len() / 3).max(1))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate);
    // A shortened key (`sha` for `sha256`) is far by edit distance but plainly meant.
    close.or_else(|| {
        candidates
            .iter()
            .copied()
            .find(|candidate| word.len() >= 3 && candidate.starts_with(word.as_str()))
    })
}

/// Levenshtein distance over characters; inputs are short keys, so the quadratic cost is fine.
fn edit_distance(left: &str, right: &str) -> usize {
    let right: Vec<char> = right.chars().collect();
    let mut previous: Vec<usize> = (0..=right.len()).collect();
    for (i, left_char) in left.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, right_char) in right.iter().enumerate() {
            let substitution = previous[j] + usize::from(left_char != *right_char);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[right.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_characters_not_bytes() {
        let source = "a = 1\nb = \"é\" x\n";
        let index = LineIndex::new(source);
        assert_eq!(index.position(source, 0), (1, 1));
        assert_eq!(index.position(source, 6), (2, 1));
        let x = source.find('x').unwrap();
        assert_eq!(index.position(source, x), (2, 9));
        assert_eq!(index.position(source, 10_000), (3, 1));
    }

    #[test]
    fn suggestions_are_close_matches_only() {
        assert_eq!(
            did_you_mean("verison", &["version", "source"]),
            Some("version")
        );
        assert_eq!(
            did_you_mean("pakages", &["packages", "files"]),
            Some("packages")
        );
        assert_eq!(did_you_mean("zzz", &["packages", "files"]), None);
        assert_eq!(did_you_mean("sha", &["version", "sha256"]), Some("sha256"));
    }
}
