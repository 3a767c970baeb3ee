//! Rotation: grandfather-father-son over one target's backups.
//!
//! Only verified backups count toward `--keep-*`. The newest verified backup is never
//! deleted, nor one pinned by the ledger (the backup taken before the last good release).
//! An unverified backup is kept while no verified backup is newer than it, and deleted
//! once one is (a newer backup that can be trusted supersedes it).

use std::collections::BTreeSet;

use jiff::tz::TimeZone;
use jiff::Timestamp;

/// How many to keep of each kind; 0 means "this rule keeps none".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    pub last: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
}

impl Policy {
    /// No rule given: rotation does nothing.
    pub fn is_empty(&self) -> bool {
        self.last == 0 && self.daily == 0 && self.weekly == 0 && self.monthly == 0
    }
}

/// A backup as rotation sees it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub name: String,
    pub created: Timestamp,
    pub verified: bool,
    /// Why it is pinned (e.g. "pinned by the last good release 2026...-abc"), if it is.
    pub pinned: Option<String>,
}

/// Keep or delete, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub name: String,
    pub keep: bool,
    pub reasons: Vec<String>,
}

/// Decide for every candidate (returned newest first).
pub fn plan(candidates: &[Candidate], policy: &Policy) -> Vec<Decision> {
    let mut sorted: Vec<&Candidate> = candidates.iter().collect();
    sorted.sort_by(|a, b| b.created.cmp(&a.created).then(b.name.cmp(&a.name)));
    let mut reasons: Vec<Vec<String>> = vec![Vec::new(); sorted.len()];

    let verified: Vec<usize> = (0..sorted.len()).filter(|&i| sorted[i].verified).collect();
    if let Some(&newest) = verified.first() {
        reasons[newest].push("newest verified backup".into());
    }
    for (n, &i) in verified.iter().take(policy.last as usize).enumerate() {
        reasons[i].push(format!("last {} (#{})", policy.last, n + 1));
    }
    let utc = |t: Timestamp| t.to_zoned(TimeZone::UTC);
    type Key<'a> = &'a dyn Fn(Timestamp) -> String;
    let buckets: [(&str, u32, Key); 3] = [
        ("daily", policy.daily, &|t| utc(t).date().to_string()),
        ("weekly", policy.weekly, &|t| {
            let w = utc(t).date().iso_week_date();
            format!("{}-W{:02}", w.year(), w.week())
        }),
        ("monthly", policy.monthly, &|t| {
            let d = utc(t).date();
            format!("{}-{:02}", d.year(), d.month())
        }),
    ];
    for (label, count, key) in buckets {
        let mut seen = BTreeSet::new();
        for &i in &verified {
            if seen.len() >= count as usize {
                break;
            }
            let k = key(sorted[i].created);
            if seen.insert(k.clone()) {
                reasons[i].push(format!("{label} {k}"));
            }
        }
    }
    let newest_verified = verified.first().map(|&i| sorted[i].created);
    for (i, c) in sorted.iter().enumerate() {
        if let Some(p) = &c.pinned {
            reasons[i].push(p.clone());
        }
        if !c.verified {
            match newest_verified {
                Some(t) if c.created <= t => {}
                _ => reasons[i].push("unverified, but no verified backup is newer".into()),
            }
        }
    }
    sorted
        .iter()
        .zip(reasons)
        .map(|(c, r)| {
            let keep = !r.is_empty();
            let reasons = if keep {
                r
            } else if c.verified {
                vec!["verified, but no --keep rule keeps it".into()]
            } else {
                vec!["unverified, and a newer verified backup exists".into()]
            };
            Decision {
                name: c.name.clone(),
                keep,
                reasons,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(name: &str, at: &str, verified: bool) -> Candidate {
        Candidate {
            name: name.into(),
            created: at.parse().unwrap(),
            verified,
            pinned: None,
        }
    }

    fn kept(d: &[Decision]) -> Vec<&str> {
        let mut v: Vec<&str> = d
            .iter()
            .filter(|d| d.keep)
            .map(|d| d.name.as_str())
            .collect();
        v.sort();
        v
    }

    /// One backup a day at 03:00 for 100 days, from 2026-01-01 (a Thursday).
    fn daily_for(days: i64) -> Vec<Candidate> {
        let start: Timestamp = "2026-01-01T03:00:00Z".parse().unwrap();
        (0..days)
            .map(|i| {
                let t = start + jiff::SignedDuration::from_hours(24 * i);
                Candidate {
                    name: t.to_zoned(TimeZone::UTC).date().to_string(),
                    created: t,
                    verified: true,
                    pinned: None,
                }
            })
            .collect()
    }

    #[test]
    fn gfs_keeps_exactly_the_buckets() {
        let all = daily_for(100); // 2026-01-01 .. 2026-04-10
        let p = Policy {
            last: 0,
            daily: 7,
            weekly: 4,
            monthly: 6,
        };
        let d = plan(&all, &p);
        assert_eq!(d.len(), 100);
        // daily: the last 7 days; weekly: the newest of the last 4 ISO weeks (Sundays,
        // plus the newest day of the current week); monthly: the newest of each month.
        let expect = vec![
            "2026-01-31", // monthly 2026-01
            "2026-02-28", // monthly 2026-02
            "2026-03-22", // weekly W12 (Sunday)
            "2026-03-29", // weekly W13
            "2026-03-31", // monthly 2026-03
            "2026-04-04", // daily
            "2026-04-05", // daily, weekly W14
            "2026-04-06",
            "2026-04-07",
            "2026-04-08",
            "2026-04-09",
            "2026-04-10", // newest: daily, weekly W15, monthly 2026-04
        ];
        assert_eq!(kept(&d), expect);
        let newest = d.iter().find(|d| d.name == "2026-04-10").unwrap();
        assert!(newest.reasons.iter().any(|r| r == "newest verified backup"));
        assert!(newest.reasons.iter().any(|r| r == "monthly 2026-04"));
        let gone = d.iter().find(|d| d.name == "2026-03-15").unwrap();
        assert!(!gone.keep);
        assert_eq!(gone.reasons, vec!["verified, but no --keep rule keeps it"]);
    }

    #[test]
    fn keep_last_counts_only_verified_and_never_drops_the_newest_verified() {
        let all = vec![
            c("a", "2026-01-01T00:00:00Z", true),
            c("b", "2026-01-02T00:00:00Z", true),
            c("c", "2026-01-03T00:00:00Z", false),
            c("d", "2026-01-04T00:00:00Z", true),
            c("e", "2026-01-05T00:00:00Z", false),
        ];
        let d = plan(
            &all,
            &Policy {
                last: 2,
                ..Policy::default()
            },
        );
        // b and d are the last 2 verified; c is unverified and older than d; e is newer
        // than every verified backup, so it stays.
        assert_eq!(kept(&d), vec!["b", "d", "e"]);
        assert_eq!(
            d.iter().find(|x| x.name == "c").unwrap().reasons,
            vec!["unverified, and a newer verified backup exists"]
        );
        // Even a policy of 1 daily keeps the newest verified one after a long gap.
        let d = plan(
            &all,
            &Policy {
                daily: 1,
                ..Policy::default()
            },
        );
        assert_eq!(kept(&d), vec!["d", "e"]);
    }

    #[test]
    fn pinned_backups_are_kept() {
        let mut all = daily_for(10);
        all[2].pinned = Some("pinned by the last good release r1".into());
        let d = plan(
            &all,
            &Policy {
                last: 1,
                ..Policy::default()
            },
        );
        assert_eq!(kept(&d), vec!["2026-01-03", "2026-01-10"]);
        let pinned = d.iter().find(|x| x.name == "2026-01-03").unwrap();
        assert_eq!(pinned.reasons, vec!["pinned by the last good release r1"]);
    }

    #[test]
    fn nothing_verified_deletes_nothing() {
        let all = vec![
            c("a", "2026-01-01T00:00:00Z", false),
            c("b", "2026-01-02T00:00:00Z", false),
        ];
        let d = plan(
            &all,
            &Policy {
                last: 1,
                ..Policy::default()
            },
        );
        assert!(d.iter().all(|x| x.keep));
    }
}
