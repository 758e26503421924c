//! List queries: label selectors, field filters, `sort` and pagination, applied to rendered JSON objects.
//!
//! Working on the rendered objects keeps one implementation for every list endpoint: a filter on
//! `name` compares the `name` field the client will see, a sort on `created` compares what is sent.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::error::ApiError;

/// The query string, in order, with repeated keys kept.
#[derive(Debug, Default, Clone)]
pub(crate) struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    pub(crate) fn parse(raw: Option<&str>) -> Query {
        let pairs = raw
            .map(|raw| {
                url::form_urlencoded::parse(raw.as_bytes())
                    .map(|(key, value)| (key.into_owned(), value.into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        Query { pairs }
    }

    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
    }

    pub(crate) fn all(&self, key: &str) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
            .collect()
    }
}

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    Absent(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

/// A parsed `label_selector`: every requirement must hold (comma means AND).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Selector {
    requirements: Vec<Requirement>,
}

fn selector_error(selector: &str, why: &str) -> ApiError {
    ApiError::invalid_field(
        "label_selector",
        format!("invalid label_selector '{selector}': {why}"),
    )
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(selector: &str) -> Result<Vec<&str>, &'static str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (index, character) in selector.char_indices() {
        match character {
            '(' => depth += 1,
            ')' => depth = depth.checked_sub(1).ok_or("unbalanced parenthesis")?,
            ',' if depth == 0 => {
                parts.push(&selector[start..index]);
                start = index + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unbalanced parenthesis");
    }
    parts.push(&selector[start..]);
    Ok(parts)
}

fn valid_key(key: &str) -> bool {
    !key.is_empty() && super::checks::label_key_problem(key).is_none()
}

fn parse_set(rest: &str) -> Result<Vec<String>, &'static str> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|rest| rest.strip_suffix(')'))
        .ok_or("a set must be written as (a,b)")?;
    let values: Vec<String> = inner
        .split(',')
        .map(|value| value.trim().to_owned())
        .collect();
    if values.iter().any(|value| value.is_empty()) {
        return Err("empty value in a set");
    }
    Ok(values)
}

impl Selector {
    pub(crate) fn parse(selector: &str) -> Result<Selector, ApiError> {
        let parts = split_top_level(selector).map_err(|why| selector_error(selector, why))?;
        let mut requirements = Vec::new();
        for part in parts {
            let part = part.trim();
            if part.is_empty() {
                return Err(selector_error(selector, "empty requirement"));
            }
            let requirement =
                parse_requirement(part).map_err(|why| selector_error(selector, why))?;
            requirements.push(requirement);
        }
        Ok(Selector { requirements })
    }

    pub(crate) fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements
            .iter()
            .all(|requirement| match requirement {
                Requirement::Equals(key, value) => labels.get(key) == Some(value),
                Requirement::NotEquals(key, value) => labels.get(key) != Some(value),
                Requirement::Exists(key) => labels.contains_key(key),
                Requirement::Absent(key) => !labels.contains_key(key),
                Requirement::In(key, values) => labels.get(key).is_some_and(|v| values.contains(v)),
                Requirement::NotIn(key, values) => {
                    labels.get(key).is_none_or(|v| !values.contains(v))
                }
            })
    }
}

fn parse_requirement(part: &str) -> Result<Requirement, &'static str> {
    if let Some(key) = part.strip_prefix('!') {
        let key = key.trim();
        return if valid_key(key) {
            Ok(Requirement::Absent(key.to_owned()))
        } else {
            Err("invalid key")
        };
    }
    let checked_value = |value: &str| -> Result<String, &'static str> {
        let value = value.trim();
        if super::checks::label_value_problem(value).is_some() {
            return Err("invalid value");
        }
        Ok(value.to_owned())
    };
    let checked_key = |key: &str| -> Result<String, &'static str> {
        let key = key.trim();
        if valid_key(key) {
            Ok(key.to_owned())
        } else {
            Err("invalid key")
        }
    };
    if let Some((key, value)) = part.split_once("!=") {
        return Ok(Requirement::NotEquals(
            checked_key(key)?,
            checked_value(value)?,
        ));
    }
    if let Some((key, value)) = part.split_once("==") {
        return Ok(Requirement::Equals(
            checked_key(key)?,
            checked_value(value)?,
        ));
    }
    if let Some((key, value)) = part.split_once('=') {
        return Ok(Requirement::Equals(
            checked_key(key)?,
            checked_value(value)?,
        ));
    }
    if let Some((key, rest)) = part.split_once(" notin ") {
        return Ok(Requirement::NotIn(checked_key(key)?, parse_set(rest)?));
    }
    if let Some((key, rest)) = part.split_once(" in ") {
        return Ok(Requirement::In(checked_key(key)?, parse_set(rest)?));
    }
    Ok(Requirement::Exists(checked_key(part)?))
}

/// Labels of a rendered object.
pub(crate) fn labels_of(object: &Value) -> BTreeMap<String, String> {
    object
        .get("labels")
        .and_then(Value::as_object)
        .map(|labels| {
            labels
                .iter()
                .map(|(key, value)| (key.clone(), value.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// Keeps the objects that match `label_selector`, if one was given.
pub(crate) fn filter_by_selector(items: &mut Vec<Value>, query: &Query) -> Result<(), ApiError> {
    if let Some(raw) = query.get("label_selector") {
        let selector = Selector::parse(raw)?;
        items.retain(|item| selector.matches(&labels_of(item)));
    }
    Ok(())
}

/// Keeps the objects whose `field` equals one of the values given for `parameter` (repeatable).
/// `allowed`, when given, is the enumeration the parameter must come from.
pub(crate) fn filter_by_field(
    items: &mut Vec<Value>,
    query: &Query,
    parameter: &str,
    field: &str,
    allowed: Option<&[&str]>,
) -> Result<(), ApiError> {
    let wanted = query.all(parameter);
    if wanted.is_empty() {
        return Ok(());
    }
    if let Some(allowed) = allowed
        && let Some(bad) = wanted.iter().find(|value| !allowed.contains(value))
    {
        return Err(ApiError::invalid_field(
            parameter,
            format!("'{bad}' is not one of {}", allowed.join(", ")),
        ));
    }
    items.retain(|item| {
        item.get(field)
            .and_then(Value::as_str)
            .is_some_and(|value| wanted.contains(&value))
    });
    Ok(())
}

fn compare_json(left: &Value, right: &Value) -> Ordering {
    match (left, right) {
        (Value::Number(left), Value::Number(right)) => {
            let left = left.as_f64().unwrap_or(0.0);
            let right = right.as_f64().unwrap_or(0.0);
            left.partial_cmp(&right).unwrap_or(Ordering::Equal)
        }
        (Value::String(left), Value::String(right)) => left.cmp(right),
        // Nulls (e.g. snapshot names) sort as the largest value, as PostgreSQL does by default:
        // last in ascending order, first in descending order.
        (Value::Null, Value::Null) => Ordering::Equal,
        (Value::Null, _) => Ordering::Greater,
        (_, Value::Null) => Ordering::Less,
        _ => Ordering::Equal,
    }
}

/// Sorts by the repeatable `sort=field[:asc|:desc]`, then by id; `fields` are the sortable ones.
pub(crate) fn sort(items: &mut [Value], query: &Query, fields: &[&str]) -> Result<(), ApiError> {
    let mut keys = Vec::new();
    for raw in query.all("sort") {
        let (field, descending) = match raw.split_once(':') {
            Some((field, "asc")) => (field, false),
            Some((field, "desc")) => (field, true),
            Some(_) => {
                return Err(ApiError::invalid_field(
                    "sort",
                    format!("invalid sort direction in '{raw}': use asc or desc"),
                ));
            }
            None => (raw, false),
        };
        if !fields.contains(&field) {
            return Err(ApiError::invalid_field(
                "sort",
                format!("cannot sort by '{field}': use one of {}", fields.join(", ")),
            ));
        }
        keys.push((field.to_owned(), descending));
    }
    items.sort_by(|left, right| {
        for (field, descending) in &keys {
            let null = Value::Null;
            let ordering = compare_json(
                left.get(field).unwrap_or(&null),
                right.get(field).unwrap_or(&null),
            );
            let ordering = if *descending {
                ordering.reverse()
            } else {
                ordering
            };
            if ordering != Ordering::Equal {
                return ordering;
            }
        }
        compare_json(
            left.get("id").unwrap_or(&Value::Null),
            right.get("id").unwrap_or(&Value::Null),
        )
    });
    Ok(())
}

/// The default and the maximum of `per_page`, as the API documents them.
const DEFAULT_PER_PAGE: u64 = 25;
const MAX_PER_PAGE: u64 = 50;

fn positive(query: &Query, parameter: &str, default: u64) -> Result<u64, ApiError> {
    match query.get(parameter) {
        None => Ok(default),
        Some(raw) => match raw.parse::<u64>() {
            Ok(value) if value >= 1 => Ok(value),
            _ => Err(ApiError::invalid_field(
                parameter,
                format!("'{raw}' is not a positive integer"),
            )),
        },
    }
}

/// Cuts one page out of `items` and renders `{plural: [...], meta: {pagination}}`.
pub(crate) fn paginate(plural: &str, items: Vec<Value>, query: &Query) -> Result<Value, ApiError> {
    let page = positive(query, "page", 1)?;
    let per_page = positive(query, "per_page", DEFAULT_PER_PAGE)?.min(MAX_PER_PAGE);
    let total = items.len() as u64;
    let last_page = total.div_ceil(per_page).max(1);
    let start = (page - 1).saturating_mul(per_page);
    let items: Vec<Value> = items
        .into_iter()
        .skip(usize::try_from(start).unwrap_or(usize::MAX))
        .take(usize::try_from(per_page).unwrap_or(usize::MAX))
        .collect();
    let previous_page = if page > 1 {
        json!(page.min(last_page + 1) - 1)
    } else {
        Value::Null
    };
    let next_page = if page < last_page {
        json!(page + 1)
    } else {
        Value::Null
    };
    Ok(json!({
        plural: items,
        "meta": {"pagination": {
            "page": page,
            "per_page": per_page,
            "previous_page": previous_page,
            "next_page": next_page,
            "last_page": last_page,
            "total_entries": total,
        }},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect()
    }

    #[test]
    fn selector_syntax() {
        let set = labels(&[("app", "web"), ("tier", "front"), ("example.com/x", "")]);
        let check = |selector: &str| Selector::parse(selector).map(|parsed| parsed.matches(&set));
        assert_eq!(check("app==web").ok(), Some(true));
        assert_eq!(check("app=web").ok(), Some(true));
        assert_eq!(check("app!=web").ok(), Some(false));
        assert_eq!(check("app!=db").ok(), Some(true));
        assert_eq!(check("app").ok(), Some(true));
        assert_eq!(check("!app").ok(), Some(false));
        assert_eq!(check("!missing").ok(), Some(true));
        assert_eq!(check("app in (db,web)").ok(), Some(true));
        assert_eq!(check("app notin (db,web)").ok(), Some(false));
        assert_eq!(check("missing notin (db)").ok(), Some(true));
        assert_eq!(
            check("app==web,tier in (front, back),example.com/x").ok(),
            Some(true)
        );
        assert_eq!(check("app==web,tier==back").ok(), Some(false));
        assert!(check("app in (web").is_err());
        assert!(check("app==a b").is_err());
        assert!(check("app==web,").is_err());
    }
}
