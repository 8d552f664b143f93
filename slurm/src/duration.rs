//! Durations as SLURM writes time limits, read from what people type (`90m`, `1d 2h`) or
//! from SLURM's own forms; split from `sbatch.rs` because params, resources and the local
//! executor all read them.

use std::fmt;
use std::str::FromStr;

use serde_with::{DeserializeFromStr, SerializeDisplay};

/// A duration as SLURM writes time limits: `HH:MM:SS`, or `D-HH:MM:SS` from a day on.
///
/// Parsed from human units (`90s`, `45m`, `2h`, `1d 2h`, `1h30m`) or SLURM's own forms
/// (`MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM`, `D-HH:MM:SS`). A bare number is refused: SLURM
/// reads it as minutes, most people as seconds.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, SerializeDisplay, DeserializeFromStr,
)]
pub struct SlurmDuration(pub(crate) u64);

impl SlurmDuration {
    /// A duration of `secs` seconds.
    pub const fn from_secs(secs: u64) -> Self {
        SlurmDuration(secs)
    }

    /// Whole seconds.
    pub const fn as_secs(self) -> u64 {
        self.0
    }

    /// As [`std::time::Duration`].
    pub const fn to_std(self) -> std::time::Duration {
        std::time::Duration::from_secs(self.0)
    }

    /// SLURM's format: `HH:MM:SS` below a day, `D-HH:MM:SS` from a day on.
    pub fn to_slurm(self) -> String {
        let (days, rest) = (self.0 / 86_400, self.0 % 86_400);
        let (h, m, s) = (rest / 3600, rest % 3600 / 60, rest % 60);
        if days > 0 {
            format!("{days}-{h:02}:{m:02}:{s:02}")
        } else {
            format!("{h:02}:{m:02}:{s:02}")
        }
    }

    /// Parse a duration; the error's message is a reason fit to follow the value.
    pub fn parse(text: &str) -> Result<Self, DurationError> {
        let t = text.trim();
        if t.is_empty() {
            return Err(DurationError::Empty);
        }
        if t.contains(':') || t.contains('-') {
            return parse_slurm_form(t);
        }
        if t.bytes().all(|b| b.is_ascii_digit()) {
            return Err(DurationError::BareNumber(t.to_owned()));
        }
        parse_units(t)
    }
}

/// Why a duration could not be read. Each message is fit to follow the value
/// (`--time=60: a bare number is ambiguous ...`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error("a bare number is ambiguous: write {0}s, {0}m or {0}h (or HH:MM:SS)")]
    BareNumber(String),
    #[error("not a duration; use units (90m, 2h, 1d 2h) or SLURM form (HH:MM:SS, D-HH:MM:SS)")]
    NotADuration,
    #[error("minutes and seconds must be below 60")]
    FieldOver60,
    #[error("hours after a day part must be below 24")]
    HoursOver24,
    #[error("duration too large")]
    TooLarge,
    #[error("expected a number at {0:?}; use units like 90m, 2h, 1d 2h")]
    ExpectedNumber(String),
    #[error("number too large")]
    NumberTooLarge,
    #[error("missing unit after {0}; use s, m, h, d or w")]
    MissingUnit(u64),
    #[error("unknown unit {0:?}; use s, m, h, d or w")]
    UnknownUnit(String),
}

fn parse_slurm_form(t: &str) -> Result<SlurmDuration, DurationError> {
    let num = |s: &str| -> Result<u64, DurationError> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(DurationError::NotADuration);
        }
        s.parse::<u64>().map_err(|_| DurationError::NotADuration)
    };
    let (days, clock) = match t.split_once('-') {
        Some((d, rest)) => (num(d)?, Some(rest)),
        None => (0, None),
    };
    let fields: Vec<&str> = clock.unwrap_or(t).split(':').collect();
    let nums = fields
        .iter()
        .map(|f| num(f))
        .collect::<Result<Vec<u64>, DurationError>>()?;
    // With a day part, fields are hours[:minutes[:seconds]]; without, minutes:seconds or
    // hours:minutes:seconds (sbatch(1), --time).
    let secs = match (clock.is_some(), nums.as_slice()) {
        (true, [h]) => h * 3600,
        (true, [h, m]) => h * 3600 + m * 60,
        (true, [h, m, s]) => h * 3600 + m * 60 + s,
        (false, [m, s]) => m * 60 + s,
        (false, [h, m, s]) => h * 3600 + m * 60 + s,
        _ => return Err(DurationError::NotADuration),
    };
    // The first field may exceed its usual range (90:00 is 90 minutes); the others may not.
    if nums.iter().skip(1).any(|&n| n >= 60) {
        return Err(DurationError::FieldOver60);
    }
    if clock.is_some() && nums[0] >= 24 && nums.len() > 1 {
        return Err(DurationError::HoursOver24);
    }
    days.checked_mul(86_400)
        .and_then(|d| d.checked_add(secs))
        .map(SlurmDuration)
        .ok_or(DurationError::TooLarge)
}

fn parse_units(t: &str) -> Result<SlurmDuration, DurationError> {
    let mut total: u64 = 0;
    let mut rest = t;
    let mut seen_any = false;
    while !rest.is_empty() {
        rest = rest.trim_start();
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(DurationError::ExpectedNumber(rest.to_owned()));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| DurationError::NumberTooLarge)?;
        rest = rest[digits..].trim_start();
        let letters = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = rest[..letters].to_ascii_lowercase();
        rest = &rest[letters..];
        let factor = match unit.as_str() {
            "s" | "sec" | "secs" | "second" | "seconds" => 1,
            "m" | "min" | "mins" | "minute" | "minutes" => 60,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3600,
            "d" | "day" | "days" => 86_400,
            "w" | "week" | "weeks" => 7 * 86_400,
            "" => return Err(DurationError::MissingUnit(n)),
            other => return Err(DurationError::UnknownUnit(other.to_owned())),
        };
        total = n
            .checked_mul(factor)
            .and_then(|v| total.checked_add(v))
            .ok_or(DurationError::TooLarge)?;
        seen_any = true;
        rest = rest.trim_start_matches([' ', ',']);
    }
    if !seen_any {
        return Err(DurationError::Empty);
    }
    Ok(SlurmDuration(total))
}

impl fmt::Display for SlurmDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_slurm())
    }
}

impl FromStr for SlurmDuration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, DurationError> {
        SlurmDuration::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_from_units_and_slurm_forms() {
        let cases = [
            ("90s", 90),
            ("45m", 2700),
            ("2h", 7200),
            ("1d 2h", 93_600),
            ("1d2h30m", 95_400),
            ("1h30m", 5400),
            ("2 hours", 7200),
            ("02:00:00", 7200),
            ("1-02:00:00", 93_600),
            ("1-2", 93_600),
            ("1-2:30", 95_400),
            ("90:00", 5400),
            ("0:03", 3),
        ];
        for (text, secs) in cases {
            assert_eq!(
                SlurmDuration::parse(text),
                Ok(SlurmDuration(secs)),
                "{text}"
            );
        }
    }

    #[test]
    fn durations_refuse_ambiguous_or_broken_text() {
        for text in [
            "", "60", "2x", "h", "1:2:3:4", "1-25:00", "00:61", "-5m", "1d -2h",
        ] {
            assert!(SlurmDuration::parse(text).is_err(), "{text:?} should fail");
        }
        let err = SlurmDuration::parse("60").unwrap_err().to_string();
        assert!(err.contains("60m"), "{err}");
    }

    #[test]
    fn durations_render_in_slurm_format() {
        assert_eq!(SlurmDuration(7200).to_slurm(), "02:00:00");
        assert_eq!(SlurmDuration(93_600).to_slurm(), "1-02:00:00");
        assert_eq!(SlurmDuration(59).to_slurm(), "00:00:59");
        assert_eq!(SlurmDuration(3 * 86_400 + 61).to_slurm(), "3-00:01:01");
    }
}
