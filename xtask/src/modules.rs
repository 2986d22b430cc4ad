//! `cargo xtask modules`: checks that the modules of `std-runtime/src` import one another in
//! one direction only. It reads every `crate::…` path outside comments (in `use` lines and in
//! code), takes each file's top-level module (`route/fan.rs` belongs to `route`) and fails on
//! a cycle, naming it. A module that imports a type through the crate root (`crate::Report`)
//! hides which module it depends on, so that fails too. The concurrency primitives come from
//! one module, `sync` (loom's under `--cfg loom`), which imports no other: a module naming
//! `std::sync::atomic`, a lock, a condition variable, a channel or `std::thread` of the
//! standard library, or crossbeam-utils, fails. On success it prints the modules layer by
//! layer, bottom first.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::step::{Step, cargo, root};

/// The crate whose modules are checked.
const CHECKED: &str = "std-runtime/src";

/// A file's top-level module and its source.
type Sources = Vec<(String, String)>;

/// Each top-level module and the modules it imports.
type Graph = BTreeMap<String, BTreeSet<String>>;

pub fn run() -> Result<(), String> {
    let dir = root().join(CHECKED);
    let files = read(&dir)?;
    check_primitives(&files)?;
    let graph = graph(&files)?;
    if let Some(cycle) = find_cycle(&graph) {
        return Err(format!(
            "{CHECKED}: the modules import each other in a cycle: {}",
            cycle.join(" → ")
        ));
    }
    println!("{CHECKED}: no module cycle; layers, bottom first:");
    for (depth, modules) in layers(&graph).iter().enumerate() {
        println!("  {depth}: {}", modules.join(" "));
    }
    Ok(())
}

/// Runs this check as its own process, so that `ci` reports it like any other step.
pub fn step() -> Step {
    let mut command = std::env::current_exe()
        .map(Command::new)
        .unwrap_or_else(|_| cargo(["run", "--quiet", "--package", "xtask", "--"]));
    command.arg("modules").current_dir(root());
    Step::new("modules", command, &[])
}

/// Every `.rs` file under `dir`, with its top-level module (`lib` for the crate root).
fn read(dir: &Path) -> Result<Sources, String> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        let entries = fs::read_dir(&next).map_err(|e| format!("{}: {e}", next.display()))?;
        for entry in entries {
            let path: PathBuf = entry.map_err(|e| format!("{}: {e}", next.display()))?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                let relative = path.strip_prefix(dir).map_err(|e| e.to_string())?;
                let first = relative.components().next().map(|c| c.as_os_str().to_string_lossy());
                let module = first.unwrap_or_default().trim_end_matches(".rs").to_string();
                let source =
                    fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                files.push((module, source));
            }
        }
    }
    files.sort();
    Ok(files)
}

/// The import graph between the top-level modules of `files`. The crate root (`lib`) is left
/// out: it declares and re-exports everything, and nothing imports it but through a name.
fn graph(files: &[(String, String)]) -> Result<Graph, String> {
    let modules: BTreeSet<&str> =
        files.iter().map(|(m, _)| m.as_str()).filter(|m| *m != "lib").collect();
    let mut graph: Graph = modules.iter().map(|m| (m.to_string(), BTreeSet::new())).collect();
    let mut through_root = Vec::new();
    for (module, source) in files.iter().filter(|(m, _)| m != "lib") {
        for name in crate_paths(source) {
            if modules.contains(name.as_str()) {
                if name != *module {
                    graph.entry(module.clone()).or_default().insert(name);
                }
            } else if name.starts_with(char::is_uppercase) {
                through_root.push(format!("{module} imports `crate::{name}`"));
            }
        }
    }
    if through_root.is_empty() {
        Ok(graph)
    } else {
        through_root.sort();
        through_root.dedup();
        Err(format!(
            "{CHECKED}: import these from the module that defines them, not the crate root: {}",
            through_root.join(", ")
        ))
    }
}

/// The module every concurrency primitive comes from.
const FACADE: &str = "sync";

/// Modules allowed to name the standard library's primitives besides the facade: the loom
/// models record what they see with a plain mutex, outside what loom explores.
const PLAIN_PRIMITIVES_ALLOWED: &[&str] = &["models"];

/// Fails if a module other than the facade takes a concurrency primitive from elsewhere, or
/// the facade imports another module.
fn check_primitives(files: &[(String, String)]) -> Result<(), String> {
    let mut found = Vec::new();
    for (module, source) in files {
        if module == FACADE {
            if let Some(name) = crate_paths(source).first() {
                found.push(format!("{FACADE} imports `crate::{name}` (it is the bottom layer)"));
            }
        } else if module != "lib" && !PLAIN_PRIMITIVES_ALLOWED.contains(&module.as_str()) {
            found.extend(
                direct_primitives(source).into_iter().map(|path| {
                    format!("{module} names `{path}` (take it from `crate::{FACADE}`)")
                }),
            );
        }
    }
    if found.is_empty() {
        Ok(())
    } else {
        found.sort();
        found.dedup();
        Err(format!("{CHECKED}: {}", found.join(", ")))
    }
}

/// The concurrency primitives `source` names outside comments without the facade: paths into
/// `std::sync::atomic`, `core::sync::atomic`, `std::thread`, `std::hint` or crossbeam-utils,
/// and the locks, condition variables and channels of `std::sync`.
fn direct_primitives(source: &str) -> Vec<String> {
    const WHOLE: &[&str] =
        &["std::sync::atomic", "core::sync::atomic", "std::thread", "std::hint", "crossbeam_utils"];
    const IN_SYNC: &[&str] =
        &["atomic", "Mutex", "MutexGuard", "Condvar", "RwLock", "Barrier", "mpsc"];
    let code: String = source.lines().map(strip_comment).collect::<Vec<_>>().join("\n");
    let mut found: Vec<String> =
        WHOLE.iter().filter(|path| code.contains(*path)).map(|path| path.to_string()).collect();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("std::sync::") {
        let after = &rest[at + "std::sync::".len()..];
        rest = after;
        let names: Vec<String> = match after.strip_prefix('{') {
            Some(group) => members(group).into_iter().filter_map(first_segment).collect(),
            None => first_segment(after).into_iter().collect(),
        };
        found.extend(
            names
                .into_iter()
                .filter(|name| IN_SYNC.contains(&name.as_str()))
                .map(|name| format!("std::sync::{name}")),
        );
    }
    found
}

/// The first segment of every `crate::…` path in `source` outside comments; for a group
/// (`crate::{a::X, b}`) the first segment of each member.
fn crate_paths(source: &str) -> Vec<String> {
    let code: String = source.lines().map(strip_comment).collect::<Vec<_>>().join("\n");
    let mut names = Vec::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        let after = &rest[at + "crate::".len()..];
        rest = after;
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        if let Some(group) = after.strip_prefix('{') {
            names.extend(members(group).into_iter().filter_map(first_segment));
        } else {
            names.extend(first_segment(after));
        }
    }
    names
}

/// The members of a `use` group, given what follows its `{`: split at the commas outside
/// nested groups, up to the matching `}`.
fn members(group: &str) -> Vec<&str> {
    let (mut members, mut depth, mut start) = (Vec::new(), 0usize, 0);
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                members.push(&group[start..i]);
                return members;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                members.push(&group[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    members.push(&group[start..]);
    members
}

/// The identifier at the start of `path` (after whitespace), if any.
fn first_segment(path: &str) -> Option<String> {
    let path = path.trim_start();
    let end = path.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(path.len());
    (end > 0).then(|| path[..end].to_string())
}

/// `line` without its `//` comment (doc comments included); a `//` inside a string stays.
fn strip_comment(line: &str) -> &str {
    let mut in_string = false;
    let mut escaped = false;
    let bytes = line.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if in_string => escaped = true,
            b'"' => in_string = !in_string,
            b'/' if !in_string && bytes.get(i + 1) == Some(&b'/') => return &line[..i],
            _ => {}
        }
    }
    line
}

/// A cycle of imports, as the modules along it with the first repeated at the end.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit<'a>(
        module: &'a str,
        graph: &'a Graph,
        marks: &mut BTreeMap<&'a str, Mark>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        match marks.get(module) {
            Some(Mark::Done) => return None,
            Some(Mark::Visiting) => {
                let start = path.iter().position(|m| *m == module).unwrap_or(0);
                let mut cycle: Vec<String> = path[start..].iter().map(|m| m.to_string()).collect();
                cycle.push(module.to_string());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(module, Mark::Visiting);
        path.push(module);
        for next in graph.get(module).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, marks, path) {
                return Some(cycle);
            }
        }
        path.pop();
        marks.insert(module, Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    graph.keys().find_map(|module| visit(module, graph, &mut marks, &mut Vec::new()))
}

/// The modules of an acyclic graph by layer: each imports only modules of lower layers.
fn layers(graph: &Graph) -> Vec<Vec<String>> {
    fn depth<'a>(module: &'a str, graph: &'a Graph, memo: &mut BTreeMap<&'a str, usize>) -> usize {
        if let Some(&d) = memo.get(module) {
            return d;
        }
        let d = graph
            .get(module)
            .into_iter()
            .flatten()
            .map(|next| depth(next, graph, memo) + 1)
            .max()
            .unwrap_or(0);
        memo.insert(module, d);
        d
    }
    let mut memo = BTreeMap::new();
    let mut layers: Vec<Vec<String>> = Vec::new();
    for module in graph.keys() {
        let d = depth(module, graph, &mut memo);
        if layers.len() <= d {
            layers.resize(d + 1, Vec::new());
        }
        layers[d].push(module.clone());
    }
    layers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(list: &[(&str, &str)]) -> Sources {
        list.iter().map(|(m, s)| (m.to_string(), s.to_string())).collect()
    }

    #[test]
    fn reads_use_lines_groups_and_paths_in_code_but_not_comments() {
        let source = "//! See [`X`](crate::docs::X).\n\
                      use crate::{link::Link, stats::{Report, Stats}};\n\
                      use crate::control::Control; // crate::commented\n\
                      fn f() -> crate::error::ConfigError { g(\"a // b\") }\n\
                      macro_rules! m { () => { $crate::ignored::X } }\n";
        assert_eq!(crate_paths(source), ["link", "stats", "control", "error"]);
    }

    #[test]
    fn a_cycle_is_found_and_named() {
        let graph = graph(&files(&[
            ("lib", "mod a; mod b; mod c;"),
            ("a", "use crate::b::B;"),
            ("b", "use crate::c::C;"),
            ("c", "fn f() { crate::a::g() }"),
        ]))
        .unwrap();
        assert_eq!(find_cycle(&graph).unwrap(), ["a", "b", "c", "a"]);
    }

    #[test]
    fn imports_that_point_down_are_layered() {
        let graph = graph(&files(&[
            ("hooks", ""),
            ("queue", "use crate::hooks::Dropped;"),
            ("route", "use crate::{hooks::Dropped, queue::Link};"),
            ("route", "use super::Downstream; use crate::route::Sink;"),
        ]))
        .unwrap();
        assert_eq!(find_cycle(&graph), None);
        assert_eq!(layers(&graph), [vec!["hooks"], vec!["queue"], vec!["route"]]);
    }

    #[test]
    fn an_import_through_the_crate_root_is_refused() {
        let error = graph(&files(&[("event", "use crate::Report;"), ("stats", "")])).unwrap_err();
        assert!(error.contains("event imports `crate::Report`"), "{error}");
    }

    #[test]
    fn primitives_come_from_the_facade_only() {
        let source = "//! use std::sync::{Arc, Mutex};\n\
                      use std::sync::{Arc, Mutex as Plain, atomic::AtomicBool};\n\
                      use std::sync::PoisonError;\n\
                      fn f() { std::thread::yield_now(); let _ = crossbeam_utils::Backoff::new(); }\n";
        assert_eq!(
            direct_primitives(source),
            ["std::thread", "crossbeam_utils", "std::sync::Mutex", "std::sync::atomic"]
        );
        let error = check_primitives(&files(&[
            ("sync", "use std::sync::Mutex; use crate::wait::Signal;"),
            ("link", "use std::sync::{Arc, Condvar};"),
            ("input", "use crate::sync::{Mutex, fence};"),
        ]))
        .unwrap_err();
        assert!(error.contains("link names `std::sync::Condvar`"), "{error}");
        assert!(error.contains("sync imports `crate::wait`"), "{error}");
        assert!(!error.contains("input"), "{error}");
    }

    #[test]
    fn the_runtime_takes_its_primitives_from_its_facade() {
        let files = read(&root().join(CHECKED)).unwrap();
        assert!(files.iter().any(|(module, _)| module == FACADE), "{CHECKED} has `{FACADE}`");
        check_primitives(&files).unwrap();
    }

    #[test]
    fn the_runtime_has_no_module_cycle() {
        let graph = graph(&read(&root().join(CHECKED)).unwrap()).unwrap();
        assert!(graph.len() > 10, "read {CHECKED}");
        assert_eq!(find_cycle(&graph), None);
    }
}
