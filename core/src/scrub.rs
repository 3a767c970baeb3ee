//! Scrub secrets out of text that leaves the machine or is kept: log tails and command
//! errors that go into the document, the ledger and notifications (Telegram, Slack,
//! webhooks).
//!
//! What goes: the password of a URL (`scheme://user:PASS@host`), the value after a key that
//! names a secret (`DB_PASSWORD=…`, `api_token: …`, `"client_secret": "…"`), the value of an
//! `Authorization:` header, and any value the caller knows is secret (a service's own
//! secret environment variables). Each becomes `***`. Scrubbing twice changes nothing.

/// What a scrubbed value is replaced with.
pub const MASK: &str = "***";

/// Words that make an environment key (or a `key: value`) a secret one.
const SECRET_WORDS: &[&str] = &[
    "PASSWORD",
    "PASSWD",
    "TOKEN",
    "SECRET",
    "API_KEY",
    "APIKEY",
    "PRIVATE_KEY",
    "CREDENTIAL",
];

/// Whether an environment variable name holds a secret (`POSTGRES_PASSWORD`,
/// `TELEGRAM_BOT_TOKEN`, `AWS_SECRET_ACCESS_KEY`, `DB_PASS`). A URL's password is found by
/// its shape wherever it is, whatever the key.
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_uppercase();
    SECRET_WORDS.iter().any(|w| k.contains(w)) || k == "PASS" || k.ends_with("_PASS")
}

/// The values of `KEY=VALUE` entries (e.g. a container's `Config.Env`) whose key names a
/// secret; values shorter than 4 characters are left out (masking "1" would mask every 1).
pub fn secret_values<'a>(env: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    env.into_iter()
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, v)| is_secret_key(k) && v.len() >= 4)
        .map(|(_, v)| v.to_string())
        .collect()
}

/// `text` with every secret it shows replaced by [`MASK`]; `known` are values that are
/// secret wherever they appear.
pub fn scrub(text: &str, known: &[String]) -> String {
    let mut out = text.to_string();
    // Longest first, so a value containing a shorter one is masked whole.
    let mut known: Vec<&String> = known.iter().filter(|v| v.len() >= 4).collect();
    known.sort_by_key(|v| std::cmp::Reverse(v.len()));
    for v in known {
        out = out.replace(v.as_str(), MASK);
    }
    let out = url_passwords(&out);
    let out = authorization(&out);
    keyed_values(&out)
}

/// Scrub every string in a JSON value (a document on its way to the ledger or a webhook);
/// the JSON stays valid whatever the strings hold.
pub fn scrub_json(value: &mut serde_json::Value, known: &[String]) {
    use serde_json::Value;
    match value {
        Value::String(s) => {
            let clean = scrub(s, known);
            if clean != *s {
                *s = clean;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| scrub_json(v, known)),
        Value::Object(map) => map.values_mut().for_each(|v| scrub_json(v, known)),
        _ => {}
    }
}

/// `scheme://user:secret@host` -> `scheme://user:***@host`.
fn url_passwords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        // The authority ends at the first whitespace, quote or path start; the userinfo at
        // its last '@' (a password may itself contain '@').
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, '/' | '"' | '\'' | '\\' | '<' | '>'))
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.split_once(':') {
                    Some((user, pass)) if pass != MASK => {
                        out.push_str(user);
                        out.push(':');
                        out.push_str(MASK);
                    }
                    _ => out.push_str(userinfo),
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// `Authorization: Bearer abc` -> `Authorization: ***` (the whole value, scheme included).
fn authorization(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    while let Some(i) = lower[pos..].find("authorization") {
        let start = pos + i + "authorization".len();
        let after = &text[start..];
        let sep = after.len() - after.trim_start_matches(['"', '\'']).len();
        let after_sep = &after[sep..];
        let Some(colon) = after_sep
            .trim_start()
            .strip_prefix([':', '='])
            .map(|r| after.len() - r.len())
        else {
            out.push_str(&text[pos..start]);
            pos = start;
            continue;
        };
        out.push_str(&text[pos..start + colon]);
        let value = &text[start + colon..];
        let lead = value.len() - value.trim_start_matches([' ', '\t', '"', '\'']).len();
        out.push_str(&value[..lead]);
        let v = &value[lead..];
        let end = v
            .find(['\n', '\r', '"', '\'', '\\', ',', '}'])
            .unwrap_or(v.len());
        if !v[..end].trim().is_empty() {
            out.push_str(MASK);
        }
        pos = start + colon + lead + end;
    }
    out.push_str(&text[pos..]);
    out
}

/// `DB_PASSWORD=x`, `api_token: x`, `"client_secret": "x"` -> the value masked.
fn keyed_values(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    let mut i = 0;
    while i < bytes.len() {
        if !is_key_byte(bytes[i]) || (i > 0 && is_key_byte(bytes[i - 1])) {
            i += 1;
            continue;
        }
        let key_end = i + bytes[i..].iter().take_while(|b| is_key_byte(**b)).count();
        let key = &text[i..key_end];
        let mut j = key_end;
        if bytes.get(j) == Some(&b'"') || bytes.get(j) == Some(&b'\'') {
            j += 1;
        }
        while bytes.get(j) == Some(&b' ') {
            j += 1;
        }
        if !is_secret_key(key) || !matches!(bytes.get(j), Some(b'=' | b':')) {
            i = key_end;
            continue;
        }
        j += 1;
        while matches!(bytes.get(j), Some(b' ' | b'\t')) {
            j += 1;
        }
        let quote = match bytes.get(j) {
            Some(q @ (b'"' | b'\'')) => {
                j += 1;
                Some(*q)
            }
            _ => None,
        };
        let value_end = j + bytes[j..]
            .iter()
            .take_while(|b| match quote {
                Some(q) => **b != q && **b != b'\n',
                None => {
                    !b.is_ascii_whitespace()
                        && !matches!(**b, b',' | b';' | b'}' | b'&' | b'"' | b'\'' | b'\\')
                }
            })
            .count();
        let value = &text[j..value_end];
        // A URL value keeps its shape (its password is masked by `url_passwords`).
        if !value.is_empty() && value != MASK && !value.contains("://") {
            out.push_str(&text[pos..j]);
            out.push_str(MASK);
            pos = value_end;
        }
        i = value_end.max(key_end);
    }
    out.push_str(&text[pos..]);
    out
}

fn is_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: &str) -> String {
        scrub(t, &[])
    }

    #[test]
    fn url_passwords_are_masked_even_with_at_and_slash_inside() {
        assert_eq!(
            s("could not connect to postgresql://app:s3cr%2Ft@db:5432/shop"),
            "could not connect to postgresql://app:***@db:5432/shop"
        );
        assert_eq!(s("redis://:p@ss@cache:6379"), "redis://:***@cache:6379");
        assert_eq!(s("see https://example.com/x"), "see https://example.com/x");
        assert_eq!(s("https://user@host/"), "https://user@host/");
    }

    #[test]
    fn keyed_values_are_masked() {
        assert_eq!(
            s("POSTGRES_PASSWORD=hunter2 ok"),
            "POSTGRES_PASSWORD=*** ok"
        );
        assert_eq!(s("api_token: abc123, next"), "api_token: ***, next");
        assert_eq!(
            s(r#"{"client_secret": "xyz", "name": "a"}"#),
            r#"{"client_secret": "***", "name": "a"}"#
        );
        assert_eq!(s("BOT_TOKEN='a b c'"), "BOT_TOKEN='***'");
        assert_eq!(s("token bucket refilled"), "token bucket refilled");
        assert_eq!(s("passed: 3"), "passed: 3");
        assert_eq!(
            s("DATABASE_URL=postgres://u:pw@h/db"),
            "DATABASE_URL=postgres://u:***@h/db"
        );
    }

    #[test]
    fn authorization_values_are_masked() {
        assert_eq!(
            s("Authorization: Bearer eyJhbGci.x.y\nnext line"),
            "Authorization: ***\nnext line"
        );
        assert_eq!(
            s(r#"{"authorization":"Basic dTpw"}"#),
            r#"{"authorization":"***"}"#
        );
        assert_eq!(s("no authorization needed"), "no authorization needed");
    }

    #[test]
    fn known_values_are_masked_anywhere() {
        let known = secret_values([
            "POSTGRES_PASSWORD=correct-horse",
            "POSTGRES_USER=app",
            "X_PASSWORD=1",
        ]);
        assert_eq!(known, vec!["correct-horse".to_string()]);
        assert_eq!(
            scrub("FATAL: login failed, tried correct-horse", &known),
            "FATAL: login failed, tried ***"
        );
    }

    #[test]
    fn json_stays_valid() {
        let mut v = serde_json::json!({
            "error": "DB_PASSWORD=a\"b c postgresql://u:p@h/d",
            "list": ["Authorization: Bearer zzz"],
            "n": 3
        });
        scrub_json(&mut v, &[]);
        let text = v.to_string();
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back["n"], 3);
        assert!(!text.contains("u:p@") && !text.contains("zzz"), "{text}");
        assert_eq!(back["list"][0], "Authorization: ***");
    }

    #[test]
    fn scrubbing_is_idempotent() {
        for t in [
            "postgresql://app:pw@db/x POSTGRES_PASSWORD=x Authorization: Bearer t",
            r#"{"api_token":"abc"}"#,
        ] {
            let once = s(t);
            assert_eq!(s(&once), once, "{t}");
            assert!(!once.contains("pw@") && !once.contains("abc"), "{once}");
        }
    }
}
