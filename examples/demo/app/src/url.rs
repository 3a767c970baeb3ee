//! Just enough URL parsing for `postgres://` and `redis://` connection strings.

use anyhow::{bail, Context, Result};

/// The parts of `scheme://[user[:password]@]host[:port][/path][?query]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub scheme: String,
    pub user: Option<String>,
    pub password: Option<String>,
    /// Host name or address, without the brackets of an IPv6 literal.
    pub host: String,
    pub port: Option<u16>,
    /// The path without its leading `/`, percent-decoded (a database name or number).
    pub path: String,
    pub query: Option<String>,
}

impl Url {
    pub fn parse(input: &str) -> Result<Url> {
        let (scheme, rest) = input.split_once("://").with_context(|| {
            format!(
                "URL {:?} has no scheme (expected scheme://...)",
                redact(input)
            )
        })?;
        if scheme.is_empty()
            || !scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        {
            bail!("URL {:?} has an invalid scheme", redact(input));
        }
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q.to_string())),
            None => (rest, None),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        // The password may itself contain '@' if not encoded: the host is after the last one.
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(info) => match info.split_once(':') {
                Some((u, p)) => (non_empty(percent_decode(u)?), Some(percent_decode(p)?)),
                None => (non_empty(percent_decode(info)?), None),
            },
        };
        let (host, port) = split_host_port(hostport)
            .with_context(|| format!("URL {:?} has an invalid host or port", redact(input)))?;
        if host.is_empty() {
            bail!("URL {:?} has no host", redact(input));
        }
        Ok(Url {
            scheme: scheme.to_ascii_lowercase(),
            user,
            password,
            host,
            port,
            path: percent_decode(path)?,
            query,
        })
    }
}

fn non_empty(s: String) -> Option<String> {
    if s.is_empty() {
        None
    } else {
        Some(s)
    }
}

fn split_host_port(hostport: &str) -> Result<(String, Option<u16>)> {
    if let Some(inner) = hostport.strip_prefix('[') {
        let (host, after) = inner.split_once(']').context("unclosed '[' in IPv6 host")?;
        let port = match after {
            "" => None,
            p => Some(parse_port(
                p.strip_prefix(':').context("junk after IPv6 host")?,
            )?),
        };
        return Ok((host.to_string(), port));
    }
    match hostport.rsplit_once(':') {
        Some((h, p)) => Ok((h.to_string(), Some(parse_port(p)?))),
        None => Ok((hostport.to_string(), None)),
    }
}

fn parse_port(p: &str) -> Result<u16> {
    p.parse::<u16>()
        .with_context(|| format!("invalid port {p:?}"))
}

/// Decodes `%XX` escapes (the `percent-encoding` crate); a `%` without two hex digits
/// after it is an error, and so is a result that is not UTF-8.
pub fn percent_decode(s: &str) -> Result<String> {
    let b = s.as_bytes();
    let escape_ok = |i: usize| {
        b.get(i + 1..i + 3)
            .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
    };
    if let Some(i) = (0..b.len()).find(|&i| b[i] == b'%' && !escape_ok(i)) {
        bail!("invalid %-escape at byte {i}");
    }
    let decoded = percent_encoding::percent_decode_str(s).decode_utf8();
    Ok(decoded.context("%-decoded text is not UTF-8")?.into_owned())
}

/// The URL with any password replaced, for error messages and logs.
pub fn redact(input: &str) -> String {
    let Some((scheme, rest)) = input.split_once("://") else {
        return input.to_string();
    };
    // Use the last '@' so that an unencoded '/' or '@' in a password is hidden too.
    match rest.rfind('@') {
        Some(at) => match rest[..at].split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{}", &rest[at + 1..]),
            None => input.to_string(),
        },
        None => input.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_postgres_url() {
        let u = Url::parse("postgres://demo:s3cret@db:5432/demo").unwrap();
        assert_eq!(u.scheme, "postgres");
        assert_eq!(u.user.as_deref(), Some("demo"));
        assert_eq!(u.password.as_deref(), Some("s3cret"));
        assert_eq!(u.host, "db");
        assert_eq!(u.port, Some(5432));
        assert_eq!(u.path, "demo");
        assert_eq!(u.query, None);
    }

    #[test]
    fn parses_a_bare_redis_url() {
        let u = Url::parse("redis://redis").unwrap();
        assert_eq!(u.scheme, "redis");
        assert_eq!((u.user, u.password), (None, None));
        assert_eq!(u.host, "redis");
        assert_eq!(u.port, None);
        assert_eq!(u.path, "");
    }

    #[test]
    fn redis_password_without_user() {
        let u = Url::parse("redis://:pw@127.0.0.1:6380/2").unwrap();
        assert_eq!(u.user, None);
        assert_eq!(u.password.as_deref(), Some("pw"));
        assert_eq!(u.port, Some(6380));
        assert_eq!(u.path, "2");
    }

    #[test]
    fn decodes_percent_escapes_and_keeps_the_query() {
        let u = Url::parse("postgres://us%40er:p%3Aw%2F@db/my%20db?sslmode=disable").unwrap();
        assert_eq!(u.user.as_deref(), Some("us@er"));
        assert_eq!(u.password.as_deref(), Some("p:w/"));
        assert_eq!(u.path, "my db");
        assert_eq!(u.query.as_deref(), Some("sslmode=disable"));
    }

    #[test]
    fn unencoded_at_in_password_uses_last_at() {
        let u = Url::parse("postgres://demo:a@b@db:5432/x").unwrap();
        assert_eq!(u.password.as_deref(), Some("a@b"));
        assert_eq!(u.host, "db");
    }

    #[test]
    fn ipv6_hosts() {
        let u = Url::parse("redis://[::1]:6379").unwrap();
        assert_eq!(u.host, "::1");
        assert_eq!(u.port, Some(6379));
        let u = Url::parse("redis://[::1]").unwrap();
        assert_eq!(u.port, None);
    }

    #[test]
    fn rejects_bad_urls() {
        assert!(Url::parse("db:5432/demo").is_err());
        assert!(Url::parse("postgres://db:notaport/demo").is_err());
        assert!(Url::parse("postgres://db:70000/demo").is_err());
        assert!(Url::parse("postgres:///demo").is_err());
        assert!(Url::parse("postgres://u:p%zz@db/x").is_err());
        assert!(Url::parse("redis://[::1").is_err());
    }

    #[test]
    fn percent_escapes_must_be_whole_and_utf8() {
        assert_eq!(percent_decode("50%25%20off").unwrap(), "50% off");
        assert_eq!(percent_decode("m%C3%BCller").unwrap(), "müller");
        assert!(percent_decode("p%4").is_err(), "truncated");
        assert!(percent_decode("p%").is_err(), "truncated");
        assert!(percent_decode("p%ff").is_err(), "not UTF-8");
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("postgres://demo:s3cret@db:5432/demo"),
            "postgres://demo:***@db:5432/demo"
        );
        assert_eq!(redact("redis://redis:6379"), "redis://redis:6379");
        assert_eq!(redact("not a url"), "not a url");
        // A slash in an unencoded password must not leak the rest of it.
        assert!(!redact("postgres://demo:pa/ss@db/x").contains("ss@"));
    }
}
