//! Prose for people goes to stderr, prefixed with the program's name
//! (`berth-swap: error: ...`). stdout carries only the deploy document.

use std::io::Write;
use std::sync::OnceLock;

static PROG: OnceLock<String> = OnceLock::new();

/// Set once by `main`; later calls are ignored.
pub fn set_program(name: &str) {
    let _ = PROG.set(name.to_string());
}

pub fn program() -> &'static str {
    PROG.get().map(String::as_str).unwrap_or("berth")
}

fn emit(kind: Option<&str>, text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = match kind {
        Some(k) => writeln!(err, "{}: {k}: {text}", program()),
        None => writeln!(err, "{}: {text}", program()),
    };
}

/// A progress or status line.
pub fn info(text: impl AsRef<str>) {
    emit(None, text.as_ref());
}

pub fn warn(text: impl AsRef<str>) {
    emit(Some("warning"), text.as_ref());
}

pub fn error(text: impl AsRef<str>) {
    emit(Some("error"), text.as_ref());
}
