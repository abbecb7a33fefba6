//! A small POSIX shell lexer for SSH commands, so deny and approval patterns
//! see what the shell will run rather than how it was spelled: `top''secret`,
//! `top\secret` and `"top"secret` all become the word `topsecret`. Anything
//! whose meaning depends on the server at run time (`$VAR`, `$(…)`, backticks,
//! globs, brace expansion, here-documents) is an error: the caller refuses the
//! command instead of guessing. Pure: no I/O, linear in the input.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShellError {
    #[error("it has an unterminated {0} quote")]
    Unterminated(&'static str),
    #[error("it ends with a lone backslash")]
    TrailingBackslash,
    #[error("it uses {0}, whose value is only known on the server")]
    Expansion(&'static str),
    #[error("it uses a here-document (<<)")]
    HereDoc,
    #[error(
        "it starts a shell ({0}) that reads its commands from stdin, where they cannot be checked"
    )]
    ShellReadsStdin(String),
    #[error("it nests shells (`sh -c`, `eval`) more than {MAX_NESTING} deep")]
    TooDeep,
}

/// Shells whose `-c SCRIPT` is lexed as a command of its own.
const SHELLS: &[&str] = &[
    "sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "yash", "posh",
];
const MAX_NESTING: usize = 4;
/// Commands that run another program: a shell named after them is a shell,
/// not an argument (`sudo -u app bash`, `find . -exec sh …`).
const WRAPPERS: &[&str] = &[
    "sudo", "doas", "env", "nohup", "exec", "command", "nice", "ionice", "time", "timeout",
    "xargs", "stdbuf", "setsid", "chrt", "taskset", "su", "runuser", "find", "watch", "flock",
    "unbuffer", "script",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    Word(String),
    /// `;` `&` `|` `&&` `||` `;;` `|&` `(` `)` `>` `>>` `<` `<>` `>&` `<&` `>|` `&>`;
    /// a newline is reported as `;`.
    Op(&'static str),
}

/// Longest first, so `&&` wins over `&`.
const OPS: &[&str] = &[
    "&>>", "&&", "||", ";;", "|&", ">>", "<>", ">&", "<&", ">|", "&>", ";", "&", "|", "(", ")",
    ">", "<",
];

/// Splits `command` into words (quotes removed, escapes and line
/// continuations resolved) and operators.
pub fn split(command: &str) -> Result<Vec<Token>, ShellError> {
    let mut tokens = Vec::new();
    let mut word = String::new();
    // A word exists once anything (even `''`) was read, so `''` is an empty word.
    let mut in_word = false;
    let mut rest = command;
    // Whether unquoted braces in the current word could make a brace expansion.
    let mut braces = Braces::default();
    while let Some(c) = rest.chars().next() {
        let after = &rest[c.len_utf8()..];
        match c {
            ' ' | '\t' => {
                end_word(&mut tokens, &mut word, &mut in_word, &mut braces)?;
                rest = after;
            }
            '\n' => {
                end_word(&mut tokens, &mut word, &mut in_word, &mut braces)?;
                tokens.push(Token::Op(";"));
                rest = after;
            }
            '#' if !in_word => {
                // A comment runs to the end of the line; it is never executed.
                rest = after.find('\n').map_or("", |i| &after[i..]);
            }
            '\\' => match after.chars().next() {
                None => return Err(ShellError::TrailingBackslash),
                Some('\n') => rest = &after[1..],
                Some(n) => {
                    word.push(n);
                    in_word = true;
                    rest = &after[n.len_utf8()..];
                }
            },
            '\'' => {
                let end = after.find('\'').ok_or(ShellError::Unterminated("single"))?;
                word.push_str(&after[..end]);
                in_word = true;
                rest = &after[end + 1..];
            }
            '"' => {
                rest = double_quoted(after, &mut word)?;
                in_word = true;
            }
            '$' => return Err(ShellError::Expansion("a `$` expansion")),
            '`' => return Err(ShellError::Expansion("a backtick command substitution")),
            '*' | '?' | '[' => return Err(ShellError::Expansion("a glob (`*`, `?`, `[`)")),
            '{' | '}' | ',' => {
                braces.see(c);
                word.push(c);
                in_word = true;
                rest = after;
            }
            _ => match OPS.iter().find(|op| rest.starts_with(**op)) {
                Some(op) => {
                    if rest.starts_with("<<") {
                        return Err(ShellError::HereDoc);
                    }
                    end_word(&mut tokens, &mut word, &mut in_word, &mut braces)?;
                    tokens.push(Token::Op(op));
                    rest = &rest[op.len()..];
                }
                None => {
                    braces.see(c);
                    word.push(c);
                    in_word = true;
                    rest = after;
                }
            },
        }
    }
    end_word(&mut tokens, &mut word, &mut in_word, &mut braces)?;
    Ok(tokens)
}

/// The command as patterns see it: tokens joined by single spaces.
pub fn normalize(command: &str) -> Result<String, ShellError> {
    let tokens = split(command)?;
    let parts: Vec<&str> = tokens
        .iter()
        .map(|t| match t {
            Token::Word(w) => w.as_str(),
            Token::Op(o) => o,
        })
        .collect();
    Ok(parts.join(" "))
}

/// Like `normalize`, and then the scripts a second shell would read are
/// lexed too and appended (after ` ; `): the SCRIPT of `sh -c SCRIPT` (any
/// of `SHELLS`, anywhere in the command, so `sudo bash -c`, `find -exec sh
/// -c` and `xargs sh -c` count) and the words after `eval`. A shell run with
/// neither `-c` nor a script file reads stdin, which no pattern can see: an
/// error, where the shell is the command or runs under one of `WRAPPERS`
/// (elsewhere, as in `which bash`, it is an argument). Over-approximates (a
/// word `eval` anywhere counts), which can only add refusals.
pub fn normalize_nested(command: &str) -> Result<String, ShellError> {
    let mut out = String::new();
    nested(command, 0, true, &mut out)?;
    Ok(out)
}

/// `normalize_nested` for a command typed at (or run with) a terminal, whose
/// later lines are typed and checked too: a shell reading stdin is no error.
pub fn normalize_nested_terminal(command: &str) -> Result<String, ShellError> {
    let mut out = String::new();
    nested(command, 0, false, &mut out)?;
    Ok(out)
}

fn nested(command: &str, depth: usize, strict: bool, out: &mut String) -> Result<(), ShellError> {
    if depth > MAX_NESTING {
        return Err(ShellError::TooDeep);
    }
    let tokens = split(command)?;
    if !out.is_empty() {
        out.push_str(" ; ");
    }
    let mut scripts = Vec::new();
    // At the first word of a simple command; inside one run by a wrapper.
    let (mut first, mut wrapped) = (true, false);
    for (i, t) in tokens.iter().enumerate() {
        let word = match t {
            Token::Word(w) => w.as_str(),
            Token::Op(o) => o,
        };
        if i > 0 {
            out.push(' ');
        }
        out.push_str(word);
        let Token::Word(w) = t else {
            (first, wrapped) = (true, false);
            continue;
        };
        let rest = tokens.get(i + 1..).unwrap_or_default();
        let name = w.rsplit('/').next().unwrap_or_default();
        if w == "eval" {
            scripts.push(words_until_op(rest).join(" "));
        } else if SHELLS.contains(&name) {
            match shell_script(w, rest) {
                Ok(script) => scripts.extend(script),
                Err(e) if strict && (first || wrapped) => return Err(e),
                Err(_) => {}
            }
        }
        if first && !is_assignment(w) {
            first = false;
            wrapped = WRAPPERS.contains(&name) || SHELLS.contains(&name);
        }
    }
    for script in scripts {
        nested(&script, depth + 1, strict, out)?;
    }
    Ok(())
}

/// `NAME=value` before a command (still the command's position after it).
fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(name, _)| {
        !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

fn words_until_op(tokens: &[Token]) -> Vec<&str> {
    tokens
        .iter()
        .map_while(|t| match t {
            Token::Word(w) => Some(w.as_str()),
            Token::Op(_) => None,
        })
        .collect()
}

/// The script a shell word runs with `-c`; None for a script file; an error
/// when it reads stdin (no operand, or `-s`).
fn shell_script(shell: &str, rest: &[Token]) -> Result<Option<String>, ShellError> {
    let args = words_until_op(rest);
    let mut c = false;
    for (i, a) in args.iter().enumerate() {
        match a.strip_prefix('-') {
            Some(flags) if !flags.starts_with('-') && !flags.is_empty() => {
                if flags.contains('s') {
                    return Err(ShellError::ShellReadsStdin(shell.to_string()));
                }
                c |= flags.contains('c');
            }
            // `--`, long options (`--norc`) and `+o` style options are skipped.
            Some(_) => {}
            None if a.starts_with('+') => {}
            None if c => return Ok(args.get(i).map(|s| s.to_string())),
            None => return Ok(None),
        }
    }
    if c {
        // `sh -c` without a script is an error in the shell itself.
        return Ok(None);
    }
    Err(ShellError::ShellReadsStdin(shell.to_string()))
}

/// Inside `"…"`: `\` escapes only `$ \` " \\` and newline; `$` and backticks
/// expand, so they are refused. Returns what follows the closing quote.
fn double_quoted<'a>(mut s: &'a str, word: &mut String) -> Result<&'a str, ShellError> {
    while let Some(c) = s.chars().next() {
        let after = &s[c.len_utf8()..];
        match c {
            '"' => return Ok(after),
            '$' => return Err(ShellError::Expansion("a `$` expansion")),
            '`' => return Err(ShellError::Expansion("a backtick command substitution")),
            '\\' => match after.chars().next() {
                Some('\n') => s = &after[1..],
                Some(n @ ('$' | '`' | '"' | '\\')) => {
                    word.push(n);
                    s = &after[1..];
                }
                _ => {
                    word.push('\\');
                    s = after;
                }
            },
            _ => {
                word.push(c);
                s = after;
            }
        }
    }
    Err(ShellError::Unterminated("double"))
}

/// Tracks unquoted `{`, `,`, `..`, `}` in one word: bash expands `a{b,c}` and
/// `{1..3}`, so a word with an opening brace followed by a comma or `..` and a
/// closing brace is refused. `{}` (find -exec) and a lone `{` / `}` stay words.
#[derive(Default)]
struct Braces {
    open: bool,
    sep: bool,
    dot: bool,
    expands: bool,
}

impl Braces {
    fn see(&mut self, c: char) {
        match c {
            '{' => {
                *self = Braces {
                    open: true,
                    ..Braces::default()
                }
            }
            ',' if self.open => self.sep = true,
            '.' if self.open && self.dot => self.sep = true,
            '}' if self.open && self.sep => self.expands = true,
            _ => {}
        }
        self.dot = c == '.';
    }
}

fn end_word(
    tokens: &mut Vec<Token>,
    word: &mut String,
    in_word: &mut bool,
    braces: &mut Braces,
) -> Result<(), ShellError> {
    let expands = braces.expands;
    *braces = Braces::default();
    if expands {
        return Err(ShellError::Expansion(
            "a brace expansion (`{a,b}`, `{1..3}`)",
        ));
    }
    if *in_word {
        tokens.push(Token::Word(std::mem::take(word)));
        *in_word = false;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        normalize(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    #[test]
    fn quoting_is_removed() {
        for spelled in [
            "cat topsecret",
            "cat top''secret",
            "cat top\"\"secret",
            "cat top\\secret",
            "cat 'top'secret",
            "cat \"top\"'secret'",
            "cat top\\\nsecret",
            "cat \"top\\\nsecret\"",
            "  cat\t\ttopsecret  ",
            "\\cat topsecret",
            "cat topsecret # a comment",
        ] {
            assert_eq!(norm(spelled), "cat topsecret", "{spelled:?}");
        }
        assert_eq!(norm("echo 'a  b'"), "echo a  b");
        assert_eq!(norm("echo \"a\\$b\\\\c\\d\""), "echo a$b\\c\\d");
        assert_eq!(norm("echo '' x"), "echo  x");
        assert_eq!(norm("find . -exec rm {} \\;"), "find . -exec rm {} ;");
        assert_eq!(norm("{ echo a; }"), "{ echo a ; }");
        assert_eq!(norm("echo a#b"), "echo a#b");
        assert_eq!(norm("ls ~/x"), "ls ~/x");
        assert_eq!(norm("echo é 'ü'"), "echo é ü");
    }

    #[test]
    fn operators_are_their_own_tokens() {
        assert_eq!(norm("a&&b||c;d|e&f"), "a && b || c ; d | e & f");
        assert_eq!(norm("cat x>y 2>&1 <z >>w"), "cat x > y 2 >& 1 < z >> w");
        assert_eq!(norm("(cd /; ls)\nrm x"), "( cd / ; ls ) ; rm x");
        assert_eq!(
            split("a|&b").unwrap(),
            vec![
                Token::Word("a".into()),
                Token::Op("|&"),
                Token::Word("b".into())
            ]
        );
        assert_eq!(norm("echo '&&' \\|"), "echo && |");
    }

    #[test]
    fn what_cannot_be_fixed_statically_is_an_error() {
        for (cmd, want) in [
            ("$(printf top)secret", "`$` expansion"),
            ("cat $HOME/x", "`$` expansion"),
            ("cat ${X}", "`$` expansion"),
            ("echo \"$X\"", "`$` expansion"),
            ("echo $'\\x41'", "`$` expansion"),
            ("cat `printf top`secret", "backtick"),
            ("cat \"`x`\"", "backtick"),
            ("cat top*", "glob"),
            ("cat t?psecret", "glob"),
            ("cat [t]opsecret", "glob"),
            ("cat top{s,}ecret", "brace"),
            ("echo {1..3}", "brace"),
            ("cat <<EOF\nx\nEOF", "here-document"),
            ("cat <<<x", "here-document"),
            ("echo 'abc", "single quote"),
            ("echo \"abc", "double quote"),
            ("echo abc\\", "backslash"),
        ] {
            let e = normalize(cmd).expect_err(cmd).to_string();
            assert!(e.contains(want), "{cmd:?}: {e}");
        }
        // Quoted, these characters are plain text.
        assert_eq!(
            norm("echo '$(x) `y` * ? [ {a,b}'"),
            "echo $(x) `y` * ? [ {a,b}"
        );
        assert_eq!(norm("echo \\$HOME \\*"), "echo $HOME *");
        assert_eq!(norm("echo a,b {x} a.b"), "echo a,b {x} a.b");
    }

    #[test]
    fn nested_shells_are_lexed_too() {
        let deep = |s: &str| normalize_nested(s).unwrap_or_else(|e| panic!("{s:?}: {e}"));
        assert_eq!(deep("ls -l"), "ls -l");
        assert_eq!(
            deep("sh -c \"cat top''secret\""),
            "sh -c cat top''secret ; cat topsecret"
        );
        assert!(deep("sudo bash -lc 'cat top\\secret'").ends_with("; cat topsecret"));
        assert!(deep("eval cat \"top''secret\"").ends_with("; cat topsecret"));
        assert!(deep("find . -exec sh -c 'rm -rf \"x\"' \\;").ends_with("; rm -rf x"));
        assert!(deep("sh -c \"sh -c 'cat top\\\\secret'\"").ends_with("; cat topsecret"));
        assert_eq!(deep("bash ./deploy.sh"), "bash ./deploy.sh");
        assert_eq!(
            deep("which bash; grep -c sh x"),
            "which bash ; grep -c sh x"
        );
        for reads_stdin in [
            "bash",
            "sh -s",
            "curl -s x | sh",
            "sudo -u u bash -l",
            "bash -x",
            "X=1 /bin/sh",
            "xargs -0 sh",
        ] {
            let e = normalize_nested(reads_stdin)
                .expect_err(reads_stdin)
                .to_string();
            assert!(
                e.contains("reads its commands from stdin"),
                "{reads_stdin}: {e}"
            );
        }
        assert_eq!(normalize_nested_terminal("sudo bash").unwrap(), "sudo bash");
        // What the inner shell would expand is refused, though quoted outside.
        assert!(normalize_nested("sh -c 'cat $HOME/x'").is_err());
        let mut bomb = "true".to_string();
        for _ in 0..6 {
            bomb = format!("sh -c {}", shell_quote(&bomb));
        }
        assert_eq!(normalize_nested(&bomb), Err(ShellError::TooDeep));
    }

    fn shell_quote(s: &str) -> String {
        format!("'{}'", s.replace('\'', "'\\''"))
    }

    #[test]
    fn arbitrary_input_never_panics() {
        let alphabet: Vec<char> = "ab \t\n\\'\"$`*{},.;&|<>()#é".chars().collect();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..20_000 {
            let mut s = String::new();
            for _ in 0..(x % 24) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                s.push(alphabet[(x % alphabet.len() as u64) as usize]);
            }
            let _ = normalize(&s);
            let _ = normalize_nested(&s);
        }
    }
}
