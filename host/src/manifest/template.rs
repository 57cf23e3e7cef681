//! `{{ name }}` template expressions, as Spin allows them in component variables and
//! `allowed_outbound_hosts`.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePart {
    Literal(String),
    Variable(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub parts: Vec<TemplatePart>,
}

impl Template {
    /// Parses `text`; an unclosed `{{` or an empty name is an error.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(TemplatePart::Literal(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end = after.find("}}").ok_or_else(|| format!("unclosed `{{{{` in {text:?}"))?;
            let name = after[..end].trim();
            if name.is_empty() {
                return Err(format!("empty `{{{{ }}}}` in {text:?}"));
            }
            parts.push(TemplatePart::Variable(name.to_string()));
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            parts.push(TemplatePart::Literal(rest.to_string()));
        }
        Ok(Self { parts })
    }

    pub fn variables(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            TemplatePart::Variable(v) => Some(v.as_str()),
            TemplatePart::Literal(_) => None,
        })
    }

    /// Substitutes every variable using `lookup`; a variable it cannot resolve is an error.
    pub fn render(&self, mut lookup: impl FnMut(&str) -> Option<String>) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                TemplatePart::Literal(l) => out.push_str(l),
                TemplatePart::Variable(v) => {
                    out.push_str(&lookup(v).ok_or_else(|| format!("no value for variable `{v}`"))?)
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_literals_and_variables() {
        let t = Template::parse("https://{{ api_host }}:{{port}}/x").unwrap();
        assert_eq!(t.variables().collect::<Vec<_>>(), ["api_host", "port"]);
        let rendered = t
            .render(|v| {
                Some(if v == "port" {
                    "8443".into()
                } else {
                    "pay.example".into()
                })
            })
            .unwrap();
        assert_eq!(rendered, "https://pay.example:8443/x");
    }

    #[test]
    fn rejects_unclosed_and_empty() {
        assert!(Template::parse("{{ a").is_err());
        assert!(Template::parse("x{{  }}").is_err());
        assert_eq!(
            Template::parse("plain").unwrap().parts,
            [TemplatePart::Literal("plain".into())]
        );
    }

    #[test]
    fn render_reports_missing_variable() {
        let err = Template::parse("{{ nope }}").unwrap().render(|_| None).unwrap_err();
        assert!(err.contains("nope"));
    }
}
