//! Numbers for people: durations and byte sizes, one way each across berth.

use std::time::Duration;

/// A time that was measured: `850ms`, `1.5s`, `10.0s`, `2m 05s`, `1h 02m` (rounded down
/// to what a reader needs).
pub fn elapsed_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{}m {:02}s", ms / 60_000, (ms % 60_000) / 1000)
    } else {
        format!("{}h {:02}m", ms / 3_600_000, (ms % 3_600_000) / 60_000)
    }
}

/// A limit or setting, as a person would write it on the command line: `300ms`, `3s`,
/// `90s`, `5m`, `2h`, `2.9s`.
pub fn limit(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        "0s".to_string()
    } else if ms < 1000 {
        format!("{ms}ms")
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// A size in IEC units: `512 B`, `1.5 KiB`, `11.8 MiB`, `2.0 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measured_times() {
        assert_eq!(elapsed_ms(850), "850ms");
        assert_eq!(elapsed_ms(1500), "1.5s");
        assert_eq!(elapsed_ms(10_000), "10.0s");
        assert_eq!(elapsed_ms(125_000), "2m 05s");
        assert_eq!(elapsed_ms(3_720_000), "1h 02m");
    }

    #[test]
    fn limits() {
        assert_eq!(limit(Duration::from_secs(3)), "3s");
        assert_eq!(limit(Duration::from_secs(300)), "5m");
        assert_eq!(limit(Duration::from_secs(90)), "90s");
        assert_eq!(limit(Duration::from_secs(7200)), "2h");
        assert_eq!(limit(Duration::from_millis(1500)), "1.5s");
        assert_eq!(limit(Duration::from_millis(20)), "20ms");
        assert_eq!(limit(Duration::ZERO), "0s");
    }

    #[test]
    fn sizes() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(12_345_678), "11.8 MiB");
        assert_eq!(bytes(2 << 30), "2.0 GiB");
    }
}
