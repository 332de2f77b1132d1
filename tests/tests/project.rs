//! The project's own promises about how it is run.

use integration_tests::repo_root;

/// The README's test command, as written in its "Run every test" block.
fn readme_test_command() -> String {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let section = readme
        .split("## Run every test")
        .nth(1)
        .expect("README has a 'Run every test' section");
    let block = section.split("```").nth(1).expect("with a code block");
    let lines: Vec<&str> = block
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "exactly one command: {lines:?}");
    lines[0].trim().to_string()
}

#[test]
fn ci_runs_exactly_the_readme_test_command() {
    let cmd = readme_test_command();
    let ci = std::fs::read_to_string(repo_root().join(".ci/run")).unwrap();
    let script = cmd.trim_start_matches("./");
    assert!(
        ci.contains(&format!("exec ./{script}")),
        ".ci/run must exec `{cmd}`"
    );
    assert!(repo_root().join(script).exists(), "{script} exists");
}

#[test]
fn the_test_script_installs_what_a_fresh_machine_lacks() {
    let script = std::fs::read_to_string(repo_root().join("tests/ci.sh")).unwrap();
    // A fresh machine has no package lists: update before install.
    let update = script.find("apt-get update").expect("apt-get update");
    let install = script.find("apt-get install").expect("apt-get install");
    assert!(update < install);
    for tool in ["cmake", "make"] {
        assert!(
            script.contains(&format!("command -v {tool}")),
            "checks for {tool}"
        );
    }
}

/// The crate-internal imports of one crate, by top-level module: for each
/// module (`sbc/src/x.rs` or `sbc/src/x/**`), the modules it names through
/// `crate::x` paths (`use crate::x::..`, `use crate::{x, y::..}`, or a path in
/// code), with the file and line of each. Comment lines are skipped; a file's
/// own `super::`/`self::` paths stay inside its module.
fn crate_imports(
    src: &std::path::Path,
) -> std::collections::BTreeMap<String, Vec<(String, String, usize)>> {
    fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    fn ident(s: &str) -> &str {
        let end = s
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(s.len());
        &s[..end]
    }
    /// The first segment of each path in a `{a, b::c, d::{e, f}}` group.
    fn group_heads(s: &str) -> Vec<&str> {
        let (mut heads, mut depth, mut start) = (Vec::new(), 0, 0);
        for (i, c) in s.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    heads.push(ident(s[start..i].trim()));
                    return heads;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    heads.push(ident(s[start..i].trim()));
                    start = i + 1;
                }
                _ => {}
            }
        }
        heads
    }
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut modules = std::collections::BTreeMap::new();
    for file in &files {
        let rel = file.strip_prefix(src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_string();
        if module == "lib" || module == "main" {
            continue; // the crate root declares the modules; it is not one
        }
        let text = std::fs::read_to_string(file).unwrap();
        // Whole text with comments blanked, so a `crate::{..}` group may span lines.
        let code: String = text
            .lines()
            .map(|l| match l.find("//") {
                Some(i) if !l[..i].contains('"') => &l[..i],
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let uses: &mut Vec<(String, String, usize)> = modules.entry(module.clone()).or_default();
        let mut from = 0;
        while let Some(i) = code[from..].find("crate::") {
            let at = from + i;
            from = at + "crate::".len();
            let before = code[..at].chars().next_back();
            if before.is_some_and(|c| c == '$' || c == '_' || c.is_ascii_alphanumeric()) {
                continue; // `$crate::` in a macro, or a longer name
            }
            let rest = &code[from..];
            let heads = match rest.strip_prefix('{') {
                Some(group) => group_heads(group),
                None => vec![ident(rest)],
            };
            let line = code[..at].matches('\n').count() + 1;
            for head in heads {
                if !head.is_empty() && head != "self" && head != module {
                    uses.push((head.to_string(), rel.display().to_string(), line));
                }
            }
        }
    }
    // Only names that are modules of this crate (not items re-exported at its root).
    let known: std::collections::BTreeSet<String> = modules.keys().cloned().collect();
    for uses in modules.values_mut() {
        uses.retain(|(to, _, _)| known.contains(to));
    }
    modules
}

/// The import circles among `graph`'s modules: its strongly connected
/// components of more than one module (Tarjan), each sorted.
fn import_circles(
    graph: &std::collections::BTreeMap<String, Vec<(String, String, usize)>>,
) -> Vec<Vec<String>> {
    struct Tarjan<'a> {
        graph: &'a std::collections::BTreeMap<String, Vec<(String, String, usize)>>,
        index: std::collections::BTreeMap<&'a str, (usize, usize)>,
        stack: Vec<&'a str>,
        next: usize,
        circles: Vec<Vec<String>>,
    }
    impl<'a> Tarjan<'a> {
        fn visit(&mut self, m: &'a str) {
            self.index.insert(m, (self.next, self.next));
            self.next += 1;
            self.stack.push(m);
            for (to, _, _) in &self.graph[m] {
                let to = to.as_str();
                match self.index.get(to).copied() {
                    None => {
                        self.visit(to);
                        let low = self.index[to].1.min(self.index[m].1);
                        self.index.get_mut(m).unwrap().1 = low;
                    }
                    Some((i, _)) if self.stack.contains(&to) => {
                        let low = i.min(self.index[m].1);
                        self.index.get_mut(m).unwrap().1 = low;
                    }
                    Some(_) => {}
                }
            }
            let (i, low) = self.index[m];
            if i == low {
                let mut component = Vec::new();
                while let Some(top) = self.stack.pop() {
                    component.push(top.to_string());
                    if top == m {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.circles.push(component);
                }
            }
        }
    }
    let mut t = Tarjan {
        graph,
        index: Default::default(),
        stack: Vec::new(),
        next: 0,
        circles: Vec::new(),
    };
    for m in graph.keys() {
        if !t.index.contains_key(m.as_str()) {
            t.visit(m);
        }
    }
    t.circles
}

#[test]
fn no_sbc_module_imports_one_that_imports_it_back() {
    let graph = crate_imports(&repo_root().join("sbc/src"));
    assert!(
        graph.len() > 10 && graph["server"].iter().any(|(to, _, _)| to == "control"),
        "the parser sees the sbc's modules and their imports: {graph:?}"
    );
    let circles = import_circles(&graph);
    let report: Vec<String> = circles
        .iter()
        .map(|circle| {
            let ties: Vec<String> = circle
                .iter()
                .flat_map(|m| {
                    graph[m]
                        .iter()
                        .filter(|(to, _, _)| circle.contains(to))
                        .map(move |(to, file, line)| format!("{m} -> {to} ({file}:{line})"))
                })
                .collect();
            format!("{}:\n    {}", circle.join(", "), ties.join("\n    "))
        })
        .collect();
    assert!(
        circles.is_empty(),
        "import circles in sbc/src (messages between tasks belong in a leaf module):\n  {}",
        report.join("\n  ")
    );
}

#[test]
fn the_circle_check_finds_a_circle_through_others() {
    let tie = |to: &str| (to.to_string(), "x.rs".to_string(), 1);
    let graph: std::collections::BTreeMap<String, Vec<(String, String, usize)>> = [
        ("a".to_string(), vec![tie("b")]),
        ("b".to_string(), vec![tie("c")]),
        ("c".to_string(), vec![tie("a"), tie("d")]),
        ("d".to_string(), vec![]),
    ]
    .into_iter()
    .collect();
    assert_eq!(import_circles(&graph), vec![vec!["a", "b", "c"]]);
}

#[test]
fn the_messages_between_sbc_tasks_name_no_task() {
    let graph = crate_imports(&repo_root().join("sbc/src"));
    for leaf in ["inbox", "sign", "clock"] {
        assert_eq!(
            graph[leaf],
            Vec::new(),
            "sbc/src/{leaf}.rs is a leaf: every task may import it"
        );
    }
}

/// The lines of the first fenced block after `heading` in `text`, without the fences.
fn block_after(text: &str, heading: &str, fence: &str) -> Vec<String> {
    let section = text
        .split(heading)
        .nth(1)
        .unwrap_or_else(|| panic!("no {heading:?}"));
    let start = section
        .find(fence)
        .unwrap_or_else(|| panic!("{fence} block after {heading:?}"))
        + fence.len();
    let body = &section[start..];
    let end = body.find("\n```").expect("closed block");
    body[..end].lines().map(|l| l.trim().to_string()).collect()
}

#[test]
fn readme_embedding_snippet_is_the_compiled_example() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let mut snippet = block_after(&readme, "## Embedding the crates", "```rust");
    snippet.retain(|l| !l.is_empty());
    let example =
        std::fs::read_to_string(repo_root().join("sbc/examples/readme_embed.rs")).unwrap();
    let begin = example.find("// README: begin").expect("begin marker") + 16;
    let end = example.find("// README: end").expect("end marker");
    let compiled: Vec<String> = example[begin..end]
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    assert!(snippet.len() >= 5, "the snippet: {snippet:?}");
    assert_eq!(
        snippet, compiled,
        "README's embedding block and sbc/examples/readme_embed.rs differ"
    );
}

/// Every `sbc_*` metric the docs name is one the code records, with the labels they name.
#[test]
fn documented_metrics_exist_with_their_labels() {
    fn files(dir: &std::path::Path, ext: &str, out: &mut String) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files(&path, ext, out);
            } else if path.extension().is_some_and(|e| e == ext) {
                out.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let mut code = String::new();
    files(&repo_root().join("sbc/src"), "rs", &mut code);
    let mut docs = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    files(&repo_root().join("sbc/docs"), "md", &mut docs);
    docs.push_str(&std::fs::read_to_string(repo_root().join("tests/load/README.md")).unwrap());

    let mut checked = 0;
    let mut rest = docs.as_str();
    while let Some(i) = rest.find("sbc_") {
        let tail = &rest[i..];
        let len = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..len];
        rest = &tail[len..];
        // `sbc_webhook_*_total` and the like name a family: its prefix must be recorded.
        let quoted = if name.ends_with('_') {
            format!("\"{name}")
        } else {
            format!("\"{name}\"")
        };
        assert!(
            code.contains(&quoted),
            "documented metric {name} is not recorded by sbc"
        );
        checked += 1;
        if let Some(labels) = rest.strip_prefix('{') {
            let labels = &labels[..labels.find('}').expect("closed labels")];
            // `node` is on every series (a global label: `sbc::telemetry`).
            for label in labels
                .split(',')
                .map(|l| l.split('=').next().unwrap().trim())
                .filter(|l| *l != "node")
            {
                let recorded = code.match_indices(&quoted).any(|(at, _)| {
                    let call = &code[at..(at + 400).min(code.len())];
                    let call = &call[..call.find(';').unwrap_or(call.len())];
                    call.contains(&format!("\"{label}\" =>"))
                });
                assert!(recorded, "{name}: documented label {label} is not recorded");
            }
        }
    }
    assert!(checked >= 10, "found {checked} documented metrics");
}
