//! Docs that cannot drift: every Rust snippet of the README and of every page of docs/ is a
//! verbatim copy of lines of an example cargo compiles, and every Python snippet one of lines
//! of `examples/python/`, which the suite runs (`python_example.rs`); every shell command
//! names packages, targets and scripts that exist and flags the stock binaries accept.

use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("cli/ is inside the workspace")
        .to_owned()
}

/// The text of every file ending in `.<extension>` under `dirs` and their subdirectories.
fn sources(mut dirs: Vec<PathBuf>, extension: &str) -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    dirs.retain(|d| d.is_dir());
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("readable") {
            let path = entry.expect("readable").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == extension) {
                let text = std::fs::read_to_string(&path).expect("readable");
                files.push((path, text));
            }
        }
    }
    files
}

/// The text of every `*.rs` file under the workspace's `examples/` directories.
fn examples() -> Vec<(PathBuf, String)> {
    let dirs = ["common", "producer", "worker", "cli"]
        .iter()
        .map(|c| repo().join(c).join("examples"))
        .collect();
    sources(dirs, "rs")
}

/// The README and every page of docs/, by their path in the repository.
fn docs() -> Vec<String> {
    let mut pages: Vec<String> = sources(vec![repo().join("docs")], "md")
        .into_iter()
        .map(|(path, _)| {
            let relative = path.strip_prefix(repo()).expect("under the repository");
            relative.to_str().expect("UTF-8 path").to_owned()
        })
        .collect();
    pages.sort();
    pages.insert(0, "README.md".to_owned());
    pages
}

/// The fenced blocks of `markdown` whose info string starts with `language`, with their line
/// and info string.
fn blocks(markdown: &str, language: &str) -> Vec<(usize, String, String)> {
    let mut blocks = Vec::new();
    let mut open: Option<(usize, String, String)> = None;
    for (number, line) in markdown.lines().enumerate() {
        match &mut open {
            None => {
                if let Some(info) = line.strip_prefix("```").filter(|i| i.starts_with(language)) {
                    open = Some((number + 1, info.to_owned(), String::new()));
                }
            }
            Some((_, _, body)) if line.trim_end() == "```" => {
                let _ = body;
                blocks.push(open.take().expect("open"));
            }
            Some((_, _, body)) => {
                body.push_str(line);
                body.push('\n');
            }
        }
    }
    blocks
}

#[test]
fn rust_snippets_in_the_docs_are_copied_from_compiled_examples() {
    let examples = examples();
    assert!(examples.len() >= 5, "examples found: {}", examples.len());
    let docs = docs();
    for page in ["docs/failures.md", "docs/wire-format.md", "docs/worker.md"] {
        assert!(
            docs.iter().any(|d| d == page),
            "{page} is not checked: {docs:?}"
        );
    }
    let mut checked = 0;
    for doc in &docs {
        let text = std::fs::read_to_string(repo().join(doc)).expect("readable");
        for (line, info, body) in blocks(&text, "rust") {
            assert_eq!(
                info, "rust",
                "{doc}:{line}: a `{info}` block is never compiled; copy it from an example"
            );
            assert!(
                examples.iter().any(|(_, source)| source.contains(&body)),
                "{doc}:{line}: this snippet is not in any example (worker/examples, \
                 producer/examples); copy it from one verbatim:\n{body}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 14, "only {checked} snippets checked");
}

#[test]
fn python_snippets_in_the_docs_are_copied_from_the_python_examples() {
    let scripts = sources(vec![repo().join("examples/python")], "py");
    assert!(scripts.len() >= 3, "scripts found: {}", scripts.len());
    let mut checked = 0;
    for doc in docs() {
        let text = std::fs::read_to_string(repo().join(&doc)).expect("readable");
        for (line, info, body) in blocks(&text, "python") {
            assert_eq!(
                info, "python",
                "{doc}:{line}: a `{info}` block is never run"
            );
            assert!(
                scripts.iter().any(|(_, source)| source.contains(&body)),
                "{doc}:{line}: this snippet is not in any script of examples/python; copy it \
                 from one verbatim:\n{body}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 1, "only {checked} snippets checked");
}

/// The commands of the `sh` blocks of `markdown`, with their block's line: continued lines
/// joined, comments left out.
fn commands(markdown: &str) -> Vec<(usize, String)> {
    let mut commands = Vec::new();
    for (line, _, body) in blocks(markdown, "sh") {
        let mut command = String::new();
        for text in body.lines() {
            let text = match text.find(" #") {
                Some(comment) => &text[..comment],
                None if text.trim_start().starts_with('#') => "",
                None => text,
            };
            match text.trim_end().strip_suffix('\\') {
                Some(continued) => command.push_str(continued),
                None => {
                    command.push_str(text);
                    if !command.trim().is_empty() {
                        commands.push((line, command.trim().to_owned()));
                    }
                    command.clear();
                }
            }
        }
    }
    commands
}

/// The `--flags` of a command line, usage brackets and values left out.
fn flags<'a>(words: &[&'a str]) -> Vec<&'a str> {
    words
        .iter()
        .map(|w| w.trim_start_matches(['[', '(']))
        .filter(|w| w.starts_with("--"))
        .map(|w| {
            w.split('=')
                .next()
                .unwrap_or(w)
                .trim_end_matches([']', ')'])
        })
        .collect()
}

/// Checks that a stock binary run as `words` (its name first) knows every flag given.
fn check_binary_flags(doc: &str, line: usize, words: &[&str]) {
    let name = words[0].rsplit('/').next().expect("a word");
    let subcommands: Vec<&str> = words[1..]
        .iter()
        .copied()
        .take_while(|w| {
            [
                "publish",
                "stats",
                "serve",
                "dead-letters",
                "list",
                "replay",
                "purge",
                "tasks",
                "status",
                "workers",
            ]
            .contains(w)
        })
        .collect();
    let help = std::process::Command::new(crate::binary(name))
        .args(&subcommands)
        .arg("--help")
        .output()
        .expect("the binary runs");
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in flags(words) {
        let known = help.match_indices(flag).any(|(at, _)| {
            let next = help[at + flag.len()..].chars().next();
            !next.is_some_and(|c| c.is_alphanumeric() || c == '-')
        });
        assert!(
            known,
            "{doc}:{line}: `{name} {}` has no flag {flag}",
            subcommands.join(" ")
        );
    }
}

/// The stock binaries.
const BINARIES: [&str; 3] = ["warren-worker", "warren-producer", "warren-scheduler"];

/// The workspace's packages and their directories.
const PACKAGES: [(&str, &str); 6] = [
    ("warren-common", "common"),
    ("warren-producer", "producer"),
    ("warren-worker", "worker"),
    ("warren-cli", "cli"),
    ("warren-tests", "tests"),
    ("warren-bench", "bench"),
];

/// Checks that a `cargo` command names a package, binary, example and test target that exist,
/// and that a binary it runs knows the flags given after `--`.
fn check_cargo(doc: &str, line: usize, words: &[&str]) {
    let after = |flag: &str| {
        let at = words.iter().position(|w| *w == flag)?;
        words.get(at + 1).copied()
    };
    let dir = after("-p").map(|package| {
        let found = PACKAGES.iter().find(|(name, _)| *name == package);
        found
            .unwrap_or_else(|| panic!("{doc}:{line}: no package {package}"))
            .1
    });
    // An example (`--example`) or a test target (`--test`): `<dir>/<kind>/<name>.rs` or
    // `<dir>/<kind>/<name>/main.rs`.
    for (flag, kind) in [("--example", "examples"), ("--test", "tests")] {
        if let Some(name) = after(flag) {
            let dir = dir.unwrap_or_else(|| panic!("{doc}:{line}: {flag} without -p"));
            let path = repo().join(dir).join(kind);
            assert!(
                path.join(format!("{name}.rs")).is_file()
                    || path.join(name).join("main.rs").is_file(),
                "{doc}:{line}: no {flag} target {name} in {dir}/{kind}"
            );
        }
    }
    if let Some(bin) = after("--bin") {
        assert!(BINARIES.contains(&bin), "{doc}:{line}: no binary {bin}");
        if let Some(rest) = words.iter().position(|w| *w == "--") {
            let run: Vec<&str> = std::iter::once(bin)
                .chain(words[rest + 1..].iter().copied())
                .collect();
            check_binary_flags(doc, line, &run);
        }
    }
}

#[test]
fn commands_in_the_docs_name_packages_targets_files_and_flags_that_exist() {
    let mut checked = 0;
    for doc in docs() {
        let text = std::fs::read_to_string(repo().join(&doc)).expect("readable");
        for (line, command) in commands(&text) {
            let words: Vec<&str> = command.split_whitespace().collect();
            let program = words[0].rsplit('/').next().unwrap_or(words[0]);
            match program {
                "cargo" => check_cargo(&doc, line, &words),
                "python3" if words.get(1).is_some_and(|w| w.ends_with(".py")) => {
                    let script = repo().join(words[1]);
                    assert!(script.is_file(), "{doc}:{line}: no script {}", words[1]);
                }
                _ if BINARIES.contains(&program) => check_binary_flags(&doc, line, &words),
                _ => continue,
            }
            checked += 1;
        }
    }
    assert!(checked >= 30, "only {checked} commands checked");
}
