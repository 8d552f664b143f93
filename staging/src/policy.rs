//! Scratch purge policies and the deadlines they imply.
//!
//! Sites purge by atime, mtime, ctime or creation time after a fixed age; some delete a
//! whole top-level folder as soon as one file qualifies. A deadline is computed from the
//! files' real timestamps and conservatively: atime under `relatime` can lag by a day, so
//! an atime deadline is pulled in by one day. Nothing here touches files to postpone a
//! purge.
//!
//! See docs/ARCHITECTURE.md#purge-deadlines.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::walk::Meta;

/// Oldest timestamps of a staged copy's files, which its purge deadline follows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct OldestTimes {
    pub atime_ns: Option<i64>,
    pub mtime_ns: Option<i64>,
    pub ctime_ns: Option<i64>,
}

impl OldestTimes {
    /// Takes one file's timestamps into account.
    pub fn add(&mut self, m: &Meta) {
        let min = |slot: &mut Option<i64>, v: i64| *slot = Some(slot.map_or(v, |s| s.min(v)));
        min(&mut self.atime_ns, m.atime_ns);
        min(&mut self.mtime_ns, m.mtime_ns);
        min(&mut self.ctime_ns, m.ctime_ns);
    }

    /// Keeps the older of each timestamp.
    pub fn merge(&mut self, other: &OldestTimes) {
        for (a, b) in [
            (&mut self.atime_ns, other.atime_ns),
            (&mut self.mtime_ns, other.mtime_ns),
            (&mut self.ctime_ns, other.ctime_ns),
        ] {
            if let Some(b) = b {
                *a = Some(a.map_or(b, |a| a.min(b)));
            }
        }
    }
}

/// Which timestamp the site's purge looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PurgeBasis {
    Atime,
    Mtime,
    Ctime,
    /// Creation time: for staged data, when it was staged.
    Created,
}

impl fmt::Display for PurgeBasis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PurgeBasis::Atime => "atime",
            PurgeBasis::Mtime => "mtime",
            PurgeBasis::Ctime => "ctime",
            PurgeBasis::Created => "created",
        })
    }
}

impl FromStr for PurgeBasis {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s.to_ascii_lowercase().as_str() {
            "atime" => Ok(PurgeBasis::Atime),
            "mtime" => Ok(PurgeBasis::Mtime),
            "ctime" => Ok(PurgeBasis::Ctime),
            "created" | "creation" | "btime" | "staged" => Ok(PurgeBasis::Created),
            _ => Err(Error::Invalid {
                what: "purge basis",
                value: s.to_string(),
                reason: "expected atime, mtime, ctime or created".to_string(),
            }),
        }
    }
}

/// A site's purge rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurgePolicy {
    pub basis: PurgeBasis,
    /// Files older than this (by `basis`) are purged.
    pub age: Duration,
    /// How long before the deadline to start warning.
    pub warn: Duration,
    /// The site deletes a whole top-level folder once any file in it qualifies.
    pub whole_folder: bool,
}

impl Default for PurgePolicy {
    fn default() -> Self {
        PurgePolicy {
            basis: PurgeBasis::Mtime,
            age: Duration::from_secs(30 * 86_400),
            warn: Duration::from_secs(7 * 86_400),
            whole_folder: false,
        }
    }
}

/// Slack for atime under `relatime`, which updates atime at most once a day.
const ATIME_SLACK: SignedDuration = SignedDuration::from_hours(24);

impl PurgePolicy {
    /// Whether copies may keep the source's mtime. On an mtime-purged scratch an old
    /// mtime gets fresh data purged the same night, so the answer is no.
    pub fn preserve_mtime(&self) -> bool {
        self.basis != PurgeBasis::Mtime
    }

    /// The oldest timestamp the purge would look at, or `staged_at` when there are none
    /// (or the basis is creation time), as seen right after staging.
    pub fn reference(&self, oldest: &OldestTimes, staged_at: Timestamp) -> Timestamp {
        self.reference_at(oldest, staged_at, staged_at)
    }

    /// The oldest timestamp the purge would look at, as seen at `now`: `created` for the
    /// creation-time basis or a folder without files, otherwise the oldest file's real
    /// timestamp. A timestamp in the future (clock skew, a preserved future mtime) counts
    /// as `now`, so it never pushes the deadline out. Timestamps newer than `created` do
    /// count: on an atime-purged scratch, reading the data resets the purge clock.
    pub fn reference_at(
        &self,
        oldest: &OldestTimes,
        created: Timestamp,
        now: Timestamp,
    ) -> Timestamp {
        let ns = match self.basis {
            PurgeBasis::Atime => oldest.atime_ns,
            PurgeBasis::Mtime => oldest.mtime_ns,
            PurgeBasis::Ctime => oldest.ctime_ns,
            PurgeBasis::Created => None,
        };
        ns.and_then(|ns| Timestamp::from_nanosecond(i128::from(ns)).ok())
            .map_or(created, |t| t.min(now.max(created)))
    }

    /// When the first file would be purged, as seen right after staging.
    pub fn deadline(&self, oldest: &OldestTimes, staged_at: Timestamp) -> Timestamp {
        self.deadline_at(oldest, staged_at, staged_at)
    }

    /// When the first file would be purged, as seen at `now` (see [`Self::reference_at`]).
    pub fn deadline_at(
        &self,
        oldest: &OldestTimes,
        created: Timestamp,
        now: Timestamp,
    ) -> Timestamp {
        let mut t = self.reference_at(oldest, created, now);
        if self.basis == PurgeBasis::Atime {
            t = t.checked_sub(ATIME_SLACK).unwrap_or(t);
        }
        let age = SignedDuration::try_from(self.age).unwrap_or(SignedDuration::MAX);
        t.checked_add(age).unwrap_or(Timestamp::MAX)
    }
}

/// A policy age as people write it: a whole number of days as `60 days`, anything else as
/// humantime prints it. (humantime counts a month as 30.44 days, so a configured "60d"
/// would come back as "1month 29days 13h 26m 24s".)
pub fn format_age(age: Duration) -> String {
    let secs = age.as_secs();
    if age.subsec_nanos() == 0 && secs > 0 && secs.is_multiple_of(86_400) {
        let days = secs / 86_400;
        crate::human::count(days, "day")
    } else {
        humantime::format_duration(age).to_string()
    }
}

/// Whole days from `now` until `deadline` (negative once past), rounded down.
pub fn days_left(deadline: Timestamp, now: Timestamp) -> i64 {
    let secs = deadline.as_second() - now.as_second();
    secs.div_euclid(86_400)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn ns(s: &str) -> i64 {
        ts(s).as_nanosecond() as i64
    }

    #[test]
    fn mtime_deadline_is_the_oldest_mtime_plus_age() {
        let p = PurgePolicy::default();
        let oldest = OldestTimes {
            atime_ns: Some(ns("2026-01-01T00:00:00Z")),
            mtime_ns: Some(ns("2026-01-10T00:00:00Z")),
            ctime_ns: Some(ns("2026-01-20T00:00:00Z")),
        };
        let staged = ts("2026-02-01T00:00:00Z");
        assert_eq!(p.deadline(&oldest, staged), ts("2026-02-09T00:00:00Z"));
        let atime = PurgePolicy {
            basis: PurgeBasis::Atime,
            ..p
        };
        assert_eq!(atime.deadline(&oldest, staged), ts("2026-01-30T00:00:00Z"));
        let created = PurgePolicy {
            basis: PurgeBasis::Created,
            ..p
        };
        assert_eq!(
            created.deadline(&oldest, staged),
            ts("2026-03-03T00:00:00Z")
        );
        assert!(!p.preserve_mtime());
        assert!(atime.preserve_mtime());
    }

    #[test]
    fn future_timestamps_do_not_push_the_deadline_out() {
        let p = PurgePolicy::default();
        let oldest = OldestTimes {
            mtime_ns: Some(ns("2030-01-01T00:00:00Z")),
            ..OldestTimes::default()
        };
        let staged = ts("2026-02-01T00:00:00Z");
        assert_eq!(p.deadline(&oldest, staged), ts("2026-03-03T00:00:00Z"));
    }

    #[test]
    fn reading_after_staging_moves_an_atime_deadline_out() {
        let p = PurgePolicy {
            basis: PurgeBasis::Atime,
            ..PurgePolicy::default()
        };
        let staged = ts("2026-02-01T00:00:00Z");
        let now = ts("2026-02-25T00:00:00Z");
        let read_yesterday = OldestTimes {
            atime_ns: Some(ns("2026-02-24T00:00:00Z")),
            ..OldestTimes::default()
        };
        // Every file was read yesterday: 30 days from then, less a day of relatime lag.
        assert_eq!(
            p.deadline_at(&read_yesterday, staged, now),
            ts("2026-03-25T00:00:00Z")
        );
        // Right after staging the same facts give the same answer as `deadline`.
        assert_eq!(
            p.deadline_at(&read_yesterday, staged, staged),
            p.deadline(&read_yesterday, staged)
        );
        // A timestamp in the future counts as now.
        let future = OldestTimes {
            atime_ns: Some(ns("2030-01-01T00:00:00Z")),
            ..OldestTimes::default()
        };
        assert_eq!(p.reference_at(&future, staged, now), now);
    }

    #[test]
    fn days_left_rounds_down_and_goes_negative() {
        let now = ts("2026-01-01T12:00:00Z");
        assert_eq!(days_left(ts("2026-01-03T11:00:00Z"), now), 1);
        assert_eq!(days_left(ts("2025-12-31T12:00:00Z"), now), -1);
        assert_eq!("ATIME".parse::<PurgeBasis>().unwrap(), PurgeBasis::Atime);
        assert!("weekly".parse::<PurgeBasis>().is_err());
    }

    #[test]
    fn ages_in_whole_days_read_as_days() {
        let day = Duration::from_secs(86_400);
        assert_eq!(format_age(day), "1 day");
        assert_eq!(format_age(30 * day), "30 days");
        assert_eq!(format_age(60 * day), "60 days");
        assert_eq!(format_age(Duration::from_secs(36 * 3600)), "1day 12h");
    }
}
