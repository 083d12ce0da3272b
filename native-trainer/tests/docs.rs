//! The docs name only files that exist: every relative link of README.md, docs/*.md and the
//! crates' READMEs, and every path in the first column of the READMEs' tables (the layout, each
//! crate's "file | what lives there").

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root").to_path_buf()
}

fn markdown_files() -> Vec<PathBuf> {
    let root = root();
    let mut files = vec![root.join("README.md"), root.join("native-trainer/README.md")];
    for dir in ["docs", "crates"] {
        for e in std::fs::read_dir(root.join(dir)).unwrap() {
            let p = e.unwrap().path();
            if dir == "docs" && p.extension().is_some_and(|x| x == "md") {
                files.push(p);
            } else if p.join("README.md").exists() {
                files.push(p.join("README.md"));
            }
        }
    }
    files.sort();
    files
}

/// Targets of `[text](target)` links that point into the repository.
fn relative_links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        let Some(end) = rest.find(')') else { break };
        let target = rest[..end].split('#').next().unwrap_or("").trim();
        if !target.is_empty() && !target.contains("://") && !target.starts_with("mailto:") {
            out.push(target.to_string());
        }
    }
    out
}

/// Backticked paths in the first cell of table rows (`| `a`, `b` | ... |`).
fn table_paths(text: &str) -> Vec<String> {
    const EXTENSIONS: [&str; 10] = [".rs", ".md", ".sh", ".mjs", ".js", ".html", ".toml", ".wgsl", ".json", ".py"];
    let mut out = Vec::new();
    for line in text.lines().filter(|l| l.starts_with("| `")) {
        let cell = line[1..].split('|').next().unwrap_or("");
        for (k, token) in cell.split('`').enumerate() {
            let pathlike = k % 2 == 1
                && !token.starts_with('-')
                && !token.contains([' ', '{', '<', '*', '$', '('])
                && (token.contains('/') || EXTENSIONS.iter().any(|e| token.ends_with(e)));
            if pathlike {
                out.push(token.to_string());
            }
        }
    }
    out
}

#[test]
fn every_link_and_table_path_of_the_docs_exists() {
    let root = root();
    let mut missing = Vec::new();
    let mut checked = 0;
    for md in markdown_files() {
        let text = std::fs::read_to_string(&md).unwrap();
        let here = md.parent().unwrap();
        for link in relative_links(&text) {
            checked += 1;
            if !here.join(&link).exists() {
                missing.push(format!("{}: link {link}", md.display()));
            }
        }
        // Table paths of the READMEs (docs/ tables also list files a run writes): relative to the
        // README's folder (a crate's README names its own files), or to the workspace root.
        let readme = md.file_name().is_some_and(|n| n == "README.md");
        for p in table_paths(&text).into_iter().filter(|_| readme) {
            checked += 1;
            if !here.join(&p).exists() && !root.join(&p).exists() {
                missing.push(format!("{}: table path {p}", md.display()));
            }
        }
    }
    assert!(checked > 50, "only {checked} paths found: the parser reads too little");
    assert!(missing.is_empty(), "the docs name files that do not exist:\n{}", missing.join("\n"));
}
