//! Progress on stderr (bytes and rate), only when stderr is a terminal and not `--quiet`.

use std::io::Write;
use std::time::{Duration, Instant};

use berth_core::human;

#[derive(Debug)]
pub struct Progress {
    enabled: bool,
    label: String,
    started: Instant,
    last: Instant,
    shown: bool,
}

impl Progress {
    pub fn new(enabled: bool, label: &str) -> Progress {
        let now = Instant::now();
        Progress {
            enabled,
            label: label.to_string(),
            started: now,
            last: now,
            shown: false,
        }
    }

    /// For a terminal on stderr, unless quiet.
    pub fn auto(label: &str) -> Progress {
        use std::io::IsTerminal;
        Progress::new(!crate::quiet() && std::io::stderr().is_terminal(), label)
    }

    pub fn update(&mut self, bytes: u64) {
        if !self.enabled || self.last.elapsed() < Duration::from_millis(250) {
            return;
        }
        self.last = Instant::now();
        self.draw(bytes);
    }

    fn draw(&mut self, bytes: u64) {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = (bytes as f64 / secs) as u64;
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r{}: {}: {} ({}/s)   ",
            berth_core::msg::program(),
            self.label,
            human::bytes(bytes),
            human::bytes(rate)
        );
        let _ = err.flush();
        self.shown = true;
    }

    pub fn finish(&mut self, bytes: u64) {
        if self.enabled && self.shown {
            self.draw(bytes);
            let _ = writeln!(std::io::stderr());
        }
        self.shown = false;
    }
}
