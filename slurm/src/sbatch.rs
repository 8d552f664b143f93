//! Typed `sbatch` options: durations, arrays, signals, and the `#SBATCH` lines built from
//! them (and read back from a script by the local executor).
//!
//! Values are validated here, once, so that nothing a parameter produces can break out of a
//! `#SBATCH` line or an `sbatch` argument. The quoting of `#SBATCH` values follows sbatch's
//! own directive parser (`_get_argument` in `src/sbatch/opt.c`): whitespace separates
//! arguments, `'` or `"` group, `\` escapes the next character and an unquoted `#` starts a
//! comment.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_with::{DeserializeFromStr, SerializeDisplay};

use crate::duration::SlurmDuration;

/// The grace period before the time limit at which SLURM signals the batch shell, when the
/// spec does not say (`--signal=B:USR1@300`). SLURM may send it up to a minute early.
pub const DEFAULT_SIGNAL_GRACE: SlurmDuration = SlurmDuration::from_secs(300);

/// The largest `--signal` lead time SLURM accepts, in seconds (`sbatch(1)`: 0..65535).
const MAX_SIGNAL_SECS: u64 = 65_535;

/// A job array: `0-9`, `1,3,5-7`, `0-15:4`, optionally throttled with `%N`.
#[derive(Debug, Clone, PartialEq, Eq, SerializeDisplay, DeserializeFromStr)]
pub struct ArraySpec {
    text: String,
    tasks: Vec<u32>,
    max_parallel: Option<u32>,
}

/// Array indices above this are refused (SLURM's `MaxArraySize` is at most 4000001).
const MAX_ARRAY_INDEX: u32 = 4_000_000;
/// More tasks than this in one array is almost certainly a mistake.
const MAX_ARRAY_TASKS: usize = 1_000_000;

impl ArraySpec {
    /// The array `0-(n-1)` with an optional throttle; `None` when `n` is zero.
    pub fn zero_based(n: u32, max_parallel: Option<u32>) -> Option<Self> {
        if n == 0 {
            return None;
        }
        let mut text = if n == 1 {
            "0".to_string()
        } else {
            format!("0-{}", n - 1)
        };
        if let Some(p) = max_parallel.filter(|&p| p > 0) {
            text.push_str(&format!("%{p}"));
        }
        ArraySpec::parse(&text).ok()
    }

    /// Parse SLURM's `--array` syntax.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let (ranges, throttle) = match t.split_once('%') {
            Some((r, p)) => (r, Some(p)),
            None => (t, None),
        };
        let max_parallel = match throttle {
            Some(p) => Some(
                p.parse::<u32>()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("throttle %{p} must be a positive number"))?,
            ),
            None => None,
        };
        let num = |s: &str| -> Result<u32, String> {
            let n = s
                .parse::<u32>()
                .map_err(|_| format!("{s:?} is not an array index"))?;
            if n > MAX_ARRAY_INDEX {
                return Err(format!("index {n} above {MAX_ARRAY_INDEX}"));
            }
            Ok(n)
        };
        let mut tasks = Vec::new();
        if ranges.is_empty() {
            return Err("empty array".to_string());
        }
        for part in ranges.split(',') {
            let (range, step) = match part.split_once(':') {
                Some((r, s)) => (r, num(s)?),
                None => (part, 1),
            };
            if step == 0 {
                return Err("array step must be positive".to_string());
            }
            let (lo, hi) = match range.split_once('-') {
                Some((a, b)) => (num(a)?, num(b)?),
                None => {
                    let n = num(range)?;
                    (n, n)
                }
            };
            if hi < lo {
                return Err(format!("range {lo}-{hi} runs backwards"));
            }
            let mut i = lo;
            while i <= hi {
                tasks.push(i);
                if tasks.len() > MAX_ARRAY_TASKS {
                    return Err(format!("more than {MAX_ARRAY_TASKS} array tasks"));
                }
                i = match i.checked_add(step) {
                    Some(n) => n,
                    None => break,
                };
            }
        }
        tasks.sort_unstable();
        tasks.dedup();
        Ok(ArraySpec {
            text: t.to_string(),
            tasks,
            max_parallel,
        })
    }

    /// The task ids, ascending.
    pub fn tasks(&self) -> &[u32] {
        &self.tasks
    }

    /// The `%N` throttle, if any.
    pub fn max_parallel(&self) -> Option<u32> {
        self.max_parallel
    }

    /// The text as given to `--array`.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl FromStr for ArraySpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        ArraySpec::parse(s)
    }
}

impl fmt::Display for ArraySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// `--signal=[B:]SIG[@SECS]`: which signal SLURM sends how long before the time limit, and
/// whether only to the batch shell (`B:`) or to the job steps.
#[derive(Debug, Clone, PartialEq, Eq, SerializeDisplay, DeserializeFromStr)]
pub struct SignalSpec {
    /// `B:` — the batch shell only (what the templates' USR1 trap needs).
    pub batch_only: bool,
    /// The signal's name without `SIG` (`USR1`) or its number as text.
    pub signal: String,
    /// Seconds before the time limit.
    pub seconds: u32,
}

impl SignalSpec {
    /// `B:USR1@<grace>`, the templates' in-job safety signal.
    pub fn usr1_before(grace: SlurmDuration) -> Self {
        SignalSpec {
            batch_only: true,
            signal: "USR1".to_string(),
            seconds: u32::try_from(grace.as_secs().min(MAX_SIGNAL_SECS)).unwrap_or(u32::MAX),
        }
    }

    /// Parse SLURM's syntax; `R:` (reservation) is accepted and ignored.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let (flags, rest) = match t.split_once(':') {
            Some((f, r)) if !f.is_empty() && f.chars().all(|c| matches!(c, 'B' | 'R')) => (f, r),
            Some(_) => return Err(format!("bad signal flags in {t:?}; expected B: or R:")),
            None => ("", t),
        };
        let (sig, secs) = match rest.split_once('@') {
            Some((s, n)) => (
                s,
                n.parse::<u32>()
                    .ok()
                    .filter(|&v| u64::from(v) <= MAX_SIGNAL_SECS)
                    .ok_or_else(|| format!("signal time {n:?} must be 0..{MAX_SIGNAL_SECS}"))?,
            ),
            None => (rest, 60),
        };
        let sig = sig.strip_prefix("SIG").unwrap_or(sig).to_ascii_uppercase();
        if signal_number(&sig).is_none() {
            return Err(format!("unknown signal {sig:?}"));
        }
        Ok(SignalSpec {
            batch_only: flags.contains('B'),
            signal: sig,
            seconds: secs,
        })
    }

    /// The signal's number on this system.
    pub fn number(&self) -> Option<i32> {
        signal_number(&self.signal)
    }
}

/// The number of a signal named without `SIG`, or given as a number.
pub(crate) fn signal_number(name: &str) -> Option<i32> {
    if let Ok(n) = name.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    Some(match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "ALRM" => libc::SIGALRM,
        "TERM" => libc::SIGTERM,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        "TSTP" => libc::SIGTSTP,
        "URG" => libc::SIGURG,
        _ => return None,
    })
}

impl FromStr for SignalSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        SignalSpec::parse(s)
    }
}

impl fmt::Display for SignalSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.batch_only {
            f.write_str("B:")?;
        }
        write!(f, "{}@{}", self.signal, self.seconds)
    }
}

/// The `sbatch` options of one job, typed.
///
/// Built by `hpcstage_template::render` from a spec's resources, written into the script as
/// `#SBATCH` lines ([`SbatchArgs::directives`]) and available as command-line arguments
/// ([`SbatchArgs::to_args`]). [`SbatchArgs::from_script`] reads them back from any script.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SbatchArgs {
    pub job_name: Option<String>,
    pub partition: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    pub gres: Option<String>,
    pub cpus_per_task: Option<u32>,
    /// Memory per node as sbatch takes it (`16G`).
    pub mem: Option<String>,
    pub time: Option<SlurmDuration>,
    pub array: Option<ArraySpec>,
    pub constraint: Option<String>,
    /// Working directory of the job (`--chdir`).
    pub chdir: Option<String>,
    /// Standard output file pattern (`%x`, `%j`, `%A`, `%a` ...).
    pub output: Option<String>,
    /// Standard error file pattern.
    pub error: Option<String>,
    /// `append` or `truncate`.
    pub open_mode: Option<String>,
    pub signal: Option<SignalSpec>,
    pub comment: Option<String>,
    /// Directives this type does not model, kept verbatim (only from [`Self::from_script`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub other: Vec<String>,
}

impl SbatchArgs {
    fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut v = Vec::new();
        let mut push = |k: &'static str, val: Option<String>| {
            if let Some(val) = val {
                v.push((k, val));
            }
        };
        push("job-name", self.job_name.clone());
        push("partition", self.partition.clone());
        push("account", self.account.clone());
        push("qos", self.qos.clone());
        push("gres", self.gres.clone());
        push("cpus-per-task", self.cpus_per_task.map(|c| c.to_string()));
        push("mem", self.mem.clone());
        push("time", self.time.map(SlurmDuration::to_slurm));
        push("array", self.array.as_ref().map(ToString::to_string));
        push("constraint", self.constraint.clone());
        push("chdir", self.chdir.clone());
        push("output", self.output.clone());
        push("error", self.error.clone());
        push("open-mode", self.open_mode.clone());
        push("signal", self.signal.as_ref().map(ToString::to_string));
        push("comment", self.comment.clone());
        v
    }

    /// Command-line form, one `--flag=value` per element (no shell quoting: pass as argv).
    pub fn to_args(&self) -> Vec<String> {
        let mut args: Vec<String> = self
            .pairs()
            .into_iter()
            .map(|(k, v)| format!("--{k}={v}"))
            .collect();
        args.extend(self.other.iter().cloned());
        args
    }

    /// `#SBATCH` lines, each ending in a newline, values quoted for sbatch's parser.
    pub fn directives(&self) -> String {
        let mut out = String::new();
        for (k, v) in self.pairs() {
            out.push_str("#SBATCH --");
            out.push_str(k);
            out.push('=');
            out.push_str(&directive_quote(&v));
            out.push('\n');
        }
        out
    }

    /// Read the `#SBATCH` directives of a script, as sbatch does: they are honoured only
    /// before the first command (the first line that is neither blank nor a comment).
    ///
    /// Errors name the line and the problem.
    pub fn from_script(script: &str) -> Result<SbatchArgs, (usize, String)> {
        let mut args = SbatchArgs::default();
        for (i, line) in script.lines().enumerate() {
            let trimmed = line.trim_start();
            if trimmed.is_empty() {
                continue;
            }
            if !trimmed.starts_with('#') {
                break;
            }
            let Some(rest) = line.strip_prefix("#SBATCH") else {
                continue;
            };
            if !rest.is_empty() && !rest.starts_with(char::is_whitespace) {
                continue;
            }
            let words = directive_words(rest).map_err(|e| (i + 1, e))?;
            args.apply_words(&words).map_err(|e| (i + 1, e))?;
        }
        Ok(args)
    }

    fn apply_words(&mut self, words: &[String]) -> Result<(), String> {
        let mut i = 0;
        while i < words.len() {
            let w = &words[i];
            let (name, inline): (String, Option<String>) = if let Some(long) = w.strip_prefix("--")
            {
                match long.split_once('=') {
                    Some((k, v)) => (k.to_string(), Some(v.to_string())),
                    None => (long.to_string(), None),
                }
            } else if let Some(short) = w.strip_prefix('-').filter(|s| !s.is_empty()) {
                let (c, v) = short.split_at(1);
                let long = match c {
                    "J" => "job-name",
                    "p" => "partition",
                    "A" => "account",
                    "q" => "qos",
                    "c" => "cpus-per-task",
                    "t" => "time",
                    "a" => "array",
                    "C" => "constraint",
                    "D" => "chdir",
                    "o" => "output",
                    "e" => "error",
                    _ => {
                        self.other.push(w.clone());
                        i += 1;
                        continue;
                    }
                };
                (long.to_string(), (!v.is_empty()).then(|| v.to_string()))
            } else {
                self.other.push(w.clone());
                i += 1;
                continue;
            };
            if !KNOWN_VALUED.contains(&name.as_str()) {
                self.other.push(w.clone());
                i += 1;
                continue;
            }
            let value = match inline {
                Some(v) => v,
                None => {
                    i += 1;
                    words
                        .get(i)
                        .cloned()
                        .ok_or_else(|| format!("--{name} needs a value"))?
                }
            };
            self.set(&name, value)?;
            i += 1;
        }
        Ok(())
    }

    fn set(&mut self, name: &str, value: String) -> Result<(), String> {
        match name {
            "job-name" => self.job_name = Some(value),
            "partition" => self.partition = Some(value),
            "account" => self.account = Some(value),
            "qos" => self.qos = Some(value),
            "gres" => self.gres = Some(value),
            "cpus-per-task" => {
                self.cpus_per_task = Some(
                    value
                        .parse()
                        .map_err(|_| format!("--cpus-per-task={value}: not a number"))?,
                );
            }
            "mem" => self.mem = Some(value),
            "time" => self.time = parse_time_limit(&value)?,
            "array" => self.array = Some(ArraySpec::parse(&value)?),
            "constraint" => self.constraint = Some(value),
            "chdir" => self.chdir = Some(value),
            "output" => self.output = Some(value),
            "error" => self.error = Some(value),
            "open-mode" => self.open_mode = Some(value),
            "signal" => self.signal = Some(SignalSpec::parse(&value)?),
            "comment" => self.comment = Some(value),
            _ => unreachable!("only KNOWN_VALUED names reach set"),
        }
        Ok(())
    }
}

const KNOWN_VALUED: &[&str] = &[
    "job-name",
    "partition",
    "account",
    "qos",
    "gres",
    "cpus-per-task",
    "mem",
    "time",
    "array",
    "constraint",
    "chdir",
    "output",
    "error",
    "open-mode",
    "signal",
    "comment",
];

/// A `--time` value as SLURM reads it: a bare number is minutes; `UNLIMITED` is no limit.
fn parse_time_limit(value: &str) -> Result<Option<SlurmDuration>, String> {
    let v = value.trim();
    if v.eq_ignore_ascii_case("unlimited") || v.eq_ignore_ascii_case("infinite") {
        return Ok(None);
    }
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        let minutes: u64 = v.parse().map_err(|_| format!("--time={v}: too large"))?;
        return Ok(Some(SlurmDuration::from_secs(minutes.saturating_mul(60))));
    }
    SlurmDuration::parse(v)
        .map(Some)
        .map_err(|e| format!("--time={v}: {e}"))
}

/// Quote a value for a `#SBATCH` line: plain when it has no whitespace, quote, backslash or
/// `#`; otherwise in double quotes with `"` and `\` escaped.
pub(crate) fn directive_quote(value: &str) -> String {
    let needs = value.is_empty()
        || value
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '"' | '\'' | '\\' | '#'));
    if !needs {
        return value.to_string();
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Split the rest of a `#SBATCH` line into words the way sbatch does.
fn directive_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let Some(&first) = chars.peek() else { break };
        if first == '#' {
            break;
        }
        let mut word = String::new();
        let mut quote: Option<char> = None;
        while let Some(&c) = chars.peek() {
            if quote.is_none() && c.is_whitespace() {
                break;
            }
            chars.next();
            match (c, quote) {
                ('\\', _) => {
                    if let Some(n) = chars.next() {
                        word.push(n);
                    }
                }
                (q, Some(open)) if q == open => quote = None,
                (_, Some(_)) => word.push(c),
                ('"' | '\'', None) => quote = Some(c),
                ('#', None) => {
                    // An unquoted '#' ends the line's arguments.
                    if !word.is_empty() {
                        words.push(std::mem::take(&mut word));
                    }
                    return Ok(words);
                }
                _ => word.push(c),
            }
        }
        if quote.is_some() {
            return Err("unterminated quote".to_string());
        }
        words.push(word);
    }
    Ok(words)
}

/// Resource values given on top of the spec (for example by `--time 4h` on the command
/// line). Each set field replaces what the spec and its parameters produced; an empty string
/// removes the option. Values are validated like the spec's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceOverrides {
    pub partition: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    pub gres: Option<String>,
    pub cpus_per_task: Option<String>,
    pub mem: Option<String>,
    pub time: Option<String>,
    pub array: Option<String>,
    pub constraint: Option<String>,
    pub signal_grace: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_parse_ranges_lists_steps_and_throttles() {
        let a = ArraySpec::parse("0-3,7,10-14:2%2").unwrap();
        assert_eq!(a.tasks(), &[0, 1, 2, 3, 7, 10, 12, 14]);
        assert_eq!(a.max_parallel(), Some(2));
        assert_eq!(a.to_string(), "0-3,7,10-14:2%2");
        assert_eq!(ArraySpec::zero_based(4, Some(2)).unwrap().as_str(), "0-3%2");
        assert_eq!(ArraySpec::zero_based(1, None).unwrap().as_str(), "0");
        assert_eq!(ArraySpec::zero_based(0, None), None);
        for bad in ["", "3-1", "a", "0-2:0", "1%0", "0-99999999"] {
            assert!(ArraySpec::parse(bad).is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn signals_parse_and_print() {
        let s = SignalSpec::parse("B:USR1@300").unwrap();
        assert!(s.batch_only);
        assert_eq!(s.number(), Some(libc::SIGUSR1));
        assert_eq!(s.to_string(), "B:USR1@300");
        assert_eq!(SignalSpec::parse("SIGTERM").unwrap().to_string(), "TERM@60");
        assert!(SignalSpec::parse("B:NOPE@3").is_err());
        assert!(SignalSpec::parse("X:USR1@3").is_err());
    }

    #[test]
    fn directives_round_trip_through_the_sbatch_parser_rules() {
        let args = SbatchArgs {
            job_name: Some("unet-seg".into()),
            partition: Some("gpu".into()),
            gres: Some("gpu:1".into()),
            cpus_per_task: Some(8),
            mem: Some("32G".into()),
            time: Some(SlurmDuration(93_600)),
            array: Some(ArraySpec::parse("0-3%2").unwrap()),
            output: Some("/scratch/my runs/#7/logs/%x-%A_%a.out".into()),
            signal: Some(SignalSpec::usr1_before(SlurmDuration(300))),
            comment: Some("hpcstage:abc".into()),
            ..SbatchArgs::default()
        };
        let text = format!(
            "#!/bin/bash\n{}\necho hi\n#SBATCH --partition=ignored\n",
            args.directives()
        );
        assert!(text.contains("#SBATCH --output=\"/scratch/my runs/#7/logs/%x-%A_%a.out\"\n"));
        assert!(text.contains("#SBATCH --time=1-02:00:00\n"));
        let back = SbatchArgs::from_script(&text).unwrap();
        assert_eq!(back, args);
        assert_eq!(
            args.to_args()[..3],
            ["--job-name=unet-seg", "--partition=gpu", "--gres=gpu:1"]
        );
    }

    #[test]
    fn directives_accept_short_options_and_comments() {
        let text = "#!/bin/bash\n# a comment\n#SBATCH -J x -p debug # trailing\n#SBATCH -t 5 --exclusive\n#SBATCH --array 1-2\nset -e\n";
        let a = SbatchArgs::from_script(text).unwrap();
        assert_eq!(a.job_name.as_deref(), Some("x"));
        assert_eq!(a.partition.as_deref(), Some("debug"));
        assert_eq!(a.time, Some(SlurmDuration(300)));
        assert_eq!(a.array.unwrap().tasks(), &[1, 2]);
        assert_eq!(a.other, vec!["--exclusive".to_string()]);
        let err = SbatchArgs::from_script("#SBATCH --time\n").unwrap_err();
        assert_eq!(err.0, 1);
    }
}
