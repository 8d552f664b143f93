//! Where templates come from: the built-ins compiled into the binary, overridden or
//! extended by template folders (site folder, then user folder; the later folder wins).
//!
//! A folder holds `<name>.toml` + `<name>.sbatch.j2` pairs. A folder that does not exist
//! is skipped (most sites have no site folder); one that cannot be read is an error naming
//! it. `list` keeps going past a broken template and reports its problem in the listing.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::render::{render, template_hash, RenderContext, Rendered, ShippedTool};
use super::spec::TemplateSpec;
use super::{lint, quote, TemplateError};

macro_rules! builtin {
    ($name:literal) => {
        (
            $name,
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../templates/",
                $name,
                ".toml"
            )),
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../templates/",
                $name,
                ".sbatch.j2"
            )),
        )
    };
}

/// The built-in templates: (name, spec, body), embedded at build time from `templates/`.
const BUILTINS: &[(&str, &str, &str)] =
    &[builtin!("unet-seg"), builtin!("align"), builtin!("convert")];

/// Programs shipped with the built-in templates (`[tools] files`), from `templates/tools/`.
const BUILTIN_TOOLS: &[(&str, &str)] = &[
    (
        "unet-predict",
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../templates/tools/unet-predict"
        )),
    ),
    (
        "unet-tiny-model",
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../templates/tools/unet-tiny-model"
        )),
    ),
];

const SPEC_EXT: &str = "toml";
const BODY_SUFFIX: &str = ".sbatch.j2";

/// Where a template was found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "path")]
pub enum TemplateOrigin {
    /// Compiled into hpcstage.
    BuiltIn,
    /// A spec file in a template folder.
    File(PathBuf),
}

impl fmt::Display for TemplateOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TemplateOrigin::BuiltIn => f.write_str("built-in"),
            TemplateOrigin::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A loaded template: checked spec and body.
#[derive(Debug, Clone)]
pub struct Template {
    pub spec: TemplateSpec,
    /// The `.sbatch.j2` text.
    pub body: String,
    pub origin: TemplateOrigin,
    /// The spec's `[tools] files`, read: copied into every run folder it renders.
    pub tools: Vec<ShippedTool>,
}

impl Template {
    /// Check a spec and body: the spec parses, its name is `expected_name` (when given), the
    /// body parses as a template and interpolates nothing where quoting cannot protect it.
    pub fn parse(
        spec_source: &str,
        body: &str,
        origin: TemplateOrigin,
        expected_name: Option<&str>,
    ) -> Result<Self, TemplateError> {
        let origin_text = match &origin {
            TemplateOrigin::BuiltIn => format!("built-in {}", expected_name.unwrap_or("template")),
            TemplateOrigin::File(p) => p.display().to_string(),
        };
        let spec = TemplateSpec::parse(spec_source, &origin_text)?;
        if let Some(expected) = expected_name {
            if spec.template.name != expected {
                return Err(TemplateError::Spec {
                    origin: origin_text,
                    reason: format!(
                        "[template] name is {:?} but the file is named {expected:?}",
                        spec.template.name
                    ),
                });
            }
        }
        let name = spec.template.name.clone();
        quote::shell_env()
            .template_from_named_str(&name, body)
            .map_err(|e| TemplateError::Syntax {
                template: name.clone(),
                reason: quote::describe(&e, body),
            })?;
        lint::check(&name, body, &spec.trusted_params())?;
        let tools = spec
            .tools
            .files
            .iter()
            .map(|file| read_tool(&name, &origin, file))
            .collect::<Result<_, _>>()?;
        Ok(Template {
            spec,
            body: body.to_string(),
            origin,
            tools,
        })
    }

    /// Load `<dir>/<name>.toml` and the `<dir>/<name>.sbatch.j2` beside it.
    pub fn load(spec_path: &Path) -> Result<Self, TemplateError> {
        let name = template_name(spec_path).ok_or_else(|| TemplateError::Spec {
            origin: spec_path.display().to_string(),
            reason: "a template spec is named <name>.toml".to_string(),
        })?;
        let body_path = body_path(spec_path, &name);
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| {
                if source.kind() == std::io::ErrorKind::NotFound {
                    TemplateError::MissingFile {
                        name: name.clone(),
                        path: p.to_path_buf(),
                    }
                } else {
                    TemplateError::Io {
                        path: p.to_path_buf(),
                        error: source,
                    }
                }
            })
        };
        let spec = read(spec_path)?;
        let body = read(&body_path)?;
        Template::parse(
            &spec,
            &body,
            TemplateOrigin::File(spec_path.to_path_buf()),
            Some(&name),
        )
    }

    pub fn name(&self) -> &str {
        &self.spec.template.name
    }

    /// `sha256(spec || 0x00 || body)`, lowercase hex.
    pub fn hash(&self) -> String {
        template_hash(&self.spec.source, &self.body)
    }

    /// Render this template for one run; see [`super::render`].
    pub fn render(
        &self,
        params: &BTreeMap<String, String>,
        ctx: &RenderContext,
    ) -> Result<Rendered, TemplateError> {
        let mut rendered = render(&self.spec, &self.body, params, ctx)?;
        rendered.tools.clone_from(&self.tools);
        Ok(rendered)
    }

    /// The listing entry of this template.
    pub fn info(&self) -> TemplateInfo {
        TemplateInfo {
            name: self.spec.template.name.clone(),
            version: self.spec.template.version.clone(),
            description: self.spec.template.description.clone(),
            workflow: self.spec.template.workflow.clone(),
            origin: self.origin.clone(),
            shadows: Vec::new(),
            problem: None,
        }
    }
}

/// One entry of [`TemplateStore::list`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateInfo {
    pub name: String,
    pub version: String,
    pub description: String,
    pub workflow: String,
    /// Where the template in effect comes from.
    pub origin: TemplateOrigin,
    /// Templates of the same name it overrides, earliest first.
    pub shadows: Vec<TemplateOrigin>,
    /// Why the template in effect cannot be used, when it cannot.
    pub problem: Option<String>,
}

/// The built-in templates plus template folders, later folders winning.
#[derive(Debug, Clone, Default)]
pub struct TemplateStore {
    dirs: Vec<PathBuf>,
}

impl TemplateStore {
    /// Built-in templates only.
    pub fn new() -> Self {
        TemplateStore::default()
    }

    /// Built-ins overridden by `dirs`, in order (site folder first, user folder last).
    pub fn with_dirs<I, P>(dirs: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: Into<PathBuf>,
    {
        TemplateStore {
            dirs: dirs.into_iter().map(Into::into).collect(),
        }
    }

    /// Add a folder that overrides everything added before it.
    pub fn add_dir(&mut self, dir: impl Into<PathBuf>) {
        self.dirs.push(dir.into());
    }

    /// The template folders, in order.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Every template in effect, sorted by name. A broken template is listed with its
    /// problem rather than hiding the others.
    pub fn list(&self) -> Result<Vec<TemplateInfo>, TemplateError> {
        let mut found: BTreeMap<String, Vec<TemplateOrigin>> = BTreeMap::new();
        for (name, _, _) in BUILTINS {
            found
                .entry((*name).to_string())
                .or_default()
                .push(TemplateOrigin::BuiltIn);
        }
        for dir in &self.dirs {
            for spec_path in spec_files(dir)? {
                if let Some(name) = template_name(&spec_path) {
                    found
                        .entry(name)
                        .or_default()
                        .push(TemplateOrigin::File(spec_path));
                }
            }
        }
        let mut out = Vec::new();
        for (name, mut origins) in found {
            let origin = origins.pop().expect("every entry has an origin");
            let mut info = match self.load(&name, &origin) {
                Ok(t) => t.info(),
                Err(e) => TemplateInfo {
                    name: name.clone(),
                    version: String::new(),
                    description: String::new(),
                    workflow: String::new(),
                    origin,
                    shadows: Vec::new(),
                    problem: Some(e.to_string()),
                },
            };
            info.shadows = origins;
            out.push(info);
        }
        Ok(out)
    }

    /// Names of all templates in effect.
    pub fn names(&self) -> Result<Vec<String>, TemplateError> {
        Ok(self.list()?.into_iter().map(|i| i.name).collect())
    }

    /// The template called `name`, from the last folder that has it, else the built-ins.
    pub fn get(&self, name: &str) -> Result<Template, TemplateError> {
        if super::is_simple_name(name) {
            for dir in self.dirs.iter().rev() {
                let spec_path = dir.join(format!("{name}.{SPEC_EXT}"));
                if spec_path.is_file() {
                    return Template::load(&spec_path);
                }
                let body = dir.join(format!("{name}{BODY_SUFFIX}"));
                if body.is_file() {
                    return Err(TemplateError::MissingFile {
                        name: name.to_string(),
                        path: spec_path,
                    });
                }
            }
            if BUILTINS.iter().any(|(n, _, _)| *n == name) {
                return self.load(name, &TemplateOrigin::BuiltIn);
            }
        }
        Err(TemplateError::UnknownTemplate {
            name: name.to_string(),
            available: self
                .names()
                .unwrap_or_else(|_| BUILTINS.iter().map(|(n, _, _)| (*n).to_string()).collect()),
        })
    }

    fn load(&self, name: &str, origin: &TemplateOrigin) -> Result<Template, TemplateError> {
        match origin {
            TemplateOrigin::BuiltIn => {
                let (_, spec, body) = BUILTINS
                    .iter()
                    .find(|(n, _, _)| *n == name)
                    .expect("callers pass built-in names only");
                Template::parse(spec, body, TemplateOrigin::BuiltIn, Some(name))
            }
            TemplateOrigin::File(p) => Template::load(p),
        }
    }
}

/// `<name>` of `<dir>/<name>.toml`, when it is a usable template name.
/// A file of `[tools] files`: compiled in for a built-in, else `tools/<file>` beside the spec.
fn read_tool(
    template: &str,
    origin: &TemplateOrigin,
    file: &str,
) -> Result<ShippedTool, TemplateError> {
    let content = match origin {
        TemplateOrigin::BuiltIn => BUILTIN_TOOLS
            .iter()
            .find(|(n, _)| *n == file)
            .map(|(_, text)| (*text).to_string())
            .ok_or_else(|| TemplateError::MissingFile {
                name: template.to_string(),
                path: PathBuf::from("templates/tools").join(file),
            })?,
        TemplateOrigin::File(spec) => {
            let path = spec
                .parent()
                .unwrap_or(Path::new("."))
                .join("tools")
                .join(file);
            std::fs::read_to_string(&path).map_err(|source| {
                if source.kind() == std::io::ErrorKind::NotFound {
                    TemplateError::MissingFile {
                        name: template.to_string(),
                        path,
                    }
                } else {
                    TemplateError::Io {
                        path,
                        error: source,
                    }
                }
            })?
        }
    };
    Ok(ShippedTool::new(file, content))
}

fn template_name(spec_path: &Path) -> Option<String> {
    if spec_path.extension()? != SPEC_EXT {
        return None;
    }
    let stem = spec_path.file_stem()?.to_str()?;
    super::is_simple_name(stem).then(|| stem.to_string())
}

fn body_path(spec_path: &Path, name: &str) -> PathBuf {
    spec_path.with_file_name(format!("{name}{BODY_SUFFIX}"))
}

/// The `*.toml` files of a template folder, sorted; none when the folder does not exist.
fn spec_files(dir: &Path) -> Result<Vec<PathBuf>, TemplateError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(TemplateError::Io {
                path: dir.to_path_buf(),
                error: source,
            })
        }
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| TemplateError::Io {
            path: dir.to_path_buf(),
            error: source,
        })?;
        let path = entry.path();
        if path.extension().is_some_and(|e| e == SPEC_EXT) && path.is_file() {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = "[template]\nname = \"NAME\"\nversion = \"VERSION\"\ndescription = \"d\"\nworkflow = \"w\"\n";

    fn write_template(dir: &Path, name: &str, version: &str, body: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(
            dir.join(format!("{name}.toml")),
            SPEC.replace("NAME", name).replace("VERSION", version),
        )
        .unwrap();
        std::fs::write(dir.join(format!("{name}.sbatch.j2")), body).unwrap();
    }

    #[test]
    fn builtins_are_listed_and_load() {
        let store = TemplateStore::new();
        let list = store.list().unwrap();
        let names: Vec<&str> = list.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["align", "convert", "unet-seg"]);
        for info in &list {
            assert_eq!(info.origin, TemplateOrigin::BuiltIn);
            assert_eq!(info.problem, None, "{}", info.name);
            assert!(!info.description.is_empty());
        }
        assert_eq!(store.get("unet-seg").unwrap().hash().len(), 64);
    }

    #[test]
    fn later_folders_override_earlier_ones_and_add_templates() {
        let tmp = tempfile::tempdir().unwrap();
        let site = tmp.path().join("site");
        let user = tmp.path().join("user");
        write_template(&site, "unet-seg", "9.site", "echo site\n");
        write_template(&site, "extra", "1", "echo extra\n");
        write_template(&user, "unet-seg", "9.user", "echo user\n");
        let store =
            TemplateStore::with_dirs([site.clone(), user.clone(), tmp.path().join("absent")]);
        let t = store.get("unet-seg").unwrap();
        assert_eq!(t.spec.template.version, "9.user");
        assert_eq!(t.origin, TemplateOrigin::File(user.join("unet-seg.toml")));
        let list = store.list().unwrap();
        let seg = list.iter().find(|i| i.name == "unet-seg").unwrap();
        assert_eq!(
            seg.shadows,
            vec![
                TemplateOrigin::BuiltIn,
                TemplateOrigin::File(site.join("unet-seg.toml"))
            ]
        );
        assert!(list.iter().any(|i| i.name == "extra" && i.version == "1"));
    }

    #[test]
    fn unknown_names_list_what_exists() {
        let err = TemplateStore::new().get("unet").unwrap_err().to_string();
        assert_eq!(
            err,
            "unknown template \"unet\"; available: align, convert, unet-seg"
        );
        let err = TemplateStore::new()
            .get("../etc/passwd")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("unknown template"), "{err}");
    }

    #[test]
    fn broken_templates_are_listed_with_their_problem() {
        let tmp = tempfile::tempdir().unwrap();
        write_template(tmp.path(), "quoted", "1", "echo \"{{ run_id }}\"\n");
        write_template(tmp.path(), "syntax", "1", "echo {{ run_id \n");
        std::fs::write(
            tmp.path().join("lonely.toml"),
            SPEC.replace("NAME", "lonely"),
        )
        .unwrap();
        std::fs::write(
            tmp.path().join("misnamed.toml"),
            SPEC.replace("NAME", "other"),
        )
        .unwrap();
        std::fs::write(tmp.path().join("misnamed.sbatch.j2"), "true\n").unwrap();
        let store = TemplateStore::with_dirs([tmp.path()]);
        let list = store.list().unwrap();
        let problem = |n: &str| {
            list.iter()
                .find(|i| i.name == n)
                .and_then(|i| i.problem.clone())
                .unwrap_or_default()
        };
        assert!(
            problem("quoted").contains("inside double quotes"),
            "{}",
            problem("quoted")
        );
        assert!(
            problem("syntax").contains("syntax error"),
            "{}",
            problem("syntax")
        );
        assert!(
            problem("lonely").contains("lonely.sbatch.j2 is missing"),
            "{}",
            problem("lonely")
        );
        assert!(
            problem("misnamed").contains("file is named"),
            "{}",
            problem("misnamed")
        );
        assert_eq!(problem("unet-seg"), "");
        assert!(matches!(
            store.get("lonely"),
            Err(TemplateError::MissingFile { .. })
        ));
    }
}
