//! Redis URLs, taken apart once: for connecting (through redis-rs's
//! parser) and for messages, where a password never shows. The server
//! crate hides passwords in its logs with the same functions.

use redis::{ConnectionInfo, IntoConnectionInfo};

use crate::error::{Error, Result};

/// A URL's user-info password and query parameters, as written.
struct Parts<'a> {
    /// Everything before the query.
    base: &'a str,
    /// Where the password sits in `base`, if the URL has one.
    password: Option<(usize, usize)>,
    /// `name=value` pairs of the query, in order.
    query: Vec<(&'a str, Option<&'a str>)>,
}

fn parts(url: &str) -> Parts<'_> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, query),
        None => (url, ""),
    };
    let password = match (base.find("://"), base.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme + 3 => base[scheme + 3..at]
            .find(':')
            .map(|colon| (scheme + 3 + colon + 1, at)),
        _ => None,
    };
    let query = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (p, None),
        })
        .collect();
    Parts {
        base,
        password,
        query,
    }
}

fn is_password_param(name: &str) -> bool {
    name.eq_ignore_ascii_case("pass") || name.eq_ignore_ascii_case("password")
}

/// `url` with its password replaced by `***`, for messages and logs: the
/// `user:password@` part, and `pass=` / `password=` query parameters (unix
/// sockets).
///
/// ```
/// assert_eq!(
///     sessiondb::redact_url("redis://app:s3cret@db:6379/2"),
///     "redis://app:***@db:6379/2"
/// );
/// ```
pub fn redact_url(url: &str) -> String {
    let p = parts(url);
    let mut out = match p.password {
        Some((from, to)) => format!("{}***{}", &p.base[..from], &p.base[to..]),
        None => p.base.to_owned(),
    };
    if !p.query.is_empty() {
        let params: Vec<String> = p
            .query
            .iter()
            .map(|(name, value)| match value {
                Some(_) if is_password_param(name) => format!("{name}=***"),
                Some(value) => format!("{name}={value}"),
                None => (*name).to_owned(),
            })
            .collect();
        out = format!("{out}?{}", params.join("&"));
    }
    out
}

/// The passwords written in `url` (of its user info and its query), each as
/// written and percent-decoded, so that a message quoting either can be
/// scrubbed.
///
/// ```
/// assert_eq!(
///     sessiondb::url_passwords("redis://app:p%40ss@db:6379"),
///     vec!["p%40ss".to_owned(), "p@ss".to_owned()]
/// );
/// ```
pub fn url_passwords(url: &str) -> Vec<String> {
    let p = parts(url);
    let mut found: Vec<String> = p
        .password
        .map(|(from, to)| p.base[from..to].to_owned())
        .into_iter()
        .chain(
            p.query
                .iter()
                .filter(|(name, _)| is_password_param(name))
                .filter_map(|(_, value)| value.map(str::to_owned)),
        )
        .collect();
    let decoded: Vec<String> = found.iter().map(|s| percent_decode(s)).collect();
    found.extend(decoded);
    found.retain(|s| !s.is_empty());
    found.sort();
    found.dedup();
    found
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `url` for connecting; a bad one is `InvalidConfig` of `setting`,
/// quoting the URL without its password.
pub(crate) fn connection_info(url: &str, setting: &'static str) -> Result<ConnectionInfo> {
    url.into_connection_info()
        .map_err(|e| bad_url(url, setting, e))
}

/// `InvalidConfig` of `setting` about `url`, without its password.
fn bad_url(url: &str, setting: &'static str, problem: impl std::fmt::Display) -> Error {
    Error::InvalidConfig {
        setting,
        problem: format!("{}: {problem}", redact_url(url)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_messages() {
        for (url, shown) in [
            (
                "redis://app:s3cret@db.local:6379/2",
                "redis://app:***@db.local:6379/2",
            ),
            ("rediss://:s3cret@db.local", "rediss://:***@db.local"),
            ("redis://app@db.local", "redis://app@db.local"),
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            (
                "redis+unix:///run/r.sock?db=2&pass=s3cret",
                "redis+unix:///run/r.sock?db=2&pass=***",
            ),
            ("redis://a:b@c@host", "redis://a:***@host"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn passwords_are_found_as_written_and_decoded() {
        assert_eq!(
            url_passwords("redis://u:p%2Fw@h?password=x%20y&db=1"),
            vec!["p%2Fw", "p/w", "x y", "x%20y"]
        );
        assert!(url_passwords("redis://u@h/0").is_empty());
        assert!(url_passwords("redis://:@h").is_empty());
    }

    #[test]
    fn a_bad_url_is_invalid_config_without_its_password() {
        let e = connection_info("http://u:s3cret@h", "redis_url").unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("redis_url") && !text.contains("s3cret"),
            "{text}"
        );
    }
}
