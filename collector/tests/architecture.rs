//! The data flows one way: a stage imports only the stages before it, and infrastructure
//! that imports no stage. The allowed edges are written here, once; this test reads every
//! source file of the collector and fails on an import against them.

use std::path::Path;

/// The stages in the data's order: each may import those before it.
const STAGES: &[&str] = &[
    "source", "stream", "http", "trace", "enrich", "filter", "sampling", "relay", "export",
];
/// Used by any stage; they import no stage.
const INFRASTRUCTURE: &[&str] = &["aws", "logging", "status", "guard", "counters"];
/// Settings and wiring: may import anything; no stage imports them.
const WIRING: &[&str] = &["app", "pipeline", "cli", "config", "doctor", "main", "lib"];

#[test]
fn no_stage_imports_a_later_stage_or_the_wiring() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    assert!(
        files.len() > 50,
        "found {} files under {src:?}",
        files.len()
    );
    let mut violations = Vec::new();
    for file in &files {
        let rel = file
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let module = top_module(&rel);
        let text = std::fs::read_to_string(file).unwrap();
        for used in imported_modules(production_code(&text)) {
            if used != module && !allowed(&module, &used) {
                violations.push(format!("{rel} imports crate::{used}"));
            }
        }
    }
    violations.sort();
    violations.dedup();
    assert!(
        violations.is_empty(),
        "imports against the stage order {STAGES:?} (infrastructure {INFRASTRUCTURE:?}):\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_checker_sees_grouped_and_inline_imports() {
    let code = "use crate::{\n    enrich::{a, b},\n    export::xray,\n};\nfn f() { crate::sampling::x(); }\n#[cfg(test)]\nmod tests { use crate::app; }";
    let mut found = imported_modules(production_code(code));
    found.sort();
    assert_eq!(found, ["enrich", "export", "sampling"]);
    assert!(!allowed("trace", "sampling"));
    assert!(allowed("export", "trace"));
    assert!(allowed("app", "export"));
    assert!(!allowed("status", "trace"));
    assert!(!allowed("trace", "app"));
}

fn allowed(from: &str, to: &str) -> bool {
    let stage = |m: &str| STAGES.iter().position(|s| *s == m);
    if WIRING.contains(&from) {
        return true;
    }
    if WIRING.contains(&to) {
        return false;
    }
    if INFRASTRUCTURE.contains(&to) {
        return !INFRASTRUCTURE.contains(&from) || from == to;
    }
    match (stage(from), stage(to)) {
        (Some(a), Some(b)) => b <= a,
        // Infrastructure imports no stage; an unknown module must be placed above first.
        _ => false,
    }
}

/// `trace/assembler.rs` → `trace`; `pipeline.rs` → `pipeline`.
fn top_module(rel: &str) -> String {
    let first = rel.split('/').next().unwrap();
    first.trim_end_matches(".rs").to_owned()
}

/// The file without its tests (they follow `#[cfg(test)]`, at the end of a file, or are
/// files of their own).
fn production_code(text: &str) -> &str {
    text.find("#[cfg(test)]").map_or(text, |i| &text[..i])
}

/// The first path segment after every `crate::`, including each item of `crate::{…}`.
fn imported_modules(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item_start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        rest = &group[j..];
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && (c.is_alphabetic() || c == '_') => {
                        out.push(ident(&group[j..]));
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            out.push(ident(rest));
        }
    }
    out.retain(|m| !m.is_empty() && m != "self");
    out.sort();
    out.dedup();
    out
}

fn ident(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// Every `.rs` file except test files (`tests.rs`, `fixtures.rs`, anything under `tests/`).
fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            if name != "tests" {
                walk(&path, out);
            }
        } else if name.ends_with(".rs") && name != "tests.rs" && name != "fixtures.rs" {
            out.push(path);
        }
    }
}
