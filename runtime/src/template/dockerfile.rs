//! The `e2b.Dockerfile` subset cellbox templates are built from: `FROM` (the
//! default template or another cellbox template), `ARG`, `ENV`, `WORKDIR`,
//! `USER`, `RUN` and `COPY`; comments, blank lines and `\` continuations.
//! Every error names its line.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

/// Names under which `FROM` means cellbox's default template (E2B's images
/// and the names E2B's SDKs use).
pub const DEFAULT_BASES: &[&str] = &[
    "e2bdev/code-interpreter",
    "e2bdev/base",
    "code-interpreter-v1",
    "code-interpreter",
    "base",
    "cellbox",
];

/// One instruction, with the line it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub line: usize,
    pub instruction: Instruction,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instruction {
    /// Runs a shell command (`/bin/sh -c`), as the current user, in the
    /// current folder, with the build arguments and variables set.
    Run(String),
    /// Copies files of the build context (the Dockerfile's folder) to `dest`.
    Copy { sources: Vec<String>, dest: String },
    /// Sets variables for later steps and for the template's sandboxes.
    Env(Vec<(String, String)>),
    /// Sets (and makes) the folder of later steps and of the sandboxes.
    Workdir(String),
    /// Sets the account later steps run as.
    User(String),
}

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    /// What `FROM` names: `None` for the default template, else another
    /// cellbox template's name.
    pub base: Option<String>,
    pub steps: Vec<Step>,
    /// The `ARG` values (variables of the build's `RUN`s, not of sandboxes).
    pub args: BTreeMap<String, String>,
}

fn error(line: usize, message: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("e2b.Dockerfile line {line}: {message}"))
}

impl Dockerfile {
    /// Parses `text`; `args` override `ARG` defaults (`--build-arg`).
    pub fn parse(text: &str, args: &BTreeMap<String, String>) -> Result<Dockerfile> {
        let mut base = None;
        let mut steps = Vec::new();
        // ARG and ENV values, substituted into later instructions.
        let mut vars: BTreeMap<String, String> = BTreeMap::new();
        let mut arg_names = std::collections::BTreeSet::new();
        for (line, logical) in logical_lines(text) {
            let (keyword, rest) = match logical.split_once(char::is_whitespace) {
                Some((k, r)) => (k, r.trim()),
                None => (logical.as_str(), ""),
            };
            let keyword = keyword.to_ascii_uppercase();
            if keyword != "FROM" && keyword != "ARG" && base.is_none() && steps.is_empty() {
                if !matches!(
                    keyword.as_str(),
                    "RUN" | "COPY" | "ENV" | "WORKDIR" | "USER"
                ) {
                    return Err(error(line, unsupported(&keyword)));
                }
                return Err(error(line, format!("{keyword} before FROM")));
            }
            if rest.is_empty() {
                return Err(error(line, format!("{keyword} needs an argument")));
            }
            let substituted = || substitute(rest, &vars).map_err(|m| error(line, m));
            match keyword.as_str() {
                "FROM" => {
                    if base.is_some() {
                        return Err(error(
                            line,
                            "a second FROM (multi-stage builds are not supported)",
                        ));
                    }
                    let image = substituted()?;
                    let image = image.split_whitespace().next().unwrap_or_default();
                    let name = image.split(':').next().unwrap_or(image);
                    base = Some(if DEFAULT_BASES.contains(&name) {
                        String::new()
                    } else if super::store::valid_name(image) {
                        image.to_string()
                    } else {
                        return Err(error(
                            line,
                            format!(
                                "FROM {image}: templates build on cellbox's default template (FROM e2bdev/code-interpreter:latest) or on another cellbox template"
                            ),
                        ));
                    });
                }
                "ARG" => {
                    let (name, default) = match rest.split_once('=') {
                        Some((n, d)) => (n.trim(), Some(unquote(d.trim()))),
                        None => (rest, None),
                    };
                    check_var_name(name).map_err(|m| error(line, m))?;
                    let value = args.get(name).cloned().or(default).unwrap_or_default();
                    vars.insert(name.to_string(), value);
                    arg_names.insert(name.to_string());
                }
                "ENV" => {
                    let pairs = parse_env(&substituted()?).map_err(|m| error(line, m))?;
                    for (k, v) in &pairs {
                        vars.insert(k.clone(), v.clone());
                    }
                    steps.push(Step {
                        line,
                        instruction: Instruction::Env(pairs),
                    });
                }
                "WORKDIR" => steps.push(Step {
                    line,
                    instruction: Instruction::Workdir(unquote(&substituted()?)),
                }),
                "USER" => steps.push(Step {
                    line,
                    instruction: Instruction::User(substituted()?),
                }),
                "RUN" => steps.push(Step {
                    line,
                    instruction: Instruction::Run(exec_form(rest).map_err(|m| error(line, m))?),
                }),
                "COPY" | "ADD" => {
                    let words = words(&substituted()?).map_err(|m| error(line, m))?;
                    if let Some(flag) = words.iter().find(|w| w.starts_with("--")) {
                        return Err(error(line, format!("{keyword} {flag} is not supported")));
                    }
                    if words.len() < 2 {
                        return Err(error(
                            line,
                            format!("{keyword} needs a source and a destination"),
                        ));
                    }
                    let (dest, sources) = words.split_last().expect("two words");
                    if keyword == "ADD" && sources.iter().any(|s| s.contains("://")) {
                        return Err(error(
                            line,
                            "ADD from a URL is not supported (RUN curl instead)",
                        ));
                    }
                    steps.push(Step {
                        line,
                        instruction: Instruction::Copy {
                            sources: sources.to_vec(),
                            dest: dest.clone(),
                        },
                    });
                }
                other => return Err(error(line, unsupported(other))),
            }
        }
        match base {
            Some(base) => Ok(Dockerfile {
                base: (!base.is_empty()).then_some(base),
                steps,
                args: vars
                    .into_iter()
                    .filter(|(name, _)| arg_names.contains(name))
                    .collect(),
            }),
            None => Err(Error::InvalidArgument(
                "e2b.Dockerfile has no FROM line (start it with FROM e2bdev/code-interpreter:latest)".into(),
            )),
        }
    }
}

fn unsupported(keyword: &str) -> String {
    format!(
        "{keyword} is not supported (cellbox templates know FROM, ARG, ENV, WORKDIR, USER, RUN, COPY and ADD)"
    )
}

/// Lines joined at trailing backslashes, without comments and blank lines,
/// each with the number of the line it starts on.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut lines = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (index, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_none()) {
            continue;
        }
        let (start, mut text) = current.take().unwrap_or((index + 1, String::new()));
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                text.push_str(part);
                text.push(' ');
                current = Some((start, text));
            }
            None => {
                text.push_str(trimmed);
                lines.push((start, text));
            }
        }
    }
    if let Some((start, text)) = current {
        lines.push((start, text.trim_end().to_string()));
    }
    lines
}

fn check_var_name(name: &str) -> std::result::Result<(), String> {
    let ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!("`{name}` is not a variable name"))
    }
}

/// `$NAME` and `${NAME}` replaced by their ARG/ENV values (unknown: empty).
fn substitute(text: &str, vars: &BTreeMap<String, String>) -> std::result::Result<String, String> {
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' && chars.peek() == Some(&'$') {
            out.push('$');
            chars.next();
            continue;
        }
        if c != '$' {
            out.push(c);
            continue;
        }
        let name: String = if chars.peek() == Some(&'{') {
            chars.next();
            let name: String = chars.by_ref().take_while(|&c| c != '}').collect();
            check_var_name(&name).map_err(|_| format!("`${{{name}}}` is not a variable"))?;
            name
        } else {
            let mut name = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_ascii_alphanumeric() || c == '_' {
                    name.push(c);
                    chars.next();
                } else {
                    break;
                }
            }
            if name.is_empty() {
                out.push('$');
                continue;
            }
            name
        };
        out.push_str(vars.get(&name).map_or("", String::as_str));
    }
    Ok(out)
}

fn unquote(text: &str) -> String {
    let quoted = text.len() >= 2
        && ((text.starts_with('"') && text.ends_with('"'))
            || (text.starts_with('\'') && text.ends_with('\'')));
    if quoted {
        text[1..text.len() - 1].to_string()
    } else {
        text.to_string()
    }
}

/// Words split at white space, with double or single quotes grouping.
fn words(text: &str) -> std::result::Result<Vec<String>, String> {
    if text.trim_start().starts_with('[') {
        return serde_json::from_str::<Vec<String>>(text)
            .map_err(|e| format!("a JSON list that does not parse: {e}"));
    }
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote = None;
    let mut in_word = false;
    for c in text.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err("an unclosed quote".into());
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// `ENV K=V K2="V 2"` or the old `ENV K V`.
fn parse_env(text: &str) -> std::result::Result<Vec<(String, String)>, String> {
    let first = text.split_whitespace().next().unwrap_or_default();
    if !first.contains('=') {
        let (name, value) = text
            .split_once(char::is_whitespace)
            .ok_or("ENV needs a value")?;
        check_var_name(name)?;
        return Ok(vec![(name.to_string(), value.trim().to_string())]);
    }
    words(text)?
        .into_iter()
        .map(|pair| {
            let (name, value) = pair
                .split_once('=')
                .ok_or(format!("`{pair}` is not NAME=VALUE"))?;
            check_var_name(name)?;
            Ok((name.to_string(), value.to_string()))
        })
        .collect()
}

/// A RUN's command: the shell form as written, the exec form (a JSON list)
/// quoted for the shell.
fn exec_form(text: &str) -> std::result::Result<String, String> {
    if !text.starts_with('[') {
        return Ok(text.to_string());
    }
    let argv = words(text)?;
    if argv.is_empty() {
        return Err("RUN with an empty list".into());
    }
    Ok(argv
        .iter()
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Dockerfile> {
        Dockerfile::parse(text, &BTreeMap::new())
    }

    #[test]
    fn a_typical_dockerfile_parses() {
        let text = "# comment\nARG VERSION=6.1\nFROM e2bdev/code-interpreter:latest\n\nENV MODE=test GREETING=\"hello world\"\nWORKDIR /opt/$MODE\nRUN pip install \\\n    cowsay==${VERSION}\nCOPY data.txt \"my dir/\"\nUSER user\nRUN [\"echo\", \"it's\"]\n";
        let file = parse(text).unwrap();
        assert_eq!(file.base, None);
        let steps: Vec<_> = file
            .steps
            .iter()
            .map(|s| (s.line, s.instruction.clone()))
            .collect();
        assert_eq!(
            steps,
            vec![
                (
                    5,
                    Instruction::Env(vec![
                        ("MODE".into(), "test".into()),
                        ("GREETING".into(), "hello world".into())
                    ])
                ),
                (6, Instruction::Workdir("/opt/test".into())),
                (
                    7,
                    Instruction::Run("pip install  cowsay==${VERSION}".into())
                ),
                (
                    9,
                    Instruction::Copy {
                        sources: vec!["data.txt".into()],
                        dest: "my dir/".into()
                    }
                ),
                (10, Instruction::User("user".into())),
                (11, Instruction::Run("'echo' 'it'\\''s'".into())),
            ]
        );
        let other = Dockerfile::parse(
            "FROM mine\nARG X\nENV Y=$X",
            &[("X".into(), "1".into())].into(),
        )
        .unwrap();
        assert_eq!(other.base.as_deref(), Some("mine"));
        assert_eq!(
            other.steps[0].instruction,
            Instruction::Env(vec![("Y".into(), "1".into())])
        );
    }

    #[test]
    fn bad_dockerfiles_name_the_line() {
        for (text, line, says) in [
            (
                "FROM e2bdev/code-interpreter\nEXPOSE 80",
                2,
                "EXPOSE is not supported",
            ),
            ("RUN true", 1, "RUN before FROM"),
            ("FROM python:3.11", 1, "FROM python:3.11"),
            ("FROM base\nFROM base", 2, "a second FROM"),
            ("FROM base\nCOPY only", 2, "a source and a destination"),
            ("FROM base\nCOPY --chown=user a b", 2, "--chown"),
            ("FROM base\nENV 1X=2", 2, "not a variable name"),
            ("FROM base\n\nRUN", 3, "needs an argument"),
            ("FROM base\nCOPY \"a b", 2, "unclosed quote"),
        ] {
            let message = parse(text).unwrap_err().to_string();
            assert!(
                message.contains(&format!("line {line}: ")) && message.contains(says),
                "{text:?}: {message}"
            );
        }
        assert!(
            parse("# nothing\n")
                .unwrap_err()
                .to_string()
                .contains("no FROM")
        );
    }
}
