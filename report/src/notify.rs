//! Notifications: Telegram (Bot API `sendMessage`), a JSON webhook, a Slack incoming
//! webhook. Each attempt is bounded; transport errors, 429 and 5xx are retried with
//! backoff; a notification that cannot be delivered is a warning, never a change of the
//! deploy's exit code. Tokens and webhook URLs are secrets: they are read from the
//! environment only and scrubbed from every message berth prints.

use std::time::Duration;

use berth_core::doc::Document;
use berth_core::{http, msg};
use serde_json::{json, Value};

use crate::{render, summary};

/// Where to send the news.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Channel {
    /// Telegram Bot API: TELEGRAM_BOT_TOKEN, TELEGRAM_CHAT_ID (base: BERTH_TELEGRAM_API)
    Telegram,
    /// POST the JSON summary to BERTH_WEBHOOK_URL
    Webhook,
    /// Slack incoming webhook at BERTH_SLACK_WEBHOOK_URL
    Slack,
}

impl Channel {
    pub fn name(self) -> &'static str {
        match self {
            Channel::Telegram => "telegram",
            Channel::Webhook => "webhook",
            Channel::Slack => "slack",
        }
    }
}

/// One `--notify` value: a comma-separated list of channels, possibly empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channels(pub Vec<Channel>);

/// Parse `telegram,webhook` (case-insensitive, spaces allowed; empty: none).
pub fn parse_channels(s: &str) -> Result<Channels, String> {
    use clap::ValueEnum;
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let c = Channel::from_str(part, true)
            .map_err(|_| format!("{part:?} is not a channel (telegram, webhook, slack)"))?;
        out.push(c);
    }
    Ok(Channels(out))
}

pub const TELEGRAM_API: &str = "https://api.telegram.org";
/// Telegram refuses messages longer than 4096 characters.
const TELEGRAM_MAX: usize = 4000;

/// How hard to try.
#[derive(Debug, Clone)]
pub struct Options {
    /// Bound on one attempt.
    pub timeout: Duration,
    /// Attempts in all (at least 1).
    pub attempts: u32,
    /// Pause before the second attempt; doubled before each further one.
    pub backoff: Duration,
}

/// One request ready to go: where, what, and which strings must never be shown.
#[derive(Debug, Clone)]
pub struct Request {
    pub channel: Channel,
    url: String,
    body: Value,
    secrets: Vec<String>,
}

/// Build the request for a channel from the environment (`env` looks a variable up).
/// The error names the missing variable, never a value.
pub fn request(
    channel: Channel,
    doc: &Document,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Request, String> {
    let need = |k: &str| {
        env(k)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("{k} is not set"))
    };
    // Log tails in the document were scrubbed where they were taken; scrub again on the
    // way out, in case a stage of another version did not.
    let text = scrub(&render::message(doc), &[]);
    match channel {
        Channel::Telegram => {
            let token = need("TELEGRAM_BOT_TOKEN")?;
            let chat = need("TELEGRAM_CHAT_ID")?;
            let base = env("BERTH_TELEGRAM_API")
                .filter(|b| !b.trim().is_empty())
                .unwrap_or_else(|| TELEGRAM_API.to_string());
            check_url("BERTH_TELEGRAM_API", &base)?;
            let url = format!("{}/bot{token}/sendMessage", base.trim_end_matches('/'));
            let text: String = text.chars().take(TELEGRAM_MAX).collect();
            Ok(Request {
                channel,
                secrets: secrets_of(&url, Some(&token)),
                url,
                body: json!({
                    "chat_id": chat,
                    "text": text,
                    "disable_web_page_preview": true,
                }),
            })
        }
        Channel::Webhook => {
            let url = need("BERTH_WEBHOOK_URL")?;
            check_url("BERTH_WEBHOOK_URL", &url)?;
            let mut body = summary::to_json(doc);
            berth_core::scrub::scrub_json(&mut body, &[]);
            body["text"] = Value::String(text);
            Ok(Request {
                channel,
                secrets: secrets_of(&url, None),
                url,
                body,
            })
        }
        Channel::Slack => {
            let url = need("BERTH_SLACK_WEBHOOK_URL")?;
            check_url("BERTH_SLACK_WEBHOOK_URL", &url)?;
            Ok(Request {
                channel,
                secrets: secrets_of(&url, None),
                url,
                body: json!({ "text": text }),
            })
        }
    }
}

fn check_url(var: &str, url: &str) -> Result<(), String> {
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        Ok(())
    } else {
        Err(format!("{var} is not an http(s) URL"))
    }
}

/// The whole URL, everything after its host (where webhook secrets live), and the token.
fn secrets_of(url: &str, token: Option<&str>) -> Vec<String> {
    let mut s = vec![url.to_string()];
    if let Some(rest) = url.split_once("://").map(|(_, r)| r) {
        if let Some(i) = rest.find(['/', '?']) {
            s.push(rest[i..].to_string());
            // The path without its leading slash, as some errors quote it.
            s.push(rest[i + 1..].to_string());
        }
    }
    if let Some(t) = token {
        s.push(t.to_string());
    }
    s.retain(|x| x.len() >= 6);
    // Longest first, so a secret inside another is not half-replaced.
    s.sort_by_key(|x| std::cmp::Reverse(x.len()));
    s
}

/// Replace every secret in `text` with `***`: the channels' own secrets and anything
/// shaped like one (URL passwords, `*_TOKEN=`, `Authorization:`; see berth_core::scrub).
pub fn scrub(text: &str, secrets: &[String]) -> String {
    berth_core::scrub::scrub(text, secrets)
}

/// Send one request, retrying transport errors, 429 and 5xx. The error is scrubbed.
pub fn send(agent: &ureq::Agent, req: &Request, opts: &Options) -> Result<u32, String> {
    let attempts = opts.attempts.max(1);
    let mut last = String::new();
    for i in 0..attempts {
        if i > 0 {
            std::thread::sleep(opts.backoff * 2u32.saturating_pow(i - 1));
        }
        match http::post_json(agent, &req.url, &req.body, opts.timeout) {
            Ok(r) if (200..300).contains(&r.status) => {
                if req.channel == Channel::Telegram {
                    // The Bot API answers {"ok": false, "description": ...} on refusal.
                    let ok = serde_json::from_str::<Value>(&r.body)
                        .ok()
                        .and_then(|v| v.get("ok").and_then(Value::as_bool));
                    if ok == Some(false) {
                        return Err(scrub(&format!("refused: {}", short(&r.body)), &req.secrets));
                    }
                }
                return Ok(i + 1);
            }
            Ok(r) if r.status == 429 || r.status >= 500 => {
                last = format!("HTTP {} {}", r.status, short(&r.body));
            }
            Ok(r) => {
                // A 4xx other than 429 will not get better by asking again.
                return Err(scrub(
                    &format!("HTTP {} {}", r.status, short(&r.body)),
                    &req.secrets,
                ));
            }
            Err(e) => last = e,
        }
    }
    Err(scrub(
        &format!("{} (after {attempts} attempts)", last.trim_end()),
        &req.secrets,
    ))
}

fn short(body: &str) -> String {
    let one: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    one.chars().take(200).collect()
}

/// Notify every channel (each once); warn on stderr about any that fails. Returns the
/// channels that were notified.
pub fn notify_all(
    channels: &[Channel],
    doc: &Document,
    opts: &Options,
    env: &dyn Fn(&str) -> Option<String>,
    dry_run: bool,
) -> Vec<Channel> {
    let mut chans = channels.to_vec();
    chans.sort();
    chans.dedup();
    let agent = http::agent(opts.timeout);
    let mut reqs = Vec::new();
    for c in chans {
        match request(c, doc, env) {
            Ok(r) => reqs.push(r),
            Err(e) => msg::warn(format!(
                "{} notification not sent: {e}; the exit code stays the deploy's",
                c.name()
            )),
        }
    }
    // Every channel's secrets are scrubbed from every channel's messages: a server may
    // echo anything back.
    let mut all_secrets: Vec<String> = reqs.iter().flat_map(|r| r.secrets.clone()).collect();
    all_secrets.sort_by_key(|x| std::cmp::Reverse(x.len()));
    all_secrets.dedup();
    let mut sent = Vec::new();
    for mut req in reqs {
        let c = req.channel;
        req.secrets = all_secrets.clone();
        if dry_run {
            msg::info(format!("dry run: would notify {}", c.name()));
            continue;
        }
        match send(&agent, &req, opts) {
            Ok(n) => {
                let tries = if n > 1 {
                    format!(" (attempt {n})")
                } else {
                    String::new()
                };
                msg::info(format!("notified {}{tries}", c.name()));
                sent.push(c);
            }
            Err(e) => msg::warn(format!(
                "{} notification failed: {e}; the exit code stays the deploy's",
                c.name()
            )),
        }
    }
    sent
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::tests::doc;

    #[test]
    fn channel_lists() {
        assert_eq!(parse_channels("").unwrap().0, vec![]);
        assert_eq!(
            parse_channels("Telegram, slack").unwrap().0,
            vec![Channel::Telegram, Channel::Slack]
        );
        assert!(parse_channels("pager").unwrap_err().contains("pager"));
    }

    #[test]
    fn secrets_cover_the_url_and_its_path() {
        let s = secrets_of(
            "https://hooks.slack.com/services/T000/B000/XXXXSECRET",
            None,
        );
        let err = "bad uri hooks.slack.com/services/T000/B000/XXXXSECRET and services/T000/B000/XXXXSECRET";
        let clean = scrub(err, &s);
        assert!(!clean.contains("XXXXSECRET"), "{clean}");
        let t = secrets_of(
            "http://127.0.0.1:9/bot123:ABC-secret/sendMessage",
            Some("123:ABC-secret"),
        );
        assert_eq!(scrub("x 123:ABC-secret y", &t), "x *** y");
    }

    #[test]
    fn missing_settings_name_the_variable_only() {
        let d = doc(vec![]);
        let env = |k: &str| (k == "TELEGRAM_BOT_TOKEN").then(|| "123:tok".to_string());
        let e = request(Channel::Telegram, &d, &env).unwrap_err();
        assert_eq!(e, "TELEGRAM_CHAT_ID is not set");
        let env = |k: &str| (k == "BERTH_WEBHOOK_URL").then(|| "ftp://x/secret".to_string());
        let e = request(Channel::Webhook, &d, &env).unwrap_err();
        assert!(!e.contains("secret"), "{e}");
    }
}
