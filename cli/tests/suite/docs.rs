//! Docs that cannot drift: every Rust snippet of the README, docs/worker.md and
//! docs/scheduling.md is a verbatim copy of lines of an example the suite compiles and runs.

use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("cli/ is inside the workspace")
        .to_owned()
}

/// The text of every `*.rs` file under the workspace's `examples/` directories.
fn examples() -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    let mut dirs: Vec<PathBuf> = ["common", "producer", "worker", "cli"]
        .iter()
        .map(|c| repo().join(c).join("examples"))
        .filter(|d| d.is_dir())
        .collect();
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("readable") {
            let path = entry.expect("readable").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("readable");
                files.push((path, text));
            }
        }
    }
    files
}

/// The fenced blocks of `markdown` whose info string starts with `rust`, with their line.
fn rust_blocks(markdown: &str) -> Vec<(usize, String, String)> {
    let mut blocks = Vec::new();
    let mut open: Option<(usize, String, String)> = None;
    for (number, line) in markdown.lines().enumerate() {
        match &mut open {
            None => {
                if let Some(info) = line.strip_prefix("```").filter(|i| i.starts_with("rust")) {
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
    assert!(examples.len() >= 3, "examples found: {}", examples.len());
    let mut checked = 0;
    for doc in ["README.md", "docs/worker.md", "docs/scheduling.md"] {
        let text = std::fs::read_to_string(repo().join(doc)).expect("readable");
        for (line, info, body) in rust_blocks(&text) {
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
    assert!(checked >= 8, "only {checked} snippets checked");
}
