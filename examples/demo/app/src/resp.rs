//! A minimal Redis client: RESP2 encoding and decoding, and the few commands the worker needs.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::url::{redact, Url};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Simple(String),
    Error(String),
    Int(i64),
    /// `None` is the nil bulk string (`$-1`).
    Bulk(Option<Vec<u8>>),
    /// `None` is the nil array (`*-1`), e.g. a blocking pop that timed out or an aborted EXEC.
    Array(Option<Vec<Value>>),
}

/// Encodes a command as an array of bulk strings.
pub fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + args.iter().map(|a| a.len() + 16).sum::<usize>());
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Deepest array nesting accepted (Redis replies here are at most two deep).
const MAX_DEPTH: usize = 8;
/// Largest bulk string or array accepted.
const MAX_LEN: i64 = 512 * 1024 * 1024;

/// Decodes one value from the start of `buf`: `Ok(None)` if more bytes are needed,
/// `Ok(Some((value, n)))` if it took `n` bytes.
pub fn decode(buf: &[u8]) -> Result<Option<(Value, usize)>> {
    decode_at(buf, 0, 0)
}

fn decode_at(buf: &[u8], pos: usize, depth: usize) -> Result<Option<(Value, usize)>> {
    if depth > MAX_DEPTH {
        bail!("RESP reply nested too deeply");
    }
    let Some((line, next)) = read_line(buf, pos) else {
        return Ok(None);
    };
    let Some((&kind, rest)) = line.split_first() else {
        bail!("empty RESP line");
    };
    let text = || std::str::from_utf8(rest).map_err(|_| anyhow!("RESP line is not UTF-8"));
    let int = || -> Result<i64> {
        let t = text()?;
        t.parse::<i64>()
            .with_context(|| format!("invalid RESP integer {t:?}"))
    };
    match kind {
        b'+' => Ok(Some((Value::Simple(text()?.to_string()), next))),
        b'-' => Ok(Some((Value::Error(text()?.to_string()), next))),
        b':' => Ok(Some((Value::Int(int()?), next))),
        b'$' => {
            let len = int()?;
            if len < 0 {
                return Ok(Some((Value::Bulk(None), next)));
            }
            if len > MAX_LEN {
                bail!("RESP bulk string too long ({len} bytes)");
            }
            let end = next + len as usize;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                bail!("RESP bulk string not terminated by CRLF");
            }
            Ok(Some((Value::Bulk(Some(buf[next..end].to_vec())), end + 2)))
        }
        b'*' => {
            let len = int()?;
            if len < 0 {
                return Ok(Some((Value::Array(None), next)));
            }
            if len > MAX_LEN {
                bail!("RESP array too long ({len} items)");
            }
            let mut items = Vec::new();
            let mut at = next;
            for _ in 0..len {
                match decode_at(buf, at, depth + 1)? {
                    Some((v, n)) => {
                        items.push(v);
                        at = n;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Value::Array(Some(items)), at)))
        }
        other => bail!("unknown RESP type byte {:?}", other as char),
    }
}

/// The line starting at `pos` (without CRLF) and the position after it.
fn read_line(buf: &[u8], pos: usize) -> Option<(&[u8], usize)> {
    let rest = buf.get(pos..)?;
    let i = rest.windows(2).position(|w| w == b"\r\n")?;
    Some((&rest[..i], pos + i + 2))
}

impl Value {
    /// Turns a Redis error reply into an `Err`.
    pub fn ok(self) -> Result<Value> {
        match self {
            Value::Error(e) => Err(anyhow!("redis error: {e}")),
            v => Ok(v),
        }
    }

    pub fn into_bulk(self) -> Result<Option<Vec<u8>>> {
        match self.ok()? {
            Value::Bulk(b) => Ok(b),
            v => bail!("expected a bulk string from redis, got {v:?}"),
        }
    }

    pub fn into_int(self) -> Result<i64> {
        match self.ok()? {
            Value::Int(i) => Ok(i),
            v => bail!("expected an integer from redis, got {v:?}"),
        }
    }
}

pub struct Redis {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// Reply read timeout: longer than any blocking command this app sends (1 s).
const READ_TIMEOUT: Duration = Duration::from_secs(5);

impl Redis {
    /// Connects to `redis://[:password@]host[:port][/db]`.
    pub fn connect(url: &str) -> Result<Redis> {
        let u = Url::parse(url)?;
        if u.scheme != "redis" {
            bail!("REDIS_URL {:?} must start with redis://", redact(url));
        }
        let port = u.port.unwrap_or(6379);
        let addrs: Vec<_> = (u.host.as_str(), port)
            .to_socket_addrs()
            .with_context(|| format!("resolving redis host {:?}", u.host))?
            .collect();
        let mut last = None;
        let mut stream = None;
        for a in &addrs {
            match TcpStream::connect_timeout(a, Duration::from_secs(2)) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let stream = match (stream, last) {
            (Some(s), _) => s,
            (None, Some(e)) => {
                return Err(e).with_context(|| format!("connecting to redis at {}:{port}", u.host))
            }
            (None, None) => bail!("redis host {:?} resolved to no address", u.host),
        };
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(READ_TIMEOUT))?;
        stream.set_write_timeout(Some(READ_TIMEOUT))?;
        let mut r = Redis {
            stream,
            buf: Vec::new(),
        };
        if let Some(pw) = &u.password {
            match &u.user {
                Some(user) => r.cmd(&[b"AUTH", user.as_bytes(), pw.as_bytes()])?,
                None => r.cmd(&[b"AUTH", pw.as_bytes()])?,
            };
        }
        if !u.path.is_empty() && u.path != "0" {
            r.cmd(&[b"SELECT", u.path.as_bytes()])?;
        }
        Ok(r)
    }

    /// Sends a command and reads its reply; an error reply is an `Err`.
    pub fn cmd(&mut self, args: &[&[u8]]) -> Result<Value> {
        self.stream
            .write_all(&encode(args))
            .context("writing to redis")?;
        self.read_reply()?.ok()
    }

    fn read_reply(&mut self) -> Result<Value> {
        loop {
            if let Some((v, n)) = decode(&self.buf)? {
                self.buf.drain(..n);
                return Ok(v);
            }
            let mut chunk = [0u8; 8192];
            match self.stream.read(&mut chunk) {
                Ok(0) => bail!("redis closed the connection"),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("reading from redis"),
            }
        }
    }

    pub fn ping(&mut self) -> Result<()> {
        match self.cmd(&[b"PING"])? {
            Value::Simple(s) if s == "PONG" => Ok(()),
            v => bail!("unexpected PING reply {v:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_commands_as_bulk_arrays() {
        assert_eq!(encode(&[b"PING"]), b"*1\r\n$4\r\nPING\r\n");
        assert_eq!(
            encode(&[b"SET", b"k", b"", b"EX", b"5"]),
            b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n$2\r\nEX\r\n$1\r\n5\r\n".to_vec()
        );
        // Binary-safe: CRLF inside an argument is just data.
        assert_eq!(encode(&[b"a\r\nb"]), b"*1\r\n$4\r\na\r\nb\r\n");
    }

    #[test]
    fn decodes_every_reply_type() {
        assert_eq!(
            decode(b"+OK\r\n").unwrap(),
            Some((Value::Simple("OK".into()), 5))
        );
        assert_eq!(
            decode(b"-ERR wrong\r\n").unwrap(),
            Some((Value::Error("ERR wrong".into()), 12))
        );
        assert_eq!(decode(b":-42\r\n").unwrap(), Some((Value::Int(-42), 6)));
        assert_eq!(
            decode(b"$3\r\njob\r\n").unwrap(),
            Some((Value::Bulk(Some(b"job".to_vec())), 9))
        );
        assert_eq!(
            decode(b"$0\r\n\r\n").unwrap(),
            Some((Value::Bulk(Some(vec![])), 6))
        );
        assert_eq!(decode(b"$-1\r\n").unwrap(), Some((Value::Bulk(None), 5)));
        assert_eq!(decode(b"*-1\r\n").unwrap(), Some((Value::Array(None), 5)));
        assert_eq!(
            decode(b"*0\r\n").unwrap(),
            Some((Value::Array(Some(vec![])), 4))
        );
    }

    #[test]
    fn decodes_nested_arrays_like_scan_and_exec_replies() {
        let raw = b"*2\r\n$1\r\n0\r\n*2\r\n$4\r\nk:a1\r\n$4\r\nk:b2\r\n";
        let (v, n) = decode(raw).unwrap().unwrap();
        assert_eq!(n, raw.len());
        assert_eq!(
            v,
            Value::Array(Some(vec![
                Value::Bulk(Some(b"0".to_vec())),
                Value::Array(Some(vec![
                    Value::Bulk(Some(b"k:a1".to_vec())),
                    Value::Bulk(Some(b"k:b2".to_vec()))
                ])),
            ]))
        );
        let exec = b"*2\r\n:3\r\n:1\r\n";
        assert_eq!(
            decode(exec).unwrap().unwrap().0,
            Value::Array(Some(vec![Value::Int(3), Value::Int(1)]))
        );
    }

    #[test]
    fn binary_bulk_strings_may_contain_crlf() {
        assert_eq!(
            decode(b"$4\r\na\r\nb\r\n").unwrap().unwrap().0,
            Value::Bulk(Some(b"a\r\nb".to_vec()))
        );
    }

    #[test]
    fn partial_input_asks_for_more_at_every_cut() {
        let raw = b"*3\r\n+OK\r\n$5\r\nhello\r\n:7\r\n";
        for cut in 0..raw.len() {
            assert_eq!(decode(&raw[..cut]).unwrap(), None, "cut at {cut}");
        }
        assert!(decode(raw).unwrap().is_some());
    }

    #[test]
    fn two_replies_in_one_buffer_are_read_one_at_a_time() {
        let raw = b":1\r\n:2\r\n";
        let (v, n) = decode(raw).unwrap().unwrap();
        assert_eq!((v, n), (Value::Int(1), 4));
        assert_eq!(decode(&raw[n..]).unwrap().unwrap().0, Value::Int(2));
    }

    #[test]
    fn malformed_replies_are_errors() {
        assert!(decode(b"?what\r\n").is_err());
        assert!(decode(b":12x\r\n").is_err());
        assert!(decode(b"$3\r\nabcd\r\n").is_err());
        assert!(decode(b"\r\n").is_err());
        let deep = "*1\r\n".repeat(MAX_DEPTH + 2) + ":1\r\n";
        assert!(decode(deep.as_bytes()).is_err());
    }

    #[test]
    fn error_replies_become_errors() {
        let e = Value::Error("WRONGTYPE bad".into())
            .ok()
            .unwrap_err()
            .to_string();
        assert!(e.contains("WRONGTYPE bad"), "{e}");
        assert_eq!(Value::Int(3).into_int().unwrap(), 3);
        assert_eq!(Value::Bulk(None).into_bulk().unwrap(), None);
        assert!(Value::Simple("OK".into()).into_int().is_err());
    }
}
