//! The source files import each other without cycles.
//!
//! `lib.rs` draws the data flow (config → consumer → partition → table, state → changelog →
//! offset) and the modules follow it: arrows point one way, so every file can be read, tested
//! and changed knowing only the files below it. A cycle means two files each need the other
//! (typically a setting type kept in a feature that itself reads `config`), and this test
//! names it with the code that made each arrow.
//!
//! The rules, on the text of `src/` (no parser, no broker):
//! - every `.rs` file is a node (`a/mod.rs` and `a.rs` are module `a`, `lib.rs` is the crate);
//! - an edge comes from a `use` declaration and from a path written in code that starts with
//!   `crate::`, `super::` or `self::`; it points at the file that defines the name, following
//!   `pub use` re-exports (a re-export itself is not an edge);
//! - a file's reference to one of its ancestor modules' files does not count (a child reads
//!   its parent's items), but one to a sibling through the parent's re-export does;
//! - comments, string literals and inline `#[cfg(test)] mod tests { .. }` blocks are ignored.

use regex::Regex;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// File → file it imports → the path in the code that made the edge.
type Graph = BTreeMap<String, BTreeMap<String, String>>;

/// Module path of a file relative to `src/`: `state/db.rs` → `[state, db]`.
fn module_of(file: &str) -> Vec<String> {
    let mut parts: Vec<String> = file
        .trim_end_matches(".rs")
        .split('/')
        .map(String::from)
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

/// The code of a file without comments, string contents and inline test modules.
fn strip(text: &str) -> String {
    let noise =
        Regex::new(r##"//[^\n]*|r#"(?s:.*?)"#|"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)'"##).unwrap();
    let text = noise.replace_all(text, |c: &regex::Captures<'_>| match &c[0][..1] {
        "/" => "",
        "'" => "' '",
        _ => "\"\"",
    });
    let mut out = String::new();
    let mut rest: &str = &text;
    while let Some(at) = rest.find("#[cfg(test)]\nmod tests {") {
        out.push_str(&rest[..at]);
        let (mut depth, mut end) = (0, rest.len());
        for (i, c) in rest[at..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 1 => {
                    end = at + i + 1;
                    break;
                }
                '}' => depth -= 1,
                _ => {}
            }
        }
        rest = &rest[end..];
    }
    out + rest
}

/// The paths of a use tree: `a::{b, c::{d as e}}` → `[a, b]`, `[a, c, d]`.
fn expand(prefix: &[String], tree: &str, out: &mut Vec<Vec<String>>) {
    let (mut depth, mut start) = (0, 0);
    let mut items = Vec::new();
    for (i, c) in tree.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&tree[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&tree[start..]);
    for item in items.into_iter().filter(|i| !i.is_empty()) {
        let (head, inner) = match item.split_once('{') {
            Some((head, inner)) => (head, Some(inner.rfind('}').map_or(inner, |i| &inner[..i]))),
            None => (item, None),
        };
        let mut path = prefix.to_vec();
        path.extend(head.split("::").filter(|s| !s.is_empty()).map(String::from));
        match inner {
            Some(inner) => expand(&path, inner, out),
            None => out.push(path),
        }
    }
}

struct Crate {
    files: BTreeMap<Vec<String>, String>,
    defined: BTreeMap<String, BTreeSet<String>>,
    reexported: BTreeMap<String, BTreeMap<String, Vec<String>>>,
}

impl Crate {
    /// `path` as seen from `module`, from the crate root; `None` for other crates.
    fn absolute(&self, module: &[String], path: &[String]) -> Option<Vec<String>> {
        let first = path.first()?;
        if first == "crate" {
            return Some(path[1..].to_vec());
        }
        let mut base = module.to_vec();
        let mut path = path;
        if first == "super" || first == "self" {
            while let Some(seg) = path.first().filter(|s| *s == "super" || *s == "self") {
                if seg == "super" {
                    base.pop();
                }
                path = &path[1..];
            }
        } else if !self.files.contains_key(&[module, &path[..1]].concat()) {
            return None;
        }
        base.extend_from_slice(path);
        Some(base)
    }

    /// The file that defines what `path` (from the crate root) names.
    fn resolve(&self, path: &[String], hops: usize) -> Option<&String> {
        let (file, rest) = (0..=path.len())
            .rev()
            .find_map(|i| Some((self.files.get(&path[..i])?, &path[i..])))?;
        let Some(name) = rest.first().filter(|n| *n != "*") else {
            return Some(file);
        };
        match self.reexported.get(file).and_then(|r| r.get(name)) {
            Some(target) if hops < 10 && !self.defined[file].contains(name) => {
                self.resolve(target, hops + 1).or(Some(file))
            }
            _ => Some(file),
        }
    }
}

/// The import graph of a crate given as `(path relative to src/, contents)` pairs.
fn build_graph(sources: &[(String, String)]) -> Graph {
    let use_re = Regex::new(r"\b(pub(?:\([^)]*\))?\s+)?\buse\s+([^;]+);").unwrap();
    let def_re = Regex::new(
        r"\b(?:struct|enum|trait|fn|type|const|static|union|macro_rules!)\s+([A-Za-z_]\w*)",
    )
    .unwrap();
    let alias_re = Regex::new(r"\s+as\s+\w+|\s+").unwrap();
    let inline_re = Regex::new(r"\b(?:crate|super|self)(?:::[A-Za-z_]\w*)+").unwrap();
    let code: Vec<(String, String)> = sources.iter().map(|(f, t)| (f.clone(), strip(t))).collect();
    let mut krate = Crate {
        files: code
            .iter()
            .map(|(f, _)| (module_of(f), f.clone()))
            .collect(),
        defined: BTreeMap::new(),
        reexported: BTreeMap::new(),
    };
    // Every import of every file, with the path as written; re-exports recorded, not imported.
    let mut imports: Vec<(&String, Vec<String>, String)> = Vec::new();
    for (file, text) in &code {
        let names = def_re
            .captures_iter(text)
            .map(|c| c[1].to_string())
            .collect();
        krate.defined.insert(file.clone(), names);
        let module = module_of(file);
        for cap in use_re.captures_iter(text) {
            let mut paths = Vec::new();
            expand(&[], &alias_re.replace_all(&cap[2], ""), &mut paths);
            for path in paths {
                let Some(abs) = krate.absolute(&module, &path) else {
                    continue;
                };
                if cap.get(1).is_some() {
                    let name = abs.last().cloned().unwrap_or_default();
                    krate
                        .reexported
                        .entry(file.clone())
                        .or_default()
                        .insert(name, abs);
                } else {
                    imports.push((file, abs, path.join("::")));
                }
            }
        }
        for m in inline_re.find_iter(&use_re.replace_all(text, "")) {
            let path: Vec<String> = m.as_str().split("::").map(String::from).collect();
            if let Some(abs) = krate.absolute(&module, &path) {
                imports.push((file, abs, m.as_str().to_string()));
            }
        }
    }
    let mut graph = Graph::new();
    for (file, abs, written) in imports {
        let Some(target) = krate.resolve(&abs, 0) else {
            continue;
        };
        let (from, to) = (module_of(file), module_of(target));
        let is_ancestor = to.len() < from.len() && from.starts_with(&to);
        if target != file && !is_ancestor {
            graph
                .entry(file.clone())
                .or_default()
                .entry(target.clone())
                .or_insert(written);
        }
    }
    graph
}

/// Cycles of the graph, each the shortest through a file no earlier one passed, each edge
/// with the path that made it (empty: no cycle at all).
fn cycles(graph: &Graph) -> Vec<String> {
    let mut reported = BTreeSet::new();
    let mut found = Vec::new();
    for start in graph.keys() {
        if reported.contains(start) {
            continue;
        }
        // Breadth-first from `start` back to itself: the shortest cycle through it.
        let mut came_from: BTreeMap<&String, &String> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        while let Some(node) = queue.pop_front() {
            for next in graph.get(node).into_iter().flat_map(|e| e.keys()) {
                if next == start {
                    let mut path = vec![node];
                    while let Some(prev) = came_from.get(path.last().unwrap()) {
                        path.push(*prev);
                    }
                    path.reverse();
                    let lines: Vec<String> = path
                        .iter()
                        .zip(path.iter().skip(1).chain([&start]))
                        .map(|(a, b)| format!("  {a} -> {b} ({})", graph[*a][*b]))
                        .collect();
                    reported.extend(path.into_iter().cloned());
                    found.push(lines.join("\n"));
                    queue.clear();
                    break;
                }
                if next != start && !came_from.contains_key(next) {
                    came_from.insert(next, node);
                    queue.push_back(next);
                }
            }
        }
    }
    found
}

fn read_sources(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            read_sources(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            out.push((rel, std::fs::read_to_string(&path).unwrap()));
        }
    }
}

#[test]
fn source_files_import_each_other_without_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut sources = Vec::new();
    read_sources(&src, &src, &mut sources);
    let found = cycles(&build_graph(&sources));
    assert!(
        found.is_empty(),
        "{} import cycle(s):\n{}",
        found.len(),
        found.join("\n\n")
    );
}

fn files(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(f, t)| (f.to_string(), t.to_string()))
        .collect()
}

#[test]
fn the_checker_finds_a_cycle_through_a_reexport() {
    let sources = files(&[
        ("lib.rs", "mod a; mod b; pub use b::B;"),
        ("a/mod.rs", "mod child; use child::C; pub struct A(C);"),
        ("a/child.rs", "use super::A; pub struct C(crate::B);"),
        ("b.rs", "pub struct B(crate::a::A);"),
    ]);
    let found = cycles(&build_graph(&sources));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("b.rs -> a/mod.rs (crate::a::A)"),
        "{}",
        found[0]
    );
}

#[test]
fn parents_comments_and_test_modules_make_no_cycle() {
    let sources = files(&[
        ("lib.rs", "mod a; mod b;"),
        (
            "a/mod.rs",
            "mod child;\nuse child::C; // not crate::b::B\npub struct A(C);\n\
             #[cfg(test)]\nmod tests {\n    use crate::b::B;\n}\n",
        ),
        ("a/child.rs", "use super::A;\npub struct C;"),
        ("b.rs", "use crate::a::A;\npub struct B(A);"),
    ]);
    assert!(cycles(&build_graph(&sources)).is_empty());
}
