//! Docs that cannot drift: every Rust snippet of the README and of every page of docs/ is a
//! verbatim copy of lines of an example cargo compiles, and every Python snippet one of lines
//! of `examples/python/`, which the suite runs (`python_example.rs`).

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
