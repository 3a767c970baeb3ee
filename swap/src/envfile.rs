//! The project's `.env`: where compose reads the tag by itself, so that a plain
//! `docker compose up -d` (or a reboot) keeps the release berth swapped to.

use std::path::Path;

use anyhow::{Context as _, Result};
use berth_core::fsutil;

/// The value of `var` in `.env` text (the last assignment wins, as in compose).
pub fn get(text: &str, var: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| assignment(l, var))
        .next_back()
        .map(|v| unquote(v.trim()).to_string())
}

/// `text` with `var` set to `value`: every assignment of `var` replaced in place (other
/// lines, comments and order untouched), or one line appended when there is none.
pub fn set(text: &str, var: &str, value: &str) -> String {
    let mut out = String::with_capacity(text.len() + var.len() + value.len() + 2);
    let mut found = false;
    for line in text.split_inclusive('\n') {
        if assignment(line, var).is_some() {
            found = true;
            let nl = if line.ends_with('\n') { "\n" } else { "" };
            out.push_str(&format!("{var}={value}{nl}"));
        } else {
            out.push_str(line);
        }
    }
    if !found {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&format!("{var}={value}\n"));
    }
    out
}

/// Read `var` from the file at `path` (`None` when the file or the line is missing).
pub fn read_var(path: &Path, var: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| get(&t, var))
}

/// Set `var=value` in the file at `path`, atomically, keeping its mode (0644 when new),
/// marked as owned by compose project `project` (see [`crate::owner`]).
/// Returns whether anything changed.
pub fn write_var(path: &Path, var: &str, value: &str, project: &str) -> Result<bool> {
    use std::os::unix::fs::PermissionsExt;
    let (text, mode) = match std::fs::read_to_string(path) {
        Ok(t) => {
            let mode = std::fs::metadata(path)
                .map(|m| m.permissions().mode() & 0o7777)
                .unwrap_or(0o644);
            (t, mode)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (String::new(), 0o644),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let new = crate::owner::marked(&set(&text, var, value), project);
    if new == text {
        return Ok(false);
    }
    fsutil::write_atomic(path, new.as_bytes(), mode)?;
    Ok(true)
}

fn assignment<'a>(line: &'a str, var: &str) -> Option<&'a str> {
    let l = line.trim_start();
    let l = l.strip_prefix("export ").map(str::trim_start).unwrap_or(l);
    let rest = l.strip_prefix(var)?;
    let rest = rest.trim_start();
    rest.strip_prefix('=')
        .map(|v| v.trim_end_matches(['\n', '\r']))
}

fn unquote(v: &str) -> &str {
    for q in ['"', '\''] {
        if v.len() >= 2 && v.starts_with(q) && v.ends_with(q) {
            return &v[1..v.len() - 1];
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_in_place_and_keeps_the_rest() {
        let text =
            "# the demo\nPOSTGRES_PASSWORD=s3cret\nBERTH_TAG=v1\nBERTH_TAGS=x\nDEMO_HTTP_PORT=8080";
        let new = set(text, "BERTH_TAG", "v2");
        assert_eq!(
            new,
            "# the demo\nPOSTGRES_PASSWORD=s3cret\nBERTH_TAG=v2\nBERTH_TAGS=x\nDEMO_HTTP_PORT=8080"
        );
        assert_eq!(get(&new, "BERTH_TAG").as_deref(), Some("v2"));
        assert_eq!(get(&new, "BERTH_TAGS").as_deref(), Some("x"));
    }

    #[test]
    fn appends_when_missing_and_reads_quotes_and_export() {
        assert_eq!(set("A=1", "BERTH_TAG", "v2"), "A=1\nBERTH_TAG=v2\n");
        assert_eq!(set("", "BERTH_TAG", "v2"), "BERTH_TAG=v2\n");
        assert_eq!(
            get("export BERTH_TAG = \"v3\"\n", "BERTH_TAG").as_deref(),
            Some("v3")
        );
        assert_eq!(
            get("BERTH_TAG=a\nBERTH_TAG='b'\n", "BERTH_TAG").as_deref(),
            Some("b")
        );
        assert!(get("# BERTH_TAG=v1\n", "BERTH_TAG").is_none());
    }

    #[test]
    fn writes_atomically_keeping_the_mode() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(".env");
        std::fs::write(&p, "SECRET=x\nBERTH_TAG=v1\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(write_var(&p, "BERTH_TAG", "v2", "shop").unwrap());
        assert!(!write_var(&p, "BERTH_TAG", "v2", "shop").unwrap());
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "# berth: project=shop\nSECRET=x\nBERTH_TAG=v2\n"
        );
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
