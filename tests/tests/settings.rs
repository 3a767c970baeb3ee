//! Settings are checked before anything changes, the env file is data (never code), and
//! a stage that dies without writing its document after the switch still ends in a
//! rollback and a report. `scripts/deploy.sh` against the real demo stack.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use berth_e2e::clients::{Clients, Mix};
use berth_e2e::{bin, root, Stack, TestServer};
use serde_json::Value;

const TOKEN: &str = "987654:settings-secret-token";

/// `scripts/deploy.sh ARGS` in `dir`, with only the given settings (nothing leaks in
/// from the caller's environment).
fn deploy(dir: &Path, bin_dir: &Path, settings: &[(&str, &str)], args: &[&str]) -> (i32, String) {
    let mut c = Command::new(root().join("scripts/deploy.sh"));
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().to_string();
        if ["BERTH_", "DEPLOY_", "TELEGRAM_"]
            .iter()
            .any(|p| k.starts_with(p))
        {
            c.env_remove(k);
        }
    }
    c.env("BERTH_BIN_DIR", bin_dir)
        .env("BERTH_PROJECT_DIR", dir)
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::null());
    for (k, v) in settings {
        c.env(k, v);
    }
    let out = c.output().expect("deploy.sh runs");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    (out.status.code().unwrap_or(-1), stderr)
}

fn bins() -> PathBuf {
    bin("berth-swap").parent().unwrap().to_path_buf()
}

#[test]
fn deploy_help_is_the_header_comment_and_never_code() {
    let script = std::fs::read_to_string(root().join("scripts/deploy.sh")).unwrap();
    let header: Vec<String> = script
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with('#'))
        .map(|l| {
            let text = &l[1..];
            text.strip_prefix(' ').unwrap_or(text).to_string()
        })
        .collect();
    assert!(header.len() > 20, "the header comment is the help");
    let out = Command::new(root().join("scripts/deploy.sh"))
        .arg("--help")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    assert_eq!(help.lines().collect::<Vec<_>>(), header, "{help}");
    assert!(
        help.starts_with("scripts/deploy.sh -- deploy TAG"),
        "{help}"
    );
    assert!(!help.contains("pipefail") && !help.contains("()"), "{help}");
}

#[test]
fn env_file_values_are_data_and_never_run() {
    // No docker needed: all of this is refused before anything is touched.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shop");
    std::fs::create_dir(&dir).unwrap();
    let mark = tmp.path().join("executed");
    let evil = format!("PATH[$(touch {})]+1m", mark.display());
    let env_file = dir.join("deploy.test.env");
    let base: &[(&str, &str)] = &[("BERTH_PROJECT_NAME", "shop")];

    // In the env file, and in the environment: never evaluated, exit 64 naming it.
    std::fs::write(&env_file, format!("DEPLOY_LOCK_WAIT={evil}\n")).unwrap();
    let (code, err) = deploy(&dir, &bins(), base, &["--env", "test", "v2"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("DEPLOY_LOCK_WAIT"), "{err}");
    let mut with_env = base.to_vec();
    with_env.push(("DEPLOY_LOCK_WAIT", &evil));
    let (code, err) = deploy(&dir, &bins(), &with_env, &["v2"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("DEPLOY_LOCK_WAIT"), "{err}");

    // A tag that is shell code: refused by the binaries' rule.
    let tag = format!("$(touch {})", mark.display());
    let (code, err) = deploy(&dir, &bins(), base, &[&tag]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("TAG"), "{err}");
    assert!(!mark.exists(), "a value was executed");

    // Keys that change how programs run, and typos, are errors naming the key.
    for (line, key) in [
        ("PATH=/tmp/evil", "PATH"),
        ("LD_PRELOAD=/tmp/evil.so", "LD_PRELOAD"),
        ("BERTH_DOCKER=/tmp/evil", "BERTH_DOCKER"),
        ("DEPLOY_SMOKE_TIMOUT=5s", "DEPLOY_SMOKE_TIMOUT"),
    ] {
        std::fs::write(&env_file, format!("# comment\n{line}\n")).unwrap();
        let (code, err) = deploy(&dir, &bins(), base, &["--env", "test", "v2"]);
        assert_eq!(code, 64, "{line}: {err}");
        assert!(err.contains(key), "{line}: {err}");
    }

    // CRLF: stripped with a warning (DEPLOY_BACKUP=none\r is none); an inline comment
    // is part of the value, which its own check then refuses (here: a smoke URL).
    std::fs::write(
        &env_file,
        "DEPLOY_BACKUP=none\r\nDEPLOY_SMOKE_URL=http://127.0.0.1:1/ # the smoke test\r\n",
    )
    .unwrap();
    let (code, err) = deploy(&dir, &bins(), base, &["--env", "test", "v2"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("CRLF"), "{err}");
    assert!(err.contains("DEPLOY_SMOKE_URL"), "{err}");
    assert!(!err.contains("DEPLOY_BACKUP"), "{err}");

    assert!(!mark.exists(), "a value was executed");
    assert!(!dir.join(".berth").exists(), "nothing was written");
}

/// The ledger's lines, oldest first.
fn ledger(s: &Stack) -> Vec<Value> {
    std::fs::read_to_string(s.state_dir().join("releases.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A copy of the binaries' directory whose berth-healthwait checks its arguments as the
/// real one does, and then, for the real run, dies (SIGKILL) without writing a document.
fn bins_with_a_dying_smoke(dir: &Path) -> PathBuf {
    let out = dir.join("bin");
    std::fs::create_dir_all(&out).unwrap();
    for e in std::fs::read_dir(bins()).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("berth-") && !name.contains('.') && name != "berth-healthwait" {
            std::os::unix::fs::symlink(&p, out.join(&name)).unwrap();
        }
    }
    let real = bins().join("berth-healthwait");
    let script = format!(
        "#!/bin/sh\nfor a in \"$@\"; do [ \"$a\" = --check-args ] && exec '{}' \"$@\"; done\n\
         echo \"berth-healthwait: error: lost the plot with $TELEGRAM_BOT_TOKEN\" >&2\nkill -9 $$\n",
        real.display()
    );
    let w = out.join("berth-healthwait");
    std::fs::write(&w, script).unwrap();
    std::fs::set_permissions(&w, std::fs::Permissions::from_mode(0o755)).unwrap();
    out
}

#[test]
fn a_bad_setting_changes_nothing_and_a_stage_dying_after_the_switch_is_rolled_back() {
    let notify = TestServer::start(|_| (200, r#"{"ok":true}"#.into()));
    let s = Stack::new("settings");
    s.start("v1");
    let smoke = s.url("/smoke");
    let hook = notify.url("/hook");
    let api = notify.url("");
    let settings: Vec<(&str, &str)> = vec![
        ("BERTH_PROJECT_NAME", &s.project),
        ("DEPLOY_SERVICES", "web worker"),
        ("DEPLOY_WORKERS", "worker"),
        ("DEPLOY_BACKUP", "none"),
        ("BERTH_NO_BACKUP_REQUIRED", "true"),
        ("DEPLOY_MIGRATE_CMD", "migrate"),
        ("DEPLOY_SMOKE_URL", &smoke),
        ("DEPLOY_SMOKE_SUCCESSES", "1"),
        ("DEPLOY_NOTIFY", "telegram,webhook"),
        ("TELEGRAM_BOT_TOKEN", TOKEN),
        ("TELEGRAM_CHAT_ID", "4242"),
        ("BERTH_TELEGRAM_API", &api),
        ("BERTH_WEBHOOK_URL", &hook),
        ("BERTH_DRAIN", "1s"),
        ("BERTH_STOP_TIMEOUT", "5s"),
        ("BERTH_SWAP_TIMEOUT", "30s"),
    ];

    // 1. A duration without its unit: 64 naming the setting, before anything changed.
    let containers = s.container_ids();
    let dotenv = std::fs::read_to_string(s.dir.join(".env")).unwrap();
    let mut bad = settings.clone();
    bad.push(("DEPLOY_SMOKE_TIMEOUT", "60"));
    let (code, err) = deploy(&s.dir, &bins(), &bad, &["v2"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("DEPLOY_SMOKE_TIMEOUT"), "{err}");
    assert_eq!(s.container_ids(), containers, "same containers");
    assert_eq!(std::fs::read_to_string(s.dir.join(".env")).unwrap(), dotenv);
    assert!(ledger(&s).is_empty(), "no ledger line");
    assert!(
        !s.state_dir().join("deploys").exists(),
        "no deploy document"
    );
    assert!(notify.seen.lock().unwrap().is_empty(), "no notification");

    // 2. The smoke stage dies without a document after traffic moved to v2: recorded as
    // failed, rolled back (4), reported and notified; v2 is never a good release.
    let dying = bins_with_a_dying_smoke(&s.dir);
    let mix = Mix {
        clients: 4,
        path: "/".to_string(),
        max_time: Duration::from_secs(180),
        ..Mix::default()
    };
    let load = Clients::start(&s.url(""), &mix);
    let (code, err) = deploy(&s.dir, &dying, &settings, &["v2"]);
    let load = load.stop();
    assert_eq!(code, 4, "{err}");
    load.assert_all_answered_by_app("the deploy rolled back by its dying smoke stage");
    assert_eq!(s.get("/").1, "v1");
    assert_eq!(s.env_value("BERTH_TAG").as_deref(), Some("v1"));

    let lines = ledger(&s);
    let last = lines.last().expect("the report's line");
    let names: Vec<(&str, &str, i64)> = last["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["stage"].as_str().unwrap(),
                r["status"].as_str().unwrap(),
                r["exit_code"].as_i64().unwrap(),
            )
        })
        .collect();
    assert!(
        names.contains(&("smoke", "failed", 4)) && names.last() == Some(&("rollback", "ok", 4)),
        "{last}"
    );
    let smoke_error = last["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["stage"] == "smoke")
        .unwrap()["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(smoke_error.contains("lost the plot"), "{smoke_error}");
    assert!(last.get("provisional").is_none(), "{last}");
    // The swap's own line for this deploy was provisional: never a good release.
    let id = &last["deploy_id"];
    assert!(lines
        .iter()
        .filter(|l| &l["deploy_id"] == id)
        .any(|l| l["provisional"] == true));
    let history = berth_e2e::run_ok(
        berth_e2e::berth("berth-report")
            .args(["history", "--json", "--project-dir"])
            .arg(&s.dir)
            .args(["-p", &s.project]),
    );
    let history: Value = serde_json::from_slice(&history.stdout).unwrap();
    assert!(
        history
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["last_good"] != true),
        "no good release: {history}"
    );

    let ledger_text = std::fs::read_to_string(s.state_dir().join("releases.jsonl")).unwrap();
    assert!(
        !ledger_text.contains(TOKEN),
        "the token stays out of the ledger"
    );
    let bodies = notify.bodies.lock().unwrap().join("\n").to_lowercase();
    assert!(bodies.contains("rolled back"), "{bodies}");
}
