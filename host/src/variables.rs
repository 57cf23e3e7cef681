//! Application variables (`[variables]`): resolved once at start-up from, in order of
//! precedence, the `SPIN_VARIABLE_<NAME>` environment and the manifest default.
//! A required variable with no value is a start-up error. Secret values are never
//! logged; `Debug` redacts them.

use std::collections::BTreeMap;
use std::fmt;

use crate::manifest::{Manifest, Template};

#[derive(Clone)]
pub struct ResolvedVariable {
    pub value: String,
    pub secret: bool,
}

impl fmt::Debug for ResolvedVariable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.secret {
            f.write_str("<secret>")
        } else {
            write!(f, "{:?}", self.value)
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Variables {
    values: BTreeMap<String, ResolvedVariable>,
}

pub fn env_name(variable: &str) -> String {
    format!("SPIN_VARIABLE_{}", variable.to_ascii_uppercase())
}

impl Variables {
    /// Resolves every declared variable using `env` for lookups (the process
    /// environment in production, a map in tests).
    pub fn resolve(manifest: &Manifest, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let mut values = BTreeMap::new();
        let mut missing = Vec::new();
        for (name, decl) in &manifest.raw.variables {
            match env(&env_name(name)).or_else(|| decl.default.clone()) {
                Some(value) => {
                    values.insert(
                        name.clone(),
                        ResolvedVariable {
                            value,
                            secret: decl.secret,
                        },
                    );
                }
                None if decl.required => missing.push(format!("`{name}` (set {})", env_name(name))),
                None => {}
            }
        }
        if !missing.is_empty() {
            anyhow::bail!(
                "{}: required variable(s) have no value: {}",
                manifest.path.display(),
                missing.join(", ")
            );
        }
        Ok(Self { values })
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(|v| v.value.as_str())
    }

    /// Renders a `{{ variable }}` template from the manifest with these values.
    pub fn render(&self, text: &str) -> Result<String, String> {
        Template::parse(text)?.render(|v| self.get(v).map(str::to_string))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn manifest() -> Manifest {
        Manifest::parse(
            Path::new("spin.toml"),
            "spin_manifest_version = 2\n[application]\nname = \"t\"\n[variables]\nhost = { default = \"a.example\" }\ntoken = { required = true, secret = true }\n",
        )
        .unwrap()
    }

    #[test]
    fn environment_overrides_default_and_fills_required() {
        let vars = Variables::resolve(&manifest(), |k| match k {
            "SPIN_VARIABLE_HOST" => Some("b.example".into()),
            "SPIN_VARIABLE_TOKEN" => Some("s3cret".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(vars.get("host"), Some("b.example"));
        assert_eq!(vars.get("token"), Some("s3cret"));
        assert!(
            !format!("{vars:?}").contains("s3cret"),
            "secrets must not appear in Debug output"
        );
    }

    #[test]
    fn missing_required_variable_is_an_error_naming_it() {
        let err = Variables::resolve(&manifest(), |_| None).unwrap_err().to_string();
        assert!(err.contains("`token`") && err.contains("SPIN_VARIABLE_TOKEN"), "{err}");
    }
}
