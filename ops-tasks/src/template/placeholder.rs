//! `{{ name }}` placeholders in template strings, and where a shell script may hold them.

/// One piece of a template string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Segment {
    /// Text copied as is (`{{{{` already turned into `{{`).
    Literal(String),
    /// A parameter's value goes here.
    Param(String),
}

/// A template string split into literal text and placeholders.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Pattern {
    segments: Vec<Segment>,
}

/// Whether `name` may appear in a placeholder: ASCII letters, digits, `_` and `-`, not
/// starting with a digit or `-`.
pub(crate) fn is_param_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl Pattern {
    /// Splits `text` into literals and placeholders. `{{{{` is a literal `{{`.
    pub(crate) fn parse(text: &str) -> Result<Pattern, String> {
        let mut segments = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            literal.push_str(&rest[..start]);
            let from_braces = &rest[start..];
            if let Some(after) = from_braces.strip_prefix("{{{{") {
                literal.push_str("{{");
                rest = after;
                continue;
            }
            let body = &from_braces[2..];
            let Some(end) = body.find("}}") else {
                return Err("`{{` without a closing `}}` (write `{{{{` for a literal `{{`)".into());
            };
            let name = body[..end].trim();
            if !is_param_name(name) {
                return Err(format!(
                    "invalid placeholder `{{{{{}}}}}`: expected `{{{{ parameter_name }}}}` \
                     (write `{{{{{{{{` for a literal `{{{{`)",
                    &body[..end]
                ));
            }
            if !literal.is_empty() {
                segments.push(Segment::Literal(std::mem::take(&mut literal)));
            }
            segments.push(Segment::Param(name.to_owned()));
            rest = &body[end + 2..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            segments.push(Segment::Literal(literal));
        }
        Ok(Pattern { segments })
    }

    /// The pieces in order.
    pub(crate) fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Names of the parameters used, in order of appearance (with repeats).
    pub(crate) fn params(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Param(p) => Some(p.as_str()),
            Segment::Literal(_) => None,
        })
    }

    /// The parameter name when the whole string is exactly one placeholder.
    pub(crate) fn sole_param(&self) -> Option<&str> {
        match self.segments.as_slice() {
            [Segment::Param(p)] => Some(p),
            _ => None,
        }
    }

    /// Checks that every placeholder of a shell script sits where a single-quoted word is
    /// taken literally by `sh`: not inside quotes, backticks, a comment, arithmetic or a
    /// here-document, and not right after `\` or `$`. Elsewhere the quoting added at render
    /// time would not protect the value.
    pub(crate) fn check_shell_contexts(&self) -> Result<(), String> {
        let mut lexer = ShellLexer::default();
        for segment in &self.segments {
            match segment {
                Segment::Literal(text) => text.chars().for_each(|c| lexer.feed(c)),
                Segment::Param(name) => {
                    if let Some(place) = lexer.unsafe_place() {
                        return Err(format!(
                            "placeholder {{{{ {name} }}}} is {place}; in a shell script write \
                             placeholders as bare words (each value is quoted for you)"
                        ));
                    }
                    lexer.feed_word();
                }
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Quote {
    #[default]
    None,
    Single,
    Double,
    Backtick,
    Comment,
}

/// Just enough of the POSIX shell grammar to know whether a position is a bare word.
#[derive(Debug, Default)]
struct ShellLexer {
    quote: Quote,
    escaped: bool,
    prev: Option<char>,
    arithmetic_depth: usize,
    heredoc: bool,
}

impl ShellLexer {
    fn feed(&mut self, c: char) {
        match self.quote {
            Quote::None => {
                if self.escaped {
                    self.escaped = false;
                } else {
                    match c {
                        '\\' => self.escaped = true,
                        '\'' => self.quote = Quote::Single,
                        '"' => self.quote = Quote::Double,
                        '`' => self.quote = Quote::Backtick,
                        '#' if self
                            .prev
                            .is_none_or(|p| p.is_whitespace() || ";&|()<>".contains(p)) =>
                        {
                            self.quote = Quote::Comment
                        }
                        '<' if self.prev == Some('<') => self.heredoc = true,
                        '(' if self.arithmetic_depth > 0 => self.arithmetic_depth += 1,
                        '(' if self.prev == Some('(') => self.arithmetic_depth = 2,
                        ')' if self.arithmetic_depth > 0 => self.arithmetic_depth -= 1,
                        _ => {}
                    }
                }
            }
            Quote::Single => {
                if c == '\'' {
                    self.quote = Quote::None;
                }
            }
            Quote::Double | Quote::Backtick => {
                let close = if self.quote == Quote::Double {
                    '"'
                } else {
                    '`'
                };
                if self.escaped {
                    self.escaped = false;
                } else if c == '\\' {
                    self.escaped = true;
                } else if c == close {
                    self.quote = Quote::None;
                }
            }
            Quote::Comment => {
                if c == '\n' {
                    self.quote = Quote::None;
                }
            }
        }
        self.prev = Some(c);
    }

    /// A placeholder's value counts as ordinary word characters.
    fn feed_word(&mut self) {
        self.prev = Some('w');
    }

    fn unsafe_place(&self) -> Option<&'static str> {
        Some(match self.quote {
            Quote::Single => "inside single quotes",
            Quote::Double => "inside double quotes",
            Quote::Backtick => "inside backticks",
            Quote::Comment => "inside a comment",
            Quote::None if self.heredoc => "after a here-document (`<<`)",
            Quote::None if self.escaped => "right after a backslash",
            Quote::None if self.prev == Some('$') => "right after `$`",
            Quote::None if self.arithmetic_depth > 0 => "inside arithmetic `(( ))`",
            Quote::None => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(s: &str) -> Segment {
        Segment::Literal(s.into())
    }
    fn param(s: &str) -> Segment {
        Segment::Param(s.into())
    }

    #[test]
    fn parses_placeholders_and_escapes() {
        let p = Pattern::parse("--frames={{frames}}-{{ end }}").unwrap();
        assert_eq!(
            p.segments(),
            [lit("--frames="), param("frames"), lit("-"), param("end")]
        );
        assert_eq!(p.params().collect::<Vec<_>>(), ["frames", "end"]);
        assert_eq!(p.sole_param(), None);
        assert_eq!(
            Pattern::parse("{{  scene }}").unwrap().sole_param(),
            Some("scene")
        );
        let escaped = Pattern::parse("{{{{ not_a_param }} and {{x}}").unwrap();
        assert_eq!(
            escaped.segments(),
            [lit("{{ not_a_param }} and "), param("x")]
        );
        assert_eq!(
            Pattern::parse("}} alone").unwrap().segments(),
            [lit("}} alone")]
        );
        assert!(Pattern::parse("").unwrap().segments().is_empty());
        for bad in [
            "{{",
            "{{ x",
            "{{ }}",
            "{{ a b }}",
            "{{ 1x }}",
            "{{{ x }}",
            "{{ a.b }}",
        ] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn shell_placeholders_must_be_bare_words() {
        for good in [
            "printf '%s\\n' {{ msg }}",
            "echo --name={{msg}} \"done\" 'x' {{ msg }}",
            "cd out && render {{scene}} # done",
            "echo a#b {{msg}}",
            "x=$(echo {{msg}})",
            "echo $((1 + 2)) {{msg}}",
            "echo \\\\ {{msg}}",
        ] {
            let p = Pattern::parse(good).unwrap();
            assert!(p.check_shell_contexts().is_ok(), "{good:?} refused");
        }
        for (bad, why) in [
            ("echo \"{{msg}}\"", "double quotes"),
            ("echo '{{msg}}'", "single quotes"),
            ("echo `{{msg}}`", "backticks"),
            ("echo hi # {{msg}}", "comment"),
            ("echo \\{{msg}}", "backslash"),
            ("echo ${{msg}}", "`$`"),
            ("echo $(( {{msg}} + 1 ))", "arithmetic"),
            ("cat <<EOF\n{{msg}}\nEOF", "here-document"),
            ("echo \"a \\\" {{msg}}\"", "double quotes"),
        ] {
            let err = Pattern::parse(bad)
                .unwrap()
                .check_shell_contexts()
                .unwrap_err();
            assert!(err.contains(why) && err.contains("msg"), "{bad:?}: {err}");
        }
    }
}
