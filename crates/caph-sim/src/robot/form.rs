//! `application/x-www-form-urlencoded` bodies with the three array spellings real Robot clients send.
//!
//! `authorized_key=A&authorized_key=B`, `authorized_key[]=A&authorized_key[]=B` and
//! `authorized_key[0]=A&authorized_key[1]=B` all mean the list `[A, B]`; order is kept as sent
//! (indexed spellings are ordered by their index).

/// The most pairs of one form the request log keeps (real requests send a handful).
const LOGGED_PAIRS: usize = 16;

/// The decoded parameters of a body, in order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Form {
    pairs: Vec<(String, Option<u64>, String)>,
}

impl Form {
    pub(crate) fn parse(body: &[u8]) -> Form {
        let mut pairs = Vec::new();
        for (key, value) in url::form_urlencoded::parse(body) {
            let (name, index) = split_array_key(&key);
            pairs.push((name, index, value.into_owned()));
        }
        Form { pairs }
    }

    /// The first value of a scalar parameter (`name=` or any array spelling of it).
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(key, _, _)| key == name)
            .map(|(_, _, value)| value.as_str())
    }

    /// The pairs as sent (array keys without their brackets), for the request log; fields that
    /// can hold a secret are left out, and the log keeps a bounded record: the first
    /// [`LOGGED_PAIRS`] pairs, each cut to [`crate::http::LOGGED_TEXT_BYTES`].
    pub(crate) fn pairs_for_log(&self) -> Vec<(String, String)> {
        self.pairs
            .iter()
            .filter(|(key, _, _)| !key.contains("password"))
            .take(LOGGED_PAIRS)
            .map(|(key, _, value)| (crate::http::for_log(key), crate::http::for_log(value)))
            .collect()
    }

    /// Every value of a parameter, whatever the spelling.
    pub(crate) fn all(&self, name: &str) -> Vec<String> {
        let mut values: Vec<(usize, Option<u64>, &str)> = self
            .pairs
            .iter()
            .enumerate()
            .filter(|(_, (key, _, _))| key == name)
            .map(|(position, (_, index, value))| (position, *index, value.as_str()))
            .collect();
        // Indexed entries sort by index; the rest keep the order they came in.
        values.sort_by_key(|(position, index, _)| (index.unwrap_or(0), *position));
        values
            .into_iter()
            .map(|(_, _, value)| value.to_owned())
            .collect()
    }
}

/// `key[]` -> (`key`, None), `key[3]` -> (`key`, Some(3)), `key` -> (`key`, None).
fn split_array_key(key: &str) -> (String, Option<u64>) {
    if let Some(open) = key.find('[')
        && let Some(inner) = key[open + 1..].strip_suffix(']')
    {
        let name = key[..open].to_owned();
        if inner.is_empty() {
            return (name, None);
        }
        if let Ok(index) = inner.parse::<u64>() {
            return (name, Some(index));
        }
    }
    (key.to_owned(), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_spellings_mean_the_same_list() {
        for body in [
            "authorized_key=A&authorized_key=B",
            "authorized_key[]=A&authorized_key[]=B",
            "authorized_key%5B%5D=A&authorized_key%5B%5D=B",
            "authorized_key[1]=B&authorized_key[0]=A",
        ] {
            let form = Form::parse(body.as_bytes());
            assert_eq!(form.all("authorized_key"), vec!["A", "B"], "{body}");
        }
        let form = Form::parse(b"os=linux&authorized_key=cb%3A8b");
        assert_eq!(form.get("os"), Some("linux"));
        assert_eq!(form.all("authorized_key"), vec!["cb:8b"]);
    }
}
