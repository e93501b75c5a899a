//! The set of templates a platform offers, usually one directory of files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::load::{combine, problems_of};
use super::{Format, TaskTemplate};
use crate::{Error, Result};

/// How many similar names a [`Error::TemplateNotFound`] suggests at most.
const MAX_CLOSE_MATCHES: usize = 3;

/// Templates by name.
///
/// ```
/// use ops_tasks::template::{Catalogue, TaskTemplate};
/// use serde_json::json;
///
/// let mut catalogue = Catalogue::new();
/// catalogue.insert(TaskTemplate::from_value(
///     json!({"name": "render", "command": ["blender", "-b"]}),
///     "render",
/// )?);
/// assert_eq!(catalogue.get("render")?.command(), ["blender", "-b"]);
/// let err = catalogue.get("rendr").unwrap_err();
/// assert!(err.to_string().contains("did you mean render?"), "{err}");
/// # Ok::<(), ops_tasks::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct Catalogue {
    templates: BTreeMap<String, Arc<TaskTemplate>>,
}

impl Catalogue {
    /// An empty catalogue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Loads every `.toml`, `.yaml`, `.yml` and `.json` file directly in `dir`
    /// (not in subdirectories; hidden files and other extensions are skipped).
    ///
    /// All problems of all files are reported together, one as itself and several as
    /// [`Error::InvalidTemplates`]; a name defined by two files is an
    /// [`Error::InvalidTemplate`] naming both.
    pub fn load_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let path = entry.map_err(|e| Error::io(dir, e))?.path();
            let hidden = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_none_or(|n| n.starts_with('.'));
            if !hidden && Format::from_path(&path).is_some() && path.is_file() {
                files.push(path);
            }
        }
        files.sort();

        let mut catalogue = Catalogue::new();
        let mut sources: BTreeMap<String, PathBuf> = BTreeMap::new();
        let mut problems = Vec::new();
        for path in files {
            match TaskTemplate::from_file(&path) {
                Ok(template) => {
                    if let Some(first) = sources.get(template.name()) {
                        problems.push(Error::InvalidTemplate {
                            file: path.clone(),
                            field: "name".into(),
                            message: format!(
                                "duplicate template name {:?}, already defined in {}",
                                template.name(),
                                first.display()
                            ),
                        });
                        continue;
                    }
                    sources.insert(template.name().to_owned(), path);
                    catalogue.insert(template);
                }
                Err(e) => problems.extend(problems_of(e)),
            }
        }
        if !problems.is_empty() {
            return Err(combine(&mut problems));
        }
        tracing::debug!(dir = %dir.display(), templates = catalogue.len(), "loaded template catalogue");
        Ok(catalogue)
    }

    /// Adds a template, replacing and returning one of the same name.
    pub fn insert(&mut self, template: impl Into<Arc<TaskTemplate>>) -> Option<Arc<TaskTemplate>> {
        let template = template.into();
        self.templates.insert(template.name().to_owned(), template)
    }

    /// The template called `name`, or [`Error::TemplateNotFound`] with up to three
    /// similar names, most similar first.
    pub fn get(&self, name: &str) -> Result<Arc<TaskTemplate>> {
        self.templates
            .get(name)
            .cloned()
            .ok_or_else(|| Error::TemplateNotFound {
                name: name.to_owned(),
                close_matches: self.close_matches(name),
            })
    }

    /// Template names in order.
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.templates.keys().map(String::as_str)
    }

    /// Templates in name order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<TaskTemplate>> + '_ {
        self.templates.values()
    }

    /// Number of templates.
    pub fn len(&self) -> usize {
        self.templates.len()
    }

    /// Whether there are no templates.
    pub fn is_empty(&self) -> bool {
        self.templates.is_empty()
    }

    /// Names similar to `name`: Jaro–Winkler ≥ 0.8, at most two edits, or one a prefix of
    /// the other; best first.
    fn close_matches(&self, name: &str) -> Vec<String> {
        let wanted = name.to_lowercase();
        let mut scored: Vec<(f64, &str)> = self
            .names()
            .filter_map(|candidate| {
                let score = strsim::jaro_winkler(&wanted, candidate);
                let edits = strsim::levenshtein(&wanted, candidate);
                let prefix = !wanted.is_empty()
                    && (candidate.starts_with(&wanted) || wanted.starts_with(candidate));
                (score >= 0.8 || (edits <= 2 && edits < candidate.len()) || prefix)
                    .then_some((score, candidate))
            })
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        scored
            .into_iter()
            .take(MAX_CLOSE_MATCHES)
            .map(|(_, n)| n.to_owned())
            .collect()
    }
}

impl<'a> IntoIterator for &'a Catalogue {
    type Item = &'a Arc<TaskTemplate>;
    type IntoIter = std::collections::btree_map::Values<'a, String, Arc<TaskTemplate>>;

    fn into_iter(self) -> Self::IntoIter {
        self.templates.values()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn catalogue(names: &[&str]) -> Catalogue {
        let mut c = Catalogue::new();
        for name in names {
            c.insert(
                TaskTemplate::from_value(json!({"name": name, "command": ["true"]}), name).unwrap(),
            );
        }
        c
    }

    fn suggestions(c: &Catalogue, name: &str) -> Vec<String> {
        match c.get(name) {
            Err(Error::TemplateNotFound { close_matches, .. }) => close_matches,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn close_matches_best_first() {
        let c = catalogue(&["render", "render-gpu", "train", "transcode", "convert", "x"]);
        assert_eq!(suggestions(&c, "rendr")[0], "render");
        assert_eq!(suggestions(&c, "Render")[0], "render");
        assert_eq!(suggestions(&c, "tran"), ["train", "transcode"]);
        assert!(suggestions(&c, "zzzzzzzz").is_empty());
        assert!(suggestions(&c, "render-gpu2").starts_with(&["render-gpu".to_owned()]));
        assert!(suggestions(&c, "ab").is_empty());
        assert!(suggestions(&c, "rend").len() <= MAX_CLOSE_MATCHES);
    }

    #[test]
    fn insert_replaces_and_lists() {
        let mut c = catalogue(&["b", "a"]);
        assert_eq!(c.names().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(c.len(), 2);
        assert!(!c.is_empty());
        let old = c.insert(
            TaskTemplate::from_value(json!({"name": "a", "command": ["false"]}), "a").unwrap(),
        );
        assert_eq!(old.unwrap().command(), ["true"]);
        assert_eq!(c.get("a").unwrap().command(), ["false"]);
        assert_eq!(c.iter().count(), 2);
        assert_eq!((&c).into_iter().count(), 2);
    }
}
