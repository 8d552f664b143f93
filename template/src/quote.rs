//! The minijinja environments: one that shell-quotes every interpolation (job bodies and
//! validation commands) and one that does not (resource expressions and globs, whose results
//! are validated as typed values instead).
//!
//! The quoting environment sets a custom auto-escape mode and a formatter that writes every
//! value through `shlex::try_quote` unless it is marked safe. Values become safe only by
//! passing through quoting already (macro output, `| e`, `| argv`), or explicitly through
//! `| trusted` or a `trusted = true` parameter. Built-in filters that would mark raw text
//! safe are replaced: `safe` is refused (use `trusted`), `tojson` returns a plain string
//! that is then quoted.

use minijinja::value::Value;
use minijinja::{AutoEscape, Environment, Error, ErrorKind, State, UndefinedBehavior};

use hpcstage_slurm::duration::SlurmDuration;

/// The auto-escape mode name of job bodies.
const SHELL: &str = "shell";

/// Quote one word for bash, single-quote style, refusing NUL bytes.
pub(crate) fn quote(s: &str) -> Result<String, Error> {
    shlex::try_quote(s).map(|q| q.into_owned()).map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            "a value contains a NUL byte, which no shell argument can hold",
        )
    })
}

fn common<'s>() -> Environment<'s> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(true);
    env.add_filter("seconds", seconds);
    env
}

/// For resource expressions, globs and sheet paths: strict, unquoted.
pub(crate) fn plain_env<'s>() -> Environment<'s> {
    let mut env = common();
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.add_filter("trusted", |v: Value| v);
    env
}

/// For job bodies and validation commands: every value shell-quoted unless trusted.
pub(crate) fn shell_env<'s>() -> Environment<'s> {
    let mut env = common();
    env.set_auto_escape_callback(|_| AutoEscape::Custom(SHELL));
    env.set_formatter(format_quoted);
    env.add_filter("trusted", trusted);
    env.add_filter("safe", refuse_safe);
    env.add_filter("tojson", tojson);
    env.add_filter("argv", argv);
    env
}

/// Write a value into the script: safe values as they are, everything else quoted.
///
/// The mode of the current block is deliberately ignored: `{% autoescape false %}` does not
/// turn quoting off; `| trusted` is the one way to do that.
fn format_quoted(out: &mut minijinja::Output, _state: &State, value: &Value) -> Result<(), Error> {
    use minijinja::value::ValueKind;
    if value.is_safe() {
        return out
            .write_str(value.as_str().unwrap_or_default())
            .map_err(Error::from);
    }
    let text = match value.kind() {
        ValueKind::Undefined => {
            return Err(Error::new(ErrorKind::UndefinedError, "undefined value"));
        }
        ValueKind::None => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "cannot interpolate none; give the parameter a value or test it with `if`",
            ));
        }
        ValueKind::Bool | ValueKind::Number | ValueKind::String => value.to_string(),
        kind => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("cannot interpolate a {kind}; loop over it or pick one item"),
            ));
        }
    };
    out.write_str(&quote(&text)?).map_err(Error::from)
}

/// `{{ value | trusted }}`: interpolate without quoting (for values that are shell code).
fn trusted(value: Value) -> Value {
    if value.is_safe() {
        value
    } else {
        Value::from_safe_string(value.to_string())
    }
}

fn refuse_safe(_value: Value) -> Result<Value, Error> {
    Err(Error::new(
        ErrorKind::InvalidOperation,
        "`safe` is not available in job templates; use `trusted` to interpolate shell code unquoted",
    ))
}

/// JSON text as a plain (unsafe) string, so that it is quoted like any other value.
fn tojson(value: Value) -> Result<Value, Error> {
    serde_json::to_string(&value).map(Value::from).map_err(|e| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("cannot write JSON: {e}"),
        )
    })
}

/// `{{ cmd | argv }}`: split a command line into words (shell rules) and quote each, so a
/// configurable command keeps its arguments but no word is interpreted by the shell.
fn argv(value: Value) -> Result<Value, Error> {
    let text = value.to_string();
    let words = shlex::split(&text).ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("cannot split {text:?} into words: unbalanced quotes"),
        )
    })?;
    let quoted = words
        .iter()
        .map(|w| quote(w))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Value::from_safe_string(quoted.join(" ")))
}

/// `{{ time | seconds }}`: a duration as whole seconds.
fn seconds(value: Value) -> Result<Value, Error> {
    if let Some(n) = value.as_i64() {
        return Ok(Value::from(n));
    }
    let text = value.to_string();
    SlurmDuration::parse(&text)
        .map(|d| Value::from(d.as_secs()))
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("{text:?}: {e}")))
}

/// A minijinja error as one line naming the template line it happened on.
pub(crate) fn describe(err: &Error, source: &str) -> String {
    let mut msg = err.kind().to_string();
    if let Some(detail) = err.detail() {
        msg.push_str(": ");
        msg.push_str(detail);
    }
    if let Some(line) = err.line() {
        let text = source
            .lines()
            .nth(line.saturating_sub(1))
            .unwrap_or("")
            .trim();
        msg.push_str(&format!(" (line {line}: {text})"));
    }
    let mut cause = std::error::Error::source(err);
    while let Some(c) = cause {
        msg.push_str(": ");
        msg.push_str(&c.to_string());
        cause = c.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(src: &str, ctx: Value) -> Result<String, Error> {
        shell_env().render_str(src, ctx)
    }

    #[test]
    fn every_value_is_quoted() {
        let ctx = minijinja::context! { x => "x'; touch /tmp/pwned; '", n => 4, plain => "abc" };
        let out = render("a {{ x }} {{ n }} {{ plain }} {{ 'two words' }}", ctx).unwrap();
        // shlex picks single or double quotes per chunk, never leaving `$`, `` ` `` or `\`
        // where bash would interpret them.
        assert_eq!(out, r#"a "x'; touch /tmp/pwned; '" 4 abc 'two words'"#);
    }

    #[test]
    fn trusted_passes_through_and_safe_is_refused() {
        let ctx = minijinja::context! { x => "$(id)" };
        assert_eq!(render("{{ x | trusted }}", ctx.clone()).unwrap(), "$(id)");
        let err = render("{{ x | safe }}", ctx.clone()).unwrap_err();
        assert!(describe(&err, "").contains("use `trusted`"));
        // Turning auto-escape off does not turn quoting off.
        assert_eq!(
            render(
                "{% autoescape false %}{{ x }}{% endautoescape %}",
                ctx.clone()
            )
            .unwrap(),
            "'$(id)'"
        );
        // Escape, join, format and tojson all end up quoted.
        assert_eq!(render("{{ x | e }}", ctx.clone()).unwrap(), "'$(id)'");
        assert_eq!(
            render("{{ x | tojson }}", ctx.clone()).unwrap(),
            "'\"$(id)\"'"
        );
        assert_eq!(
            render("{{ [x, 'a'] | join(' ') }}", ctx.clone()).unwrap(),
            "'$(id) a'"
        );
    }

    #[test]
    fn macros_and_set_blocks_are_not_quoted_twice() {
        let ctx = minijinja::context! { x => "a b" };
        let src = "{% macro m(v) %}echo {{ v }}{% endmacro %}{{ m(x) }}|{% set s %}[{{ x }}]{% endset %}{{ s }}";
        assert_eq!(render(src, ctx).unwrap(), "echo 'a b'|['a b']");
    }

    #[test]
    fn argv_splits_and_quotes_each_word() {
        let ctx = minijinja::context! { cmd => "python -m cellpose --dir '{input} x' ;rm" };
        assert_eq!(
            render("run {{ cmd | argv }}", ctx).unwrap(),
            "run python -m cellpose --dir '{input} x' ';rm'"
        );
        let err = render("{{ c | argv }}", minijinja::context! { c => "a 'b" }).unwrap_err();
        assert!(describe(&err, "").contains("unbalanced"));
    }

    #[test]
    fn undefined_none_and_lists_are_errors_not_empty_strings() {
        let src = "line one\n{{ missing }}\n";
        let err = render(src, minijinja::context! {}).unwrap_err();
        let msg = describe(&err, src);
        assert!(msg.contains("undefined"), "{msg}");
        assert!(msg.contains("line 2: {{ missing }}"), "{msg}");
        assert!(render("{{ none }}", minijinja::context! {}).is_err());
        assert!(render("{{ [1, 2] }}", minijinja::context! {}).is_err());
        assert!(render("{{ x }}", minijinja::context! { x => "a\0b" }).is_err());
    }

    #[test]
    fn seconds_converts_durations() {
        let out = plain_env()
            .render_str(
                "{{ t | seconds }} {{ 90 | seconds }}",
                minijinja::context! { t => "1-00:00:10" },
            )
            .unwrap();
        assert_eq!(out, "86410 90");
    }
}
