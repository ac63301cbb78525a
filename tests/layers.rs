//! The layer rule, checked on the source: no import cycle between the top-level
//! modules of `src/` (a path `crate::a::…` inside module `x` is an arrow x → a;
//! the face — lib.rs, main.rs — and test code are left out), and the modules
//! below the shard never import the shard, the runtime or the transport.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const FACE: [&str; 2] = ["lib", "main"];

/// Every top-level module's arrows to the other top-level modules.
fn arrows() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut arrows: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "tests") {
                    stack.push(path);
                }
                continue;
            }
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if !name.ends_with(".rs") || name == "tests.rs" {
                continue;
            }
            let rel = path.strip_prefix(&src).expect("inside src");
            let first = rel.components().next().expect("a component");
            let top = first
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string();
            if FACE.contains(&top.as_str()) || top == "testkit" {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read");
            // Test modules at the end of a file may reach anywhere.
            let code = text.split("#[cfg(test)]\nmod tests {").next().unwrap_or("");
            for line in code.lines() {
                let line = line.split("//").next().unwrap_or("");
                for (i, _) in line.match_indices("crate::") {
                    let rest = &line[i + "crate::".len()..];
                    let target: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if !target.is_empty() && target != top && !FACE.contains(&target.as_str()) {
                        arrows.entry(top.clone()).or_default().insert(target);
                    }
                }
            }
        }
    }
    arrows
}

/// Whether `to` can be reached from `from`.
fn reaches(arrows: &BTreeMap<String, BTreeSet<String>>, from: &str, to: &str) -> bool {
    let mut seen = BTreeSet::new();
    let mut todo = vec![from.to_string()];
    while let Some(m) = todo.pop() {
        for next in arrows.get(&m).into_iter().flatten() {
            if next == to {
                return true;
            }
            if seen.insert(next.clone()) {
                todo.push(next.clone());
            }
        }
    }
    false
}

#[test]
fn no_two_top_level_modules_import_each_other_even_indirectly() {
    let arrows = arrows();
    let cycles: Vec<String> = arrows
        .iter()
        .flat_map(|(from, tos)| tos.iter().map(move |to| (from, to)))
        .filter(|(from, to)| reaches(&arrows, to, from))
        .map(|(from, to)| format!("{from} -> {to}"))
        .collect();
    assert!(cycles.is_empty(), "arrows inside a cycle: {cycles:?}");
}

#[test]
fn modules_below_the_shard_never_import_the_shard_runtime_or_transport() {
    let arrows = arrows();
    for module in [
        "calls",
        "blf",
        "trunk",
        "registrar",
        "routing",
        "presence",
        "mwi",
        "callbacks",
        "tu",
        "media",
        "store",
        "sip",
    ] {
        for above in ["shard", "pbx", "transport"] {
            assert!(
                !reaches(&arrows, module, above),
                "{module} reaches {above}: {:?}",
                arrows.get(module)
            );
        }
    }
    for pure in ["routing", "presence", "mwi", "callbacks", "guard"] {
        for above in ["calls", "blf", "registrar", "tu", "shard", "pbx"] {
            assert!(!reaches(&arrows, pure, above), "{pure} reaches {above}");
        }
    }
}
