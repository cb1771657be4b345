//! The crate's imports only go down (lib.rs has the map).
//!
//! Reads every file under src/, collects what it names through `crate::`
//! and `super::` (in `use` lines and in paths inside code), and fails on:
//! - a top-level module that names one on its own level or above it in
//!   [`LAYERS`];
//! - a cycle between the files of one folder (a `mod.rs` counts as a file:
//!   a child that reads its parent's items while the parent reads the
//!   child's is a cycle).
//!
//! In-file `#[cfg(test)]` modules are skipped: their `super::*` is the file
//! they test.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top to bottom. A module may name only modules on a lower line.
const LAYERS: &[&[&str]] = &[
    &["server"],
    &["admin"],
    &["supervisor"],
    &["snapshot"],
    &["listener"],
    &["proxy"],
    &["auth", "upstream"],
    &["observe"],
    &["tls", "body"],
    &["config", "sys"],
];

fn level(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// A module path: `["proxy", "headers"]` for src/proxy/headers.rs.
type ModPath = Vec<String>;

fn module_of(src: &Path, file: &Path) -> ModPath {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if let Some(last) = parts.last_mut() {
        *last = last.trim_end_matches(".rs").to_string();
    }
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src") {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The source with comments, string and char literals blanked out, so
/// that only code is scanned.
fn code_only(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if b[i] == b'r' && (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#')) {
            // raw string r"..." or r#"..."#
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&b'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&b'"') {
                out.push('r');
                i += 1;
                continue;
            }
            j += 1;
            let close: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat_n(b'#', hashes))
                .collect();
            while j < b.len() && !b[j..].starts_with(&close) {
                j += 1;
            }
            i = j + close.len();
            out.push_str("\"\"");
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' {
            // a char literal ('x', '\n', '\u{..}') or a lifetime ('a)
            let end = if b.get(i + 1) == Some(&b'\\') {
                b[i + 2..]
                    .iter()
                    .position(|&c| c == b'\'')
                    .map(|p| i + 2 + p)
            } else if b.get(i + 2) == Some(&b'\'') {
                Some(i + 2)
            } else {
                None
            };
            match end {
                Some(e) => {
                    out.push_str("' '");
                    i = e + 1;
                }
                None => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else {
            let ch = s[i..].chars().next().expect("char");
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// Removes `#[cfg(test)] mod NAME { ... }` blocks.
fn without_test_modules(code: &str) -> String {
    let mut out = code.to_string();
    while let Some(at) = out.find("#[cfg(test)]") {
        let rest = &out[at + "#[cfg(test)]".len()..];
        let trimmed = rest.trim_start();
        let is_mod = trimmed.starts_with("mod ") || trimmed.starts_with("pub mod ");
        let Some(open) = rest.find(['{', ';']) else {
            break;
        };
        if !is_mod || rest.as_bytes()[open] == b';' {
            // an attribute on something else: keep it, blank the marker
            out.replace_range(at..at + "#[cfg(test)]".len(), "");
            continue;
        }
        let start = at + "#[cfg(test)]".len() + open;
        let mut depth = 0;
        let mut end = out.len();
        for (k, c) in out[start..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = start + k + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        out.replace_range(at..end, "");
    }
    out
}

/// Expands a use tree (`a::{b, c::{d, e}}`) into its paths.
fn expand(prefix: &[String], tree: &str, out: &mut Vec<Vec<String>>) {
    let mut items = Vec::new();
    let mut depth = 0;
    let mut cur = String::new();
    for c in tree.chars() {
        match c {
            '{' => {
                depth += 1;
                cur.push(c);
            }
            '}' => {
                depth -= 1;
                cur.push(c);
            }
            ',' if depth == 0 => items.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    items.push(cur);
    for item in items {
        let item: String = item.split_whitespace().collect::<Vec<_>>().join(" ");
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        if let Some(brace) = item.find('{') {
            let head = &item[..brace];
            let inner = &item[brace + 1..item.rfind('}').unwrap_or(item.len())];
            let mut p = prefix.to_vec();
            p.extend(
                head.split("::")
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from),
            );
            expand(&p, inner, out);
        } else {
            let item = item.split(" as ").next().unwrap_or(item);
            let mut p = prefix.to_vec();
            p.extend(
                item.split("::")
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from),
            );
            out.push(p);
        }
    }
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every `crate::...`/`super::...` path the code names.
fn named_paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    // use statements, with their trees
    let mut rest = code;
    while let Some(at) = rest.find("use ") {
        let before_ok = at == 0 || !is_ident(rest[..at].chars().next_back().unwrap_or(' '));
        let after = &rest[at + 4..];
        let t = after.trim_start();
        if before_ok && (t.starts_with("crate::") || t.starts_with("super::")) {
            let end = t.find(';').unwrap_or(t.len());
            expand(&[], &t[..end], &mut out);
        }
        rest = after;
    }
    // paths in code: crate::a::b, super::a, super::super::a
    for root in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(p) = code[from..].find(root) {
            let at = from + p;
            from = at + root.len();
            let prev = code[..at].chars().next_back().unwrap_or(' ');
            if is_ident(prev) || prev == ':' {
                continue;
            }
            let tail: String = code[at..]
                .chars()
                .take_while(|&c| is_ident(c) || c == ':')
                .collect();
            let parts: Vec<String> = tail
                .split("::")
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            // `super::{a, b}` names a and b, not super: the use tree
            // scan above has them
            let tree_follows = code[at + tail.len()..].starts_with('{');
            if parts.len() > 1 && !tree_follows {
                out.push(parts);
            }
        }
    }
    out
}

/// Whether `code` has a path through `name::` that is not a field or a
/// longer path's tail (`x.name::`, `a::name::`), nor its `mod` line.
fn names_child(code: &str, name: &str) -> bool {
    let needle = format!("{name}::");
    let mut from = 0;
    while let Some(p) = code[from..].find(&needle) {
        let at = from + p;
        from = at + needle.len();
        let before = code[..at].trim_end_matches("self::");
        let prev = before.chars().next_back().unwrap_or(' ');
        if !is_ident(prev) && prev != ':' && prev != '.' {
            return true;
        }
        if before.len() != code[..at].len() {
            return true;
        }
    }
    false
}

#[test]
fn imports_only_go_down() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<ModPath> = files.iter().map(|f| module_of(&src, f)).collect();
    let resolve = |target: &[String]| -> Option<ModPath> {
        (1..=target.len())
            .rev()
            .map(|n| target[..n].to_vec())
            .find(|m| modules.contains(m))
    };

    // file-level edges: module path -> the module paths it names
    let mut edges: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
    for f in &files {
        let me = module_of(&src, f);
        if me.is_empty() {
            continue; // lib.rs and main.rs declare the tree
        }
        let text = std::fs::read_to_string(f).expect("read source");
        let code = without_test_modules(&code_only(&text));
        let mut paths = named_paths(&code);
        // a parent names its children without a prefix (`keys::Jwk`,
        // `use keys::Jwk`, `self::keys`)
        for child in modules
            .iter()
            .filter(|m| m.len() == me.len() + 1 && m.starts_with(&me))
        {
            let name = child.last().expect("child name");
            if names_child(&code, name) {
                paths.push(
                    std::iter::once("crate".to_string())
                        .chain(child.iter().cloned())
                        .collect(),
                );
            }
        }
        for path in paths {
            let target: Vec<String> = match path.first().map(String::as_str) {
                Some("crate") => path[1..].to_vec(),
                Some("super") => {
                    let mut base = me.clone();
                    base.pop();
                    let mut q = &path[1..];
                    while q.first().map(String::as_str) == Some("super") {
                        base.pop();
                        q = &q[1..];
                    }
                    base.extend(q.iter().cloned());
                    base
                }
                _ => continue,
            };
            if let Some(t) = resolve(&target) {
                if t != me {
                    edges.entry(me.clone()).or_default().insert(t);
                }
            }
        }
    }

    let mut problems = Vec::new();
    // 1. top-level layering
    for (from, tos) in &edges {
        for to in tos {
            if from[0] == to[0] {
                continue;
            }
            match (level(&from[0]), level(&to[0])) {
                (Some(a), Some(b)) if b > a => {}
                (Some(_), Some(_)) => problems.push(format!(
                    "upward or sideways import: {} -> {}",
                    from.join("/"),
                    to.join("/")
                )),
                _ => problems.push(format!(
                    "module not in LAYERS: {} -> {}",
                    from.join("/"),
                    to.join("/")
                )),
            }
        }
    }
    // 2. no cycle between the files of one top-level module
    let inner: BTreeMap<&ModPath, Vec<&ModPath>> = edges
        .iter()
        .map(|(f, ts)| (f, ts.iter().filter(|t| t[0] == f[0]).collect()))
        .collect();
    for start in inner.keys() {
        // a path from one of start's targets back to start is a cycle
        let mut stack: Vec<Vec<&ModPath>> = inner[start].iter().map(|t| vec![*start, *t]).collect();
        let mut seen = BTreeSet::new();
        while let Some(path) = stack.pop() {
            let last = *path.last().expect("non-empty");
            if last == *start {
                let names: Vec<String> = path.iter().map(|m| m.join("/")).collect();
                problems.push(format!("import cycle: {}", names.join(" -> ")));
                break;
            }
            if !seen.insert(last) {
                continue;
            }
            for next in inner.get(last).into_iter().flatten() {
                let mut p = path.clone();
                p.push(*next);
                stack.push(p);
            }
        }
    }
    problems.sort();
    problems.dedup();
    assert!(
        problems.is_empty(),
        "the crate's imports must only go down (LAYERS in tests/layers.rs, map in src/lib.rs):\n  {}",
        problems.join("\n  ")
    );
}

/// The scanner itself: what it must see and what it must not.
#[test]
fn the_scanner_reads_use_trees_paths_and_skips_tests_and_text() {
    let code = without_test_modules(&code_only(
        r#"
        use crate::proxy::{conn::ConnInfo, error::ProxyError as E};
        use super::{pool, retry::Budget};
        fn f() { crate::sys::notify("crate::admin::x"); let c = '{'; }
        // crate::server::run
        #[cfg(test)]
        mod tests { use crate::snapshot::Snapshot; }
        "#,
    ));
    let mut got: Vec<String> = named_paths(&code).iter().map(|p| p.join("::")).collect();
    got.sort();
    got.dedup();
    assert_eq!(
        got,
        [
            "crate::proxy::conn::ConnInfo",
            "crate::proxy::error::ProxyError",
            "crate::sys::notify",
            "super::pool",
            "super::retry::Budget",
        ]
    );
    assert!(names_child("let x = keys::parse(b);", "keys"));
    assert!(!names_child("let x = auth::keys::parse(b);", "keys"));
}
