//! No import circle inside a crate: each crate's module graph, read from its source, and the
//! circles in it.
//!
//! The rule `cargo xtask tidy` applies:
//!
//! - A node is a file. An arrow A -> B means code in A names an item that B defines: in a
//!   `use` declaration, or in a `crate::…`, `super::…` or `self::…` path, or in a path that
//!   starts with a child module or with a name A imported.
//! - A re-exported name is followed to the file that defines it: `crate::Name`, where
//!   `lib.rs` says `pub use grant::Name`, is an arrow to `grant.rs`, not to `lib.rs`.
//! - The module tree is not an import. An arrow to an ancestor (the file whose `mod`
//!   declares this module, that file's own declarer, up to the crate root) does not count:
//!   a child may use its parent through `super::` or `crate::`, as Rust lets it see the
//!   parent's private items. Arrows from a parent to its children and between siblings
//!   count, so the crate root is never part of a circle, and two siblings that use each
//!   other are one.
//! - `#[cfg(test)]` items are not read, nor the files that a `#[cfg(test)] mod` declares:
//!   tests may reach anywhere. Nor are comments, string literals, or `$crate` paths in
//!   macros.
//!
//! A circle is a set of files that reach one another through arrows that count (a strongly
//! connected component of the graph). It is reported as loops, one line each, that between
//! them run along every arrow inside it, each arrow with the names it carries.

use anyhow::{Context, Result};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};

/// How many re-exports or imports one path may be followed through before giving up (a
/// `use` loop is a compile error, so only broken code reaches this).
const MAX_HOPS: usize = 16;

/// Items a name can be defined by, as the keyword before the name.
const DEFINING_KEYWORDS: &[&str] = &[
    "fn", "struct", "enum", "union", "trait", "type", "const", "static",
];

/// Adds one problem per circle in any crate of the workspace at `root`: the packages under
/// `crates/`, and `xtask`, `tests` and `fuzz`.
pub(super) fn check(root: &Path, problems: &mut Vec<String>) -> Result<()> {
    let mut packages: Vec<PathBuf> = Vec::new();
    for entry in fs::read_dir(root.join("crates")).context("reading crates/")? {
        packages.push(entry?.path());
    }
    packages.extend(["xtask", "tests", "fuzz"].map(|d| root.join(d)));
    packages.retain(|p| p.join("Cargo.toml").is_file());
    packages.sort();
    for package in packages {
        let name = package_name(&package)?;
        for crate_root in crate_roots(&package)? {
            let label = if crate_root.ends_with("src/lib.rs") {
                name.clone()
            } else {
                let shown = crate_root.strip_prefix(&package).unwrap_or(&crate_root);
                format!("{name} ({})", shown.display())
            };
            for circle in circles_of_crate(&crate_root)? {
                problems.push(format!("{label}: import circle: {circle}"));
            }
        }
    }
    Ok(())
}

/// The package's `name`, or its directory's name.
fn package_name(package: &Path) -> Result<String> {
    let manifest = fs::read_to_string(package.join("Cargo.toml"))?;
    let mut in_package = false;
    for line in manifest.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            in_package = t == "[package]";
        } else if let (true, Some(value)) = (in_package, t.strip_prefix("name")) {
            if let Some(value) = value.trim_start().strip_prefix('=') {
                return Ok(value.trim().trim_matches('"').to_string());
            }
        }
    }
    Ok(package
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default())
}

/// Every crate root of a package, by Cargo's layout conventions: the library, the binaries,
/// examples, integration tests, benches and fuzz targets.
fn crate_roots(package: &Path) -> Result<Vec<PathBuf>> {
    let mut roots: Vec<PathBuf> = ["src/lib.rs", "src/main.rs"]
        .iter()
        .map(|f| package.join(f))
        .filter(|f| f.is_file())
        .collect();
    for dir in ["src/bin", "examples", "tests", "benches", "fuzz_targets"] {
        let dir = package.join(dir);
        if !dir.is_dir() {
            continue;
        }
        let mut found = Vec::new();
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "rs") {
                found.push(path);
            } else if path.join("main.rs").is_file() {
                found.push(path.join("main.rs"));
            }
        }
        found.sort();
        roots.extend(found);
    }
    Ok(roots)
}

/// The circles in the crate whose root file is `crate_root`, one loop a line:
/// `a.rs -> b.rs (B) -> a.rs (A)`, files relative to the root's directory, each arrow
/// followed by the names it carries.
fn circles_of_crate(crate_root: &Path) -> Result<Vec<String>> {
    let graph = CrateGraph::load(crate_root)?;
    let arrows = graph.arrows();
    let mut lines = Vec::new();
    for component in strongly_connected(graph.files.len(), &arrows) {
        for lap in laps(&component, &arrows) {
            let mut line = graph.shown(lap[0]);
            for pair in lap.windows(2) {
                let names = arrows
                    .get(&(pair[0], pair[1]))
                    .map(|n| n.iter().cloned().collect::<Vec<_>>().join(", "))
                    .unwrap_or_default();
                line.push_str(&format!(" -> {} ({names})", graph.shown(pair[1])));
            }
            lines.push(line);
        }
    }
    Ok(lines)
}

// ---------------------------------------------------------------------------------------
// Reading Rust source: a token stream without comments, literals and lifetimes.

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    /// `::`
    PathSep,
    Punct(char),
}

impl Token {
    fn is_ident(&self, word: &str) -> bool {
        matches!(self, Token::Ident(w) if w == word)
    }
}

/// The identifiers, `::` and punctuation of `source`; comments, string, character and
/// number literals, and lifetimes are dropped.
fn tokenize(source: &str) -> Vec<Token> {
    let c: Vec<char> = source.chars().collect();
    let at = |i: usize| c.get(i).copied();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(ch) = at(i) {
        if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && at(i + 1) == Some('/') {
            while at(i).is_some_and(|x| x != '\n') {
                i += 1;
            }
        } else if ch == '/' && at(i + 1) == Some('*') {
            i = skip_block_comment(&c, i);
        } else if ch == '"' {
            i = skip_string(&c, i + 1);
        } else if ch == '\'' {
            i = skip_quote(&c, i);
        } else if ch.is_ascii_digit() {
            i = skip_number(&c, i);
        } else if ch == '_' || ch.is_alphabetic() {
            let start = i;
            while at(i).is_some_and(is_ident_char) {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            match (word.as_str(), at(i)) {
                ("r" | "br" | "cr", Some('"' | '#')) if raw_string_ahead(&c, i) => {
                    i = skip_raw_string(&c, i);
                }
                ("r", Some('#')) if at(i + 1).is_some_and(is_ident_char) => {
                    // A raw identifier keeps its `r#`, so `r#type` is never the keyword.
                    i += 1;
                    while at(i).is_some_and(is_ident_char) {
                        i += 1;
                    }
                    out.push(Token::Ident(c[start..i].iter().collect()));
                }
                ("b" | "c", Some('"')) => i = skip_string(&c, i + 1),
                ("b", Some('\'')) => i = skip_quote(&c, i),
                _ => out.push(Token::Ident(word)),
            }
        } else if ch == ':' && at(i + 1) == Some(':') {
            out.push(Token::PathSep);
            i += 2;
        } else {
            out.push(Token::Punct(ch));
            i += 1;
        }
    }
    out
}

fn is_ident_char(ch: char) -> bool {
    ch == '_' || ch.is_alphanumeric()
}

/// `i` is at `/*`; returns the index after the matching `*/` (block comments nest).
fn skip_block_comment(c: &[char], mut i: usize) -> usize {
    let mut depth = 0usize;
    while i < c.len() {
        if c[i] == '/' && c.get(i + 1) == Some(&'*') {
            depth += 1;
            i += 2;
        } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    i
}

/// `i` is just after an opening `"`; returns the index after the closing one.
fn skip_string(c: &[char], mut i: usize) -> usize {
    while i < c.len() {
        match c[i] {
            '\\' => i += 2,
            '"' => return i + 1,
            _ => i += 1,
        }
    }
    i
}

/// `i` is at `#` or `"` after an `r` prefix: whether a raw string starts there.
fn raw_string_ahead(c: &[char], mut i: usize) -> bool {
    while c.get(i) == Some(&'#') {
        i += 1;
    }
    c.get(i) == Some(&'"')
}

/// `i` is at the `#`s or `"` of a raw string; returns the index after its end.
fn skip_raw_string(c: &[char], mut i: usize) -> usize {
    let mut hashes = 0;
    while c.get(i) == Some(&'#') {
        hashes += 1;
        i += 1;
    }
    i += 1;
    while i < c.len() {
        if c[i] == '"' && (1..=hashes).all(|k| c.get(i + k) == Some(&'#')) {
            return i + 1 + hashes;
        }
        i += 1;
    }
    i
}

/// `i` is at `'`: skips a character literal, or a lifetime or label with its name.
fn skip_quote(c: &[char], i: usize) -> usize {
    if c.get(i + 1) == Some(&'\\') {
        let mut j = i + 3;
        while j < c.len() && c[j] != '\'' {
            j += 1;
        }
        return j + 1;
    }
    if c.get(i + 2) == Some(&'\'') {
        return i + 3;
    }
    let mut j = i + 1;
    while c.get(j).copied().is_some_and(is_ident_char) {
        j += 1;
    }
    j
}

/// `i` is at a digit; returns the index after the number literal and its suffix.
fn skip_number(c: &[char], mut i: usize) -> usize {
    loop {
        while c.get(i).copied().is_some_and(is_ident_char) {
            i += 1;
        }
        if c.get(i) == Some(&'.') && c.get(i + 1).is_some_and(|d| d.is_ascii_digit()) {
            i += 1;
        } else {
            return i;
        }
    }
}

// ---------------------------------------------------------------------------------------
// The module tree and what each module names.

/// One module: a file, or a `mod name { … }` block inside one.
#[derive(Debug, Default)]
struct Module {
    file: usize,
    parent: Option<usize>,
    children: BTreeMap<String, usize>,
    /// `use` declarations: the name they bring in -> the path as written.
    imports: BTreeMap<String, Vec<String>>,
    /// `use path::*` declarations.
    globs: Vec<Vec<String>>,
    /// Names of the items defined here.
    defs: BTreeSet<String>,
}

impl Module {
    fn knows(&self, name: &str) -> bool {
        self.children.contains_key(name)
            || self.defs.contains(name)
            || self.imports.contains_key(name)
    }
}

/// A path written in a module, to be resolved once every module is read.
#[derive(Debug)]
struct Reference {
    module: usize,
    path: Vec<String>,
    /// `use path::*`: the arrow carries `*`.
    glob: bool,
}

#[derive(Debug)]
struct CrateGraph {
    /// The directory file names are shown relative to.
    base: PathBuf,
    files: Vec<PathBuf>,
    /// The module each file declares (its outermost one).
    file_module: Vec<usize>,
    modules: Vec<Module>,
    references: Vec<Reference>,
}

/// Where a path leads: a file and the name the arrow carries.
#[derive(Debug)]
struct Target {
    file: usize,
    name: String,
}

impl CrateGraph {
    fn load(crate_root: &Path) -> Result<Self> {
        let base = crate_root
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let mut graph = CrateGraph {
            base: base.clone(),
            files: Vec::new(),
            file_module: Vec::new(),
            modules: Vec::new(),
            references: Vec::new(),
        };
        // Each queued file: its path, the module that declares it and the name it declares
        // it by, and where the file's own children live.
        let mut queue = VecDeque::from([(crate_root.to_path_buf(), None, base)]);
        while let Some((path, declared_by, child_dir)) = queue.pop_front() {
            let source =
                fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            let file = graph.files.len();
            graph.files.push(path);
            let parent = declared_by.as_ref().map(|(parent, _)| *parent);
            let module = graph.add_module(file, parent);
            if let Some((parent, name)) = declared_by {
                graph.modules[parent].children.insert(name, module);
            }
            graph.file_module.push(module);
            for (child_path, parent, name, dir) in graph.scan(&tokenize(&source), module, child_dir)
            {
                queue.push_back((child_path, Some((parent, name)), dir));
            }
        }
        Ok(graph)
    }

    fn add_module(&mut self, file: usize, parent: Option<usize>) -> usize {
        self.modules.push(Module {
            file,
            parent,
            ..Module::default()
        });
        self.modules.len() - 1
    }

    /// Reads one file's tokens into `module` and the inline modules inside it. Returns the
    /// files its `mod name;` declarations name: path, declaring module, name, and where
    /// their own children live.
    fn scan(
        &mut self,
        tokens: &[Token],
        module: usize,
        child_dir: PathBuf,
    ) -> Vec<(PathBuf, usize, String, PathBuf)> {
        let mut declared = Vec::new();
        // Open inline modules: module, the brace depth inside it, its children's directory.
        let mut scopes = vec![(module, 0usize, child_dir)];
        let mut depth = 0usize;
        let mut in_test_item = false;
        let mut i = 0;
        while i < tokens.len() {
            let (current, _, dir) = scopes[scopes.len() - 1].clone();
            let next = tokens.get(i + 1);
            if tokens[i] == Token::Punct('#') {
                let (end, is_test) = attribute(tokens, i);
                in_test_item |= is_test;
                i = end;
                continue;
            }
            if in_test_item {
                i = skip_item(tokens, i);
                in_test_item = false;
                continue;
            }
            match (&tokens[i], next) {
                (Token::Ident(kw), Some(Token::Ident(name))) if kw == "mod" => {
                    match tokens.get(i + 2) {
                        Some(Token::Punct(';')) => {
                            if let Some(path) = module_file(&dir, name) {
                                declared.push((path, current, name.clone(), dir.join(name)));
                            }
                            i += 3;
                        }
                        Some(Token::Punct('{')) => {
                            let inline = self.add_module(self.modules[current].file, Some(current));
                            self.modules[current].children.insert(name.clone(), inline);
                            depth += 1;
                            scopes.push((inline, depth, dir.join(name)));
                            i += 3;
                        }
                        _ => i += 1,
                    }
                }
                (Token::Ident(kw), _) if kw == "use" => i = self.read_use(tokens, i + 1, current),
                (Token::Ident(kw), Some(Token::Ident(name)))
                    if DEFINING_KEYWORDS.contains(&kw.as_str()) =>
                {
                    self.modules[current].defs.insert(name.clone());
                    i += 2;
                }
                (Token::Ident(kw), Some(Token::Punct('!'))) if kw == "macro_rules" => {
                    if let Some(Token::Ident(name)) = tokens.get(i + 2) {
                        self.modules[current].defs.insert(name.clone());
                    }
                    i += 2;
                }
                // `$crate::…` in a macro names the crate where the macro expands, and
                // `::name::…` an external crate.
                (Token::Punct('$'), Some(Token::Ident(_)))
                | (Token::PathSep, Some(Token::Ident(_))) => {
                    i = read_path(tokens, i + 1).1;
                }
                (Token::Ident(_), Some(Token::PathSep)) => {
                    let (path, end) = read_path(tokens, i);
                    self.references.push(Reference {
                        module: current,
                        path,
                        glob: false,
                    });
                    i = end;
                }
                (Token::Punct('{'), _) => {
                    depth += 1;
                    i += 1;
                }
                (Token::Punct('}'), _) => {
                    if scopes.len() > 1 && scopes[scopes.len() - 1].1 == depth {
                        scopes.pop();
                    }
                    depth = depth.saturating_sub(1);
                    i += 1;
                }
                _ => i += 1,
            }
        }
        declared
    }

    /// Reads a `use` tree starting at `i` (after `use`) in `module`; returns the index after
    /// its `;`.
    fn read_use(&mut self, tokens: &[Token], i: usize, module: usize) -> usize {
        let mut leaves = Vec::new();
        let mut i = use_tree(tokens, i, &[], &mut leaves);
        while i < tokens.len() && tokens[i] != Token::Punct(';') {
            i += 1;
        }
        for leaf in leaves {
            match leaf {
                UseLeaf::Glob(path) => {
                    self.modules[module].globs.push(path.clone());
                    self.references.push(Reference {
                        module,
                        path,
                        glob: true,
                    });
                }
                UseLeaf::Name { path, alias } => {
                    if alias != "_" {
                        self.modules[module].imports.insert(alias, path.clone());
                    }
                    self.references.push(Reference {
                        module,
                        path,
                        glob: false,
                    });
                }
            }
        }
        i + 1
    }

    /// Resolves `path` as written in module `from`. `None` when it leaves the crate (an
    /// external crate, `std`, a local type's associated item) or cannot be followed.
    fn resolve(&self, from: usize, path: &[String], hops: usize) -> Option<Target> {
        if hops > MAX_HOPS {
            return None;
        }
        let mut current = from;
        let mut rest = path;
        let plain_head = match rest.first().map(String::as_str) {
            Some("crate") => {
                current = 0;
                rest = &rest[1..];
                false
            }
            Some("self") => {
                rest = &rest[1..];
                false
            }
            Some("super") => {
                while rest.first().is_some_and(|s| s == "super") {
                    current = self.modules[current].parent?;
                    rest = &rest[1..];
                }
                false
            }
            _ => true,
        };
        for (k, segment) in rest.iter().enumerate() {
            let module = &self.modules[current];
            if let Some(&child) = module.children.get(segment) {
                current = child;
                continue;
            }
            if module.defs.contains(segment) {
                return Some(Target {
                    file: module.file,
                    name: segment.clone(),
                });
            }
            if let Some(imported) = module.imports.get(segment) {
                let mut full = imported.clone();
                full.extend_from_slice(&rest[k + 1..]);
                return self.resolve(current, &full, hops + 1);
            }
            for glob in &module.globs {
                if let Some(g) = self.module_at(current, glob) {
                    if g != current && self.modules[g].knows(segment) {
                        return self.resolve(g, &rest[k..], hops + 1);
                    }
                }
            }
            if k == 0 && plain_head {
                return None;
            }
            // Named in this module in a way not read here (a macro, an enum variant): the
            // arrow goes to the module's file.
            return Some(Target {
                file: module.file,
                name: segment.clone(),
            });
        }
        // Every segment named a module: the arrow carries the last one's name.
        Some(Target {
            file: self.modules[current].file,
            name: path.last()?.clone(),
        })
    }

    /// The module a `use …::*` path names, following child modules only.
    fn module_at(&self, from: usize, path: &[String]) -> Option<usize> {
        let mut current = from;
        for segment in path {
            current = match segment.as_str() {
                "crate" => 0,
                "self" => current,
                "super" => self.modules[current].parent?,
                _ => *self.modules[current].children.get(segment)?,
            };
        }
        Some(current)
    }

    /// Whether file `ancestor` declares file `file`'s module, directly or further up.
    fn is_ancestor(&self, ancestor: usize, file: usize) -> bool {
        let mut module = self.modules[self.file_module[file]].parent;
        while let Some(m) = module {
            if self.modules[m].file == ancestor {
                return true;
            }
            module = self.modules[m].parent;
        }
        false
    }

    /// The arrows that count: (from, to) -> the names carried.
    fn arrows(&self) -> Arrows {
        let mut arrows = Arrows::new();
        for r in &self.references {
            let Some(target) = self.resolve(r.module, &r.path, 0) else {
                continue;
            };
            let from = self.modules[r.module].file;
            if target.file == from || self.is_ancestor(target.file, from) {
                continue;
            }
            let name = if r.glob { "*".to_string() } else { target.name };
            arrows.entry((from, target.file)).or_default().insert(name);
        }
        arrows
    }

    fn shown(&self, file: usize) -> String {
        let path = &self.files[file];
        path.strip_prefix(&self.base)
            .unwrap_or(path)
            .display()
            .to_string()
    }
}

/// The file a `mod name;` declared with children in `dir` lives in.
fn module_file(dir: &Path, name: &str) -> Option<PathBuf> {
    [
        dir.join(format!("{name}.rs")),
        dir.join(name).join("mod.rs"),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

/// `i` is at `#`: returns the index after the attribute and whether it is `#[cfg(test)]`.
/// A `#` that starts no attribute is passed over.
fn attribute(tokens: &[Token], i: usize) -> (usize, bool) {
    let mut open = i + 1;
    if tokens.get(open) == Some(&Token::Punct('!')) {
        open += 1;
    }
    if tokens.get(open) != Some(&Token::Punct('[')) {
        return (i + 1, false);
    }
    let mut depth = 0usize;
    let mut end = open;
    while end < tokens.len() {
        match tokens[end] {
            Token::Punct('[') => depth += 1,
            Token::Punct(']') => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            _ => {}
        }
        end += 1;
    }
    let inside = &tokens[(open + 1).min(end)..end];
    let is_test = inside.len() == 4
        && inside[0].is_ident("cfg")
        && inside[1] == Token::Punct('(')
        && inside[2].is_ident("test")
        && inside[3] == Token::Punct(')');
    (end + 1, is_test)
}

/// Skips the item (or field, or statement) starting at `i`: up to a `;` outside brackets, or
/// through the first bracketed block it closes; never past a bracket it did not open.
fn skip_item(tokens: &[Token], mut i: usize) -> usize {
    let mut depth = 0usize;
    while i < tokens.len() {
        match tokens[i] {
            Token::Punct('(' | '[' | '{') => depth += 1,
            Token::Punct(close @ (')' | ']' | '}')) => {
                if depth == 0 {
                    return i;
                }
                depth -= 1;
                if depth == 0 && close == '}' {
                    return i + 1;
                }
            }
            Token::Punct(';') if depth == 0 => return i + 1,
            _ => {}
        }
        i += 1;
    }
    i
}

/// `i` is at an identifier followed by `::`: returns the path's segments and the index after
/// it (a turbofish or a `{` ends it).
fn read_path(tokens: &[Token], mut i: usize) -> (Vec<String>, usize) {
    let mut path = Vec::new();
    while let Some(Token::Ident(segment)) = tokens.get(i) {
        path.push(segment.clone());
        i += 1;
        if tokens.get(i) == Some(&Token::PathSep)
            && matches!(tokens.get(i + 1), Some(Token::Ident(_)))
        {
            i += 1;
        } else {
            break;
        }
    }
    (path, i)
}

#[derive(Debug)]
enum UseLeaf {
    Name { path: Vec<String>, alias: String },
    Glob(Vec<String>),
}

/// Reads one use tree at `i` under `prefix`; returns the index after it.
fn use_tree(tokens: &[Token], mut i: usize, prefix: &[String], out: &mut Vec<UseLeaf>) -> usize {
    let mut path = prefix.to_vec();
    if tokens.get(i) == Some(&Token::PathSep) {
        // `use ::name`: an external crate.
        path.push("::".to_string());
        i += 1;
    }
    loop {
        match tokens.get(i) {
            Some(Token::Ident(segment)) => {
                path.push(segment.clone());
                i += 1;
                if tokens.get(i) == Some(&Token::PathSep) {
                    i += 1;
                } else {
                    break;
                }
            }
            Some(Token::Punct('{')) => {
                i += 1;
                while i < tokens.len() && tokens[i] != Token::Punct('}') {
                    let after = use_tree(tokens, i, &path, out);
                    i = if after == i { i + 1 } else { after };
                    if tokens.get(i) == Some(&Token::Punct(',')) {
                        i += 1;
                    }
                }
                return i + 1;
            }
            Some(Token::Punct('*')) => {
                out.push(UseLeaf::Glob(path));
                return i + 1;
            }
            _ => return i,
        }
    }
    if path.last().is_some_and(|s| s == "self") {
        path.pop();
    }
    let alias = match (tokens.get(i), tokens.get(i + 1)) {
        (Some(t), Some(Token::Ident(alias))) if t.is_ident("as") => {
            i += 2;
            alias.clone()
        }
        _ => path.last().cloned().unwrap_or_default(),
    };
    if !path.is_empty() {
        out.push(UseLeaf::Name { path, alias });
    }
    i
}

// ---------------------------------------------------------------------------------------
// Circles: strongly connected components, and loops that cover their arrows.

type Arrows = BTreeMap<(usize, usize), BTreeSet<String>>;

/// Tarjan's algorithm: the components of more than one node, each sorted.
fn strongly_connected(nodes: usize, arrows: &Arrows) -> Vec<Vec<usize>> {
    struct State {
        next: Vec<Vec<usize>>,
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        counter: usize,
        found: Vec<Vec<usize>>,
    }
    fn visit(s: &mut State, v: usize) {
        s.index[v] = Some(s.counter);
        s.low[v] = s.counter;
        s.counter += 1;
        s.stack.push(v);
        s.on_stack[v] = true;
        for w in s.next[v].clone() {
            match s.index[w] {
                None => {
                    visit(s, w);
                    s.low[v] = s.low[v].min(s.low[w]);
                }
                Some(iw) if s.on_stack[w] => s.low[v] = s.low[v].min(iw),
                Some(_) => {}
            }
        }
        if Some(s.low[v]) == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack[w] = false;
                component.push(w);
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort_unstable();
                s.found.push(component);
            }
        }
    }
    let mut next = vec![Vec::new(); nodes];
    for &(a, b) in arrows.keys() {
        next[a].push(b);
    }
    let mut state = State {
        next,
        index: vec![None; nodes],
        low: vec![0; nodes],
        on_stack: vec![false; nodes],
        stack: Vec::new(),
        counter: 0,
        found: Vec::new(),
    };
    for v in 0..nodes {
        if state.index[v].is_none() {
            visit(&mut state, v);
        }
    }
    state.found.sort();
    state.found
}

/// Loops inside one component that between them run along each of its arrows: for every
/// arrow not yet run, the arrow and then the shortest way back. Each loop starts and ends at
/// its lowest file.
fn laps(component: &[usize], arrows: &Arrows) -> Vec<Vec<usize>> {
    let inside: Vec<(usize, usize)> = arrows
        .keys()
        .copied()
        .filter(|(a, b)| component.contains(a) && component.contains(b))
        .collect();
    let mut run: BTreeSet<(usize, usize)> = BTreeSet::new();
    let mut laps = Vec::new();
    for &(a, b) in &inside {
        if run.contains(&(a, b)) {
            continue;
        }
        let Some(back) = shortest_path(b, a, &inside) else {
            continue;
        };
        let mut lap = vec![a];
        lap.extend(back);
        for pair in lap.windows(2) {
            run.insert((pair[0], pair[1]));
        }
        // Rotate so the lowest file opens and closes the loop.
        lap.pop();
        let lowest = (0..lap.len()).min_by_key(|&k| lap[k]).unwrap_or(0);
        lap.rotate_left(lowest);
        lap.push(lap[0]);
        laps.push(lap);
    }
    laps
}

/// The shortest path from `from` to `to` along `arrows`, both ends included.
fn shortest_path(from: usize, to: usize, arrows: &[(usize, usize)]) -> Option<Vec<usize>> {
    let mut came_from: BTreeMap<usize, usize> = BTreeMap::new();
    let mut queue = VecDeque::from([from]);
    let mut seen = BTreeSet::from([from]);
    while let Some(v) = queue.pop_front() {
        if v == to {
            let mut path = vec![to];
            let mut at = to;
            while at != from {
                at = came_from[&at];
                path.push(at);
            }
            path.reverse();
            return Some(path);
        }
        for &(a, b) in arrows {
            if a == v && seen.insert(b) {
                came_from.insert(b, v);
                queue.push_back(b);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `files` (path, source) under a fresh directory and returns the circles of the
    /// crate rooted at its `src/lib.rs`.
    fn circles(name: &str, files: &[(&str, &str)]) -> Vec<String> {
        let dir = write_tree(name, files);
        let found = circles_of_crate(&dir.join("src/lib.rs")).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        found
    }

    fn write_tree(name: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-circles-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        for (path, source) in files {
            let path = dir.join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, source).unwrap();
        }
        dir
    }

    #[test]
    fn siblings_that_use_each_other_are_a_circle() {
        let found = circles(
            "siblings",
            &[
                ("src/lib.rs", "mod a;\nmod b;\n"),
                ("src/a.rs", "use crate::b::B;\npub struct A(B);\n"),
                (
                    "src/b.rs",
                    "pub struct B;\npub fn make() -> crate::a::A { todo() }\n",
                ),
            ],
        );
        assert_eq!(found, ["a.rs -> b.rs (B) -> a.rs (A)"]);
    }

    #[test]
    fn a_tree_with_one_way_arrows_passes() {
        let found = circles(
            "clean",
            &[
                (
                    "src/lib.rs",
                    "mod a;\nmod b;\nmod c;\npub use a::A;\nfn helper() {}\nfn run() { c::go(); }\n",
                ),
                // A child uses its parent through `super` and `crate`: the module tree.
                (
                    "src/a.rs",
                    "use super::helper;\nuse crate::b::B;\npub struct A(B);\n",
                ),
                ("src/b.rs", "pub struct B;\nfn f() { crate::helper(); }\n"),
                ("src/c.rs", "mod d;\npub struct C;\npub fn go() { d::D::new(); }\n"),
                (
                    "src/c/d.rs",
                    "use super::C;\npub struct D(C);\nfn g() -> crate::A { todo() }\n",
                ),
            ],
        );
        assert_eq!(found, Vec::<String>::new());
    }

    #[test]
    fn test_code_is_not_read() {
        let a = ("src/a.rs", "use crate::b::B;\npub struct A(B);\n");
        let tests_only = circles(
            "tests-only",
            &[
                ("src/lib.rs", "mod a;\nmod b;\n#[cfg(test)]\nmod testing;\n"),
                a,
                (
                    "src/b.rs",
                    "pub struct B;\n\
                     #[cfg(test)]\n#[allow(dead_code)]\nfn helper() -> crate::a::A { todo() }\n\
                     #[cfg(test)]\nmod tests {\n    use super::*;\n    use crate::a::A;\n}\n",
                ),
                // A test-only file may use anything, including what uses it back.
                ("src/testing.rs", "use crate::a::A;\nuse crate::b::B;\n"),
            ],
        );
        assert_eq!(tests_only, Vec::<String>::new());
        // The same arrow outside a test module is a circle.
        let outside = circles(
            "outside-tests",
            &[
                ("src/lib.rs", "mod a;\nmod b;\n"),
                a,
                (
                    "src/b.rs",
                    "pub struct B;\nmod tests {\n    use crate::a::A;\n}\n",
                ),
            ],
        );
        assert_eq!(outside, ["a.rs -> b.rs (B) -> a.rs (A)"]);
    }

    #[test]
    fn re_exports_and_imports_are_followed_to_the_defining_file() {
        let found = circles(
            "re-exports",
            &[
                ("src/lib.rs", "mod a;\nmod b;\npub use b::Thing;\n"),
                // `crate::Thing` is b's, re-exported by lib.rs; `inner` is still a.rs.
                (
                    "src/a.rs",
                    "pub struct A;\nmod inner {\n    fn f() -> crate::Thing { todo() }\n}\n",
                ),
                // `a` imported as a module, then used as a path head.
                (
                    "src/b.rs",
                    "use crate::a;\npub struct Thing;\nfn g() { let _ = a::A; }\n",
                ),
            ],
        );
        assert_eq!(found, ["a.rs -> b.rs (Thing) -> a.rs (A, a)"]);
    }

    #[test]
    fn comments_strings_and_macro_paths_are_not_read() {
        let b = "pub struct B;\n\
                 // crate::a::A\n/* crate::a::A /* nested */ crate::a::A */\n\
                 const S: &str = \"crate::a::A \\\" crate::a::A\";\n\
                 const R: &str = r#\"crate::a::A \" crate::a::A\"#;\n\
                 const C: char = '\"';\nfn f<'x>(s: &'static str) -> &'x str { todo() }\n\
                 macro_rules! m { () => { $crate::a::A }; }\n";
        let run = |name: &str, b: &str| {
            circles(
                name,
                &[
                    ("src/lib.rs", "mod a;\nmod b;\n"),
                    ("src/a.rs", "use crate::b::B;\npub struct A(B);\n"),
                    ("src/b.rs", b),
                ],
            )
        };
        assert_eq!(run("not-code", b), Vec::<String>::new());
        // After all that, a real path is still read.
        let with_path = format!("{b}fn g() -> crate::a::A {{ todo() }}\n");
        assert_eq!(
            run("code-after", &with_path),
            ["a.rs -> b.rs (B) -> a.rs (A)"]
        );
    }

    #[test]
    fn siblings_in_a_folder_reached_through_super() {
        let found = circles(
            "folder",
            &[
                ("src/lib.rs", "mod service;\n"),
                (
                    "src/service/mod.rs",
                    "mod hello;\nmod echo;\npub struct Body;\npub use hello::Hello;\n",
                ),
                (
                    "src/service/hello.rs",
                    "use super::echo::Echo;\nuse super::Body;\npub struct Hello(Echo, Body);\n",
                ),
                (
                    "src/service/echo.rs",
                    "pub struct Echo;\nfn f() -> super::hello::Hello { todo() }\n",
                ),
            ],
        );
        assert_eq!(
            found,
            // Files in the order they are declared: hello.rs before echo.rs.
            ["service/hello.rs -> service/echo.rs (Echo) -> service/hello.rs (Hello)"]
        );
    }

    #[test]
    fn every_arrow_of_a_circle_is_on_some_line() {
        let found = circles(
            "three",
            &[
                ("src/lib.rs", "mod a;\nmod b;\nmod c;\n"),
                ("src/a.rs", "use crate::b::B;\npub struct A;\n"),
                (
                    "src/b.rs",
                    "use crate::{a::A, c::C};\npub struct B;\nuse crate::a::*;\n",
                ),
                ("src/c.rs", "pub struct C(crate::a::A);\n"),
            ],
        );
        assert_eq!(
            found,
            [
                "a.rs -> b.rs (B) -> a.rs (*, A)",
                "a.rs -> b.rs (B) -> c.rs (C) -> a.rs (A)",
            ]
        );
    }

    #[test]
    fn the_workspace_check_names_the_crate() {
        let root = write_tree(
            "workspace",
            &[
                (
                    "crates/demo/Cargo.toml",
                    "[package]\nname = \"demo-crate\"\n",
                ),
                ("crates/demo/src/lib.rs", "mod a;\nmod b;\n"),
                ("crates/demo/src/a.rs", "pub struct A(crate::b::B);\n"),
                ("crates/demo/src/b.rs", "pub struct B(Box<crate::a::A>);\n"),
                ("crates/clean/Cargo.toml", "[package]\nname = \"clean\"\n"),
                (
                    "crates/clean/src/main.rs",
                    "mod a;\nfn main() { a::run() }\n",
                ),
                ("crates/clean/src/a.rs", "pub fn run() {}\n"),
            ],
        );
        let mut problems = Vec::new();
        check(&root, &mut problems).unwrap();
        fs::remove_dir_all(&root).unwrap();
        assert_eq!(
            problems,
            ["demo-crate: import circle: a.rs -> b.rs (B) -> a.rs (A)"]
        );
    }
}
