//! Build contexts: what of the workspace the engine gets for one image, as its
//! `.dockerignore` says and never more (no symlink is followed out of the context).

use std::path::{Path, PathBuf};

use globset::GlobMatcher;

#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("cannot read the build context {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "`.dockerignore` in {context} has a pattern berth cannot read: `{pattern}` ({detail})"
    )]
    Pattern {
        context: String,
        pattern: String,
        detail: String,
    },
}

/// The rules of a `.dockerignore`, applied as moby applies them: a pattern matches a path
/// or any of its parent directories, `!` re-includes, and the last matching line decides.
pub struct DockerIgnore {
    rules: Vec<(GlobMatcher, bool)>,
}

impl DockerIgnore {
    pub fn parse(text: &str, context: &str) -> Result<DockerIgnore, ContextError> {
        let mut rules = Vec::new();
        for raw in text.lines() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (negated, pattern) = match line.strip_prefix('!') {
                Some(p) => (true, p.trim()),
                None => (false, line),
            };
            let cleaned = clean(pattern);
            if cleaned.is_empty() {
                continue;
            }
            let glob = globset::GlobBuilder::new(&cleaned)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|e| ContextError::Pattern {
                    context: context.into(),
                    pattern: line.into(),
                    detail: e.to_string(),
                })?;
            rules.push((glob.compile_matcher(), negated));
        }
        Ok(DockerIgnore { rules })
    }

    pub fn has_exceptions(&self) -> bool {
        self.rules.iter().any(|(_, neg)| *neg)
    }

    /// Whether `path` (relative, `/`-separated) is left out of the context.
    pub fn excludes(&self, path: &str) -> bool {
        let mut excluded = false;
        for (glob, negated) in &self.rules {
            let mut candidates = vec![path.to_string()];
            let mut parent = Path::new(path).parent();
            while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
                candidates.push(p.to_string_lossy().into());
                parent = p.parent();
            }
            if candidates.iter().any(|c| glob.is_match(c)) {
                excluded = !negated;
            }
        }
        excluded
    }
}

/// Go's `filepath.Clean` as Docker applies it to patterns, without the leading `/`.
fn clean(pattern: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in pattern.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

/// A tar of `context`, honouring its `.dockerignore`, storing symlinks as links (never
/// following one out of the context). The Dockerfile and `.dockerignore` are always sent,
/// as Docker does; a Dockerfile outside the context is added under `extra_name`.
pub fn context_tar(
    context: &Path,
    dockerfile: &Path,
    extra_name: &str,
) -> Result<(Vec<u8>, String), ContextError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| ContextError::Io { path, source }
    };
    let ignore_text = std::fs::read_to_string(context.join(".dockerignore")).unwrap_or_default();
    let ignore = DockerIgnore::parse(&ignore_text, &context.display().to_string())?;
    let dockerfile_rel = dockerfile
        .strip_prefix(context)
        .ok()
        .map(|p| p.to_string_lossy().replace('\\', "/"));
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder.mode(tar::HeaderMode::Deterministic);
    let mut stack = vec![PathBuf::new()];
    while let Some(rel_dir) = stack.pop() {
        let dir = context.join(&rel_dir);
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .map_err(io(&dir))?
            .collect::<Result<_, _>>()
            .map_err(io(&dir))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let rel = rel_dir.join(entry.file_name());
            let rel_str = rel.to_string_lossy().replace('\\', "/");
            let always = rel_str == ".dockerignore" || Some(&rel_str) == dockerfile_rel.as_ref();
            let file_type = entry.file_type().map_err(io(&entry.path()))?;
            if !always && ignore.excludes(&rel_str) {
                // A later `!` line may re-include something below an excluded dir.
                if !(file_type.is_dir() && ignore.has_exceptions()) {
                    continue;
                }
            }
            if file_type.is_dir() {
                builder
                    .append_dir(&rel, entry.path())
                    .map_err(io(&entry.path()))?;
                stack.push(rel);
            } else {
                builder
                    .append_path_with_name(entry.path(), &rel)
                    .map_err(io(&entry.path()))?;
            }
        }
    }
    let name = match dockerfile_rel {
        Some(rel) => rel,
        None => {
            builder
                .append_path_with_name(dockerfile, extra_name)
                .map_err(io(dockerfile))?;
            extra_name.to_string()
        }
    };
    let bytes = builder.into_inner().map_err(io(context))?;
    Ok((bytes, name))
}
