//! A scan of template text for interpolations that quoting cannot make safe.
//!
//! Values are written as single-quoted shell words. That is inert where bash reads words,
//! but not everywhere: inside double quotes `'$(id)'` still runs `id`; inside a comment a
//! value holding a newline ends the comment; inside an unquoted here-document every `$(`
//! runs. So `{{ ... }}` is refused inside quotes, comments, `${...}` and here-documents,
//! unless it is explicitly trusted. The scan follows bash's quoting closely enough for job
//! scripts (quotes, `$( )`, backticks, `${ }`, comments, here-documents); it is a guard
//! against mistakes in templates, not a shell parser.
//!
//! It also refuses `${#`, which the template language reads as the start of a comment.

use super::TemplateError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    /// Shell code; `subst` when opened by `$(` (closed by the matching `)`).
    Code {
        parens: u32,
        subst: bool,
    },
    Double,
    Backtick,
    /// `${ ... }`
    Param,
}

/// The frame a `$(` or `${` opens (`next` is the byte after the `$`).
fn expansion(next: Option<u8>) -> Frame {
    if next == Some(b'(') {
        Frame::Code {
            parens: 0,
            subst: true,
        }
    } else {
        Frame::Param
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Mode {
    Normal,
    Single,
    AnsiC,
    Comment,
    Heredoc { delim: String, strip_tabs: bool },
}

/// Check `source` (named `template` in errors); `trusted` lists parameters marked trusted.
pub(crate) fn check(template: &str, source: &str, trusted: &[&str]) -> Result<(), TemplateError> {
    let b = source.as_bytes();
    let mut stack = vec![Frame::Code {
        parens: 0,
        subst: false,
    }];
    let mut mode = Mode::Normal;
    let mut pending: Vec<(String, bool)> = Vec::new();
    let mut line = 1usize;
    let mut at_line_start = true;
    let mut prev: u8 = b'\n';
    let mut raw = false;
    let mut i = 0usize;

    let unsafe_at =
        |line: usize, expr: &str, place: &'static str| TemplateError::UnsafeInterpolation {
            template: template.to_string(),
            line,
            expr: format!("{{{{ {} }}}}", expr.trim()),
            place,
        };

    while i < b.len() {
        // Here-documents are read line by line.
        if let Mode::Heredoc { delim, strip_tabs } = &mode {
            let end = b[i..]
                .iter()
                .position(|&c| c == b'\n')
                .map_or(b.len(), |p| i + p);
            let text = &source[i..end];
            let candidate = if *strip_tabs {
                text.trim_start_matches('\t')
            } else {
                text
            };
            if candidate == delim {
                mode = if pending.is_empty() {
                    Mode::Normal
                } else {
                    let (d, s) = pending.remove(0);
                    Mode::Heredoc {
                        delim: d,
                        strip_tabs: s,
                    }
                };
            } else if !raw {
                if let Some(p) = text.find("{{") {
                    let expr = jinja_inner(&text[p..]);
                    if !is_trusted(expr, trusted) {
                        return Err(unsafe_at(line, expr, "inside a here-document"));
                    }
                }
            }
            if !raw {
                raw = raw_toggle(text, raw);
            }
            i = end + 1;
            line += 1;
            at_line_start = true;
            prev = b'\n';
            continue;
        }

        let c = b[i];
        // Template tags, in any shell context.
        if !raw && c == b'{' && i + 1 < b.len() && matches!(b[i + 1], b'{' | b'%' | b'#') {
            let close: &[u8] = match b[i + 1] {
                b'{' => b"}}",
                b'%' => b"%}",
                _ => b"#}",
            };
            let Some(rel) = find(&b[i + 2..], close) else {
                return Ok(()); // unterminated: the template parser reports it
            };
            let inner = &source[i + 2..i + 2 + rel];
            if b[i + 1] == b'{' && !is_trusted(inner, trusted) {
                let place = match (&mode, stack.last()) {
                    (Mode::Single, _) => Some("inside single quotes"),
                    (Mode::AnsiC, _) => Some("inside $'...' quotes"),
                    (Mode::Comment, _) => Some("in a comment"),
                    (_, Some(Frame::Double)) => Some("inside double quotes"),
                    (_, Some(Frame::Param)) => Some("inside ${...}"),
                    _ => None,
                };
                if let Some(place) = place {
                    return Err(unsafe_at(line, inner, place));
                }
            }
            if b[i + 1] == b'%' {
                let word = inner.trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace());
                if word == "raw" {
                    raw = true;
                }
            }
            line += inner.matches('\n').count();
            i += 2 + rel + 2;
            continue;
        }
        if raw && c == b'{' && source[i..].starts_with("{%") {
            if let Some(rel) = find(&b[i + 2..], b"%}") {
                let inner = source[i + 2..i + 2 + rel]
                    .trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace());
                if inner == "endraw" {
                    raw = false;
                    i += 2 + rel + 2;
                    continue;
                }
            }
        }

        if c == b'\n' {
            line += 1;
            if mode == Mode::Comment {
                mode = Mode::Normal;
            }
            if mode == Mode::Normal && !pending.is_empty() {
                let (d, s) = pending.remove(0);
                mode = Mode::Heredoc {
                    delim: d,
                    strip_tabs: s,
                };
            }
            at_line_start = true;
            prev = c;
            i += 1;
            continue;
        }

        match mode {
            Mode::Comment => {}
            Mode::Single => {
                if c == b'\'' {
                    mode = Mode::Normal;
                }
            }
            Mode::AnsiC => {
                if c == b'\\' {
                    i += 1;
                } else if c == b'\'' {
                    mode = Mode::Normal;
                }
            }
            Mode::Heredoc { .. } => unreachable!("handled above"),
            Mode::Normal => {
                let top = *stack.last().expect("the stack keeps its base frame");
                let next = b.get(i + 1).copied();
                if c == b'$' && next == Some(b'{') && b.get(i + 2) == Some(&b'#') && !raw {
                    return Err(TemplateError::TemplateText {
                        template: template.to_string(),
                        line,
                        reason: "`${#` opens a template comment; wrap the expression in \
                                 {% raw %}...{% endraw %}"
                            .to_string(),
                    });
                }
                match top {
                    Frame::Double => match c {
                        b'\\' => i += 1,
                        b'"' => {
                            stack.pop();
                        }
                        b'$' if matches!(next, Some(b'(' | b'{')) => {
                            stack.push(expansion(next));
                            i += 1;
                        }
                        b'`' => stack.push(Frame::Backtick),
                        _ => {}
                    },
                    Frame::Param => match c {
                        b'\\' => i += 1,
                        b'}' => {
                            stack.pop();
                        }
                        b'\'' => mode = Mode::Single,
                        b'"' => stack.push(Frame::Double),
                        b'$' if matches!(next, Some(b'(' | b'{')) => {
                            stack.push(expansion(next));
                            i += 1;
                        }
                        _ => {}
                    },
                    Frame::Code { .. } | Frame::Backtick => {
                        let word_start = at_line_start
                            || prev.is_ascii_whitespace()
                            || b";&|()<>".contains(&prev);
                        match c {
                            b'\\' => i += 1,
                            b'\'' => mode = Mode::Single,
                            b'"' => stack.push(Frame::Double),
                            b'#' if word_start => mode = Mode::Comment,
                            b'`' if top == Frame::Backtick => {
                                stack.pop();
                            }
                            b'`' => stack.push(Frame::Backtick),
                            b'$' if next == Some(b'\'') => {
                                mode = Mode::AnsiC;
                                i += 1;
                            }
                            b'$' if matches!(next, Some(b'(' | b'{')) => {
                                stack.push(expansion(next));
                                i += 1;
                            }
                            b'(' => {
                                if let Some(Frame::Code { parens, .. }) = stack.last_mut() {
                                    *parens += 1;
                                }
                            }
                            b')' => match stack.last_mut() {
                                Some(Frame::Code { parens, .. }) if *parens > 0 => *parens -= 1,
                                Some(Frame::Code { subst: true, .. }) => {
                                    stack.pop();
                                }
                                _ => {}
                            },
                            b'<' if next == Some(b'<') && b.get(i + 2) == Some(&b'<') => {
                                // A here-string (<<<), not a here-document.
                                i += 2;
                            }
                            b'<' if next == Some(b'<') => {
                                let (delim, strip, used) = heredoc_word(&source[i + 2..]);
                                if let Some(d) = delim {
                                    pending.push((d, strip));
                                }
                                i += 1 + used;
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
        at_line_start = false;
        prev = b.get(i).copied().unwrap_or(c);
        i += 1;
    }
    Ok(())
}

/// After `<<`: the here-document's delimiter (quotes removed), whether `-` strips tabs, and
/// how many bytes were consumed.
fn heredoc_word(rest: &str) -> (Option<String>, bool, usize) {
    let mut used = 0;
    let mut strip = false;
    let bytes = rest.as_bytes();
    if bytes.first() == Some(&b'-') {
        strip = true;
        used += 1;
    }
    while bytes.get(used).is_some_and(|c| *c == b' ' || *c == b'\t') {
        used += 1;
    }
    let start = used;
    while bytes
        .get(used)
        .is_some_and(|c| !c.is_ascii_whitespace() && !b";&|()<>".contains(c))
    {
        used += 1;
    }
    let word: String = rest[start..used]
        .chars()
        .filter(|c| !matches!(c, '\'' | '"' | '\\'))
        .collect();
    ((!word.is_empty()).then_some(word), strip, used)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The inside of the first `{{ ... }}` at the start of `text`.
fn jinja_inner(text: &str) -> &str {
    let body = &text[2..];
    body.find("}}").map_or(body, |e| &body[..e])
}

fn raw_toggle(text: &str, raw: bool) -> bool {
    if text.contains("{% raw %}") || text.contains("{%- raw %}") {
        return true;
    }
    raw
}

/// `x | trusted` or a parameter declared trusted.
fn is_trusted(expr: &str, trusted: &[&str]) -> bool {
    let compact: String = expr
        .trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace())
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    compact.ends_with("|trusted") || trusted.contains(&compact.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(src: &str) {
        if let Err(e) = check("t", src, &["code"]) {
            panic!("{src:?} should pass: {e}");
        }
    }

    fn refused(src: &str, needle: &str) {
        match check("t", src, &["code"]) {
            Ok(()) => panic!("{src:?} should be refused"),
            Err(e) => assert!(e.to_string().contains(needle), "{src:?}: {e}"),
        }
    }

    #[test]
    fn plain_words_and_substitutions_are_fine() {
        ok("echo {{ x }} > out/{{ name }}.txt\n");
        ok("n=$(wc -l < {{ file }})\nv=\"$(cat {{ file }})\"\n");
        ok("arr=( {{ cmd | argv }} )\nfor f in {{ a }} {{ b }}; do :; done\n");
        ok("if [[ {{ x }} == y ]]; then echo \"#{n}\"; fi # a comment\n");
        ok("echo $# {% if x %}{{ y }}{% endif %}\n");
        ok("cat <<'EOF'\nplain text\nEOF\necho {{ x }}\n");
        ok("echo \"{{ x | trusted }}\" '{{ code }}'\n");
        ok("{% raw %}n=${#arr[@]}{% endraw %}\necho {{ x }}\n");
        ok("echo it\\'s {{ x }}\n");
        ok("x=$'a\\'b' {{ y }}\n");
        ok("IFS=$'\\t' read -r a b <<<\"$x\"\necho {{ y }}\n");
    }

    #[test]
    fn interpolations_in_unsafe_places_are_refused_with_the_line() {
        refused("echo \"{{ x }}\"\n", "inside double quotes");
        refused("a\necho '{{ x }}'\n", "line 2");
        refused("# model: {{ model }}\n", "in a comment");
        refused("echo $'{{ x }}'\n", "inside $'...' quotes");
        refused("echo ${v:-{{ x }}}\n", "inside ${...}");
        refused("cat <<EOF\nvalue {{ x }}\nEOF\n", "inside a here-document");
        refused("cat <<-'END'\n\t{{ x }}\n\tEND\n", "here-document");
        refused("echo \"$(cat \"{{ f }}\")\"\n", "double quotes");
    }

    #[test]
    fn length_expansions_must_be_raw() {
        refused("n=${#arr[@]}\n", "template comment");
    }

    #[test]
    fn heredocs_end_at_their_delimiter() {
        ok("cat <<EOF >f\nno values here\nEOF\necho {{ x }}\n");
        refused("cat <<EOF >f\nEOFX\n{{ x }}\nEOF\n", "here-document");
    }
}
