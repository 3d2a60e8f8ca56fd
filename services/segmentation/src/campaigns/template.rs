//! Message templates: text with `{{ path }}` and `{{ path | fallback }}` variables,
//! checked against the variables a message may use when a campaign is saved and
//! filled per recipient when its message is due.

use std::collections::BTreeSet;

/// Customer fields a message may use, besides `attributes.<key>` and `traits.<name>`.
pub const FIELDS: &[&str] = &[
    "display_name",
    "given_name",
    "family_name",
    "region",
    "locality",
    "lifecycle_stage",
    "rfm_group",
];

/// The tracked link (needs `MessageTemplate.link`).
pub const LINK_URL: &str = "link_url";
/// The one-click unsubscribe link.
pub const UNSUBSCRIBE_URL: &str = "unsubscribe_url";

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Text(String),
    Var { path: String, fallback: Option<String> },
}

/// A parsed template.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Template {
    pub parts: Vec<Part>,
}

/// A problem at a character column (1-based) of the template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    pub column: usize,
    pub message: String,
}

impl std::fmt::Display for TemplateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "at column {}: {}", self.column, self.message)
    }
}

fn valid_key(key: &str) -> bool {
    let mut chars = key.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.')
        && key.len() <= 64
}

/// Whether `path` names a variable; `traits` are the trait names in force.
fn check_path(path: &str, traits: &dyn Fn(&str) -> bool) -> Result<(), String> {
    if FIELDS.contains(&path) || path == LINK_URL || path == UNSUBSCRIBE_URL {
        return Ok(());
    }
    if let Some(key) = path.strip_prefix("attributes.") {
        return if valid_key(key) {
            Ok(())
        } else {
            Err(format!("`{path}`: an attribute key is [a-z][a-z0-9_.]{{0,63}}"))
        };
    }
    if let Some(name) = path.strip_prefix("traits.") {
        return if traits(name) {
            Ok(())
        } else {
            Err(format!("`{path}`: no computed trait `{name}` is in force"))
        };
    }
    Err(format!(
        "unknown variable `{path}`; use one of {}, attributes.<key>, traits.<name>, {LINK_URL}, {UNSUBSCRIBE_URL}",
        FIELDS.join(", ")
    ))
}

impl Template {
    /// Parses and checks `text`; `traits` tells which trait names exist.
    pub fn parse(text: &str, traits: &dyn Fn(&str) -> bool) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = text;
        let mut offset = 0usize;
        let column = |byte: usize| text[..byte].chars().count() + 1;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let start = offset + open;
            let inner_start = open + 2;
            let Some(close) = rest[inner_start..].find("}}") else {
                return Err(TemplateError {
                    column: column(start),
                    message: "`{{` without a closing `}}`".into(),
                });
            };
            let inner = &rest[inner_start..inner_start + close];
            let (path, fallback) = match inner.split_once('|') {
                Some((p, f)) => (p.trim(), Some(f.trim().to_owned())),
                None => (inner.trim(), None),
            };
            if path.is_empty() {
                return Err(TemplateError {
                    column: column(start),
                    message: "empty variable".into(),
                });
            }
            check_path(path, traits).map_err(|message| TemplateError {
                column: column(start),
                message,
            })?;
            parts.push(Part::Var {
                path: path.to_owned(),
                fallback,
            });
            let consumed = inner_start + close + 2;
            offset += consumed;
            rest = &rest[consumed..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Self { parts })
    }

    /// The variables it reads.
    pub fn paths(&self) -> BTreeSet<&str> {
        self.parts
            .iter()
            .filter_map(|p| match p {
                Part::Var { path, .. } => Some(path.as_str()),
                Part::Text(_) => None,
            })
            .collect()
    }

    /// Fills the variables from `value`; `escape` is applied to every substituted
    /// value (HTML escaping for an HTML part). Fails naming the first variable that
    /// has neither a value nor a fallback.
    pub fn render(&self, value: &dyn Fn(&str) -> Option<String>, escape: fn(&str) -> String) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Var { path, fallback } => {
                    let v = value(path).filter(|v| !v.is_empty()).or_else(|| fallback.clone());
                    match v {
                        Some(v) => out.push_str(&escape(&v)),
                        None => return Err(format!("`{path}` has no value and no fallback")),
                    }
                }
            }
        }
        Ok(out)
    }
}

/// The value as is.
pub fn plain(v: &str) -> String {
    v.to_owned()
}

/// The value escaped for HTML text and attribute values.
pub fn html(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn traits(name: &str) -> bool {
        name == "favourite_category"
    }

    #[test]
    fn parses_renders_and_falls_back() {
        let t = Template::parse(
            "Hi {{ given_name | there }}, {{traits.favourite_category}} deals: {{ link_url }}",
            &traits,
        )
        .unwrap();
        assert_eq!(
            t.paths().into_iter().collect::<Vec<_>>(),
            vec!["given_name", "link_url", "traits.favourite_category"]
        );
        let values = |p: &str| match p {
            "traits.favourite_category" => Some("shoes".to_owned()),
            "link_url" => Some("http://t/c/x".to_owned()),
            _ => None,
        };
        assert_eq!(t.render(&values, plain).unwrap(), "Hi there, shoes deals: http://t/c/x");
        let none = |_: &str| None;
        assert_eq!(
            t.render(&none, plain).unwrap_err(),
            "`traits.favourite_category` has no value and no fallback"
        );
    }

    #[test]
    fn rejects_unknown_variables_with_their_column() {
        let err = Template::parse("Dear {{ nickname }}", &traits).unwrap_err();
        assert_eq!(err.column, 6);
        assert!(err.message.contains("unknown variable `nickname`"), "{}", err.message);
        let err = Template::parse("ok {{ traits.ltv }}", &traits).unwrap_err();
        assert!(err.message.contains("no computed trait `ltv`"));
        let err = Template::parse("héllo {{ given_name", &traits).unwrap_err();
        assert_eq!((err.column, err.message.as_str()), (7, "`{{` without a closing `}}`"));
        assert!(Template::parse("{{ attributes.Tier }}", &traits).is_err());
        assert!(Template::parse("{{}}", &traits).is_err());
    }

    #[test]
    fn html_values_are_escaped() {
        let t = Template::parse("<p>{{display_name}}</p>", &traits).unwrap();
        let v = |_: &str| Some("<b>Bob & \"Co\"</b>".to_owned());
        assert_eq!(
            t.render(&v, html).unwrap(),
            "<p>&lt;b&gt;Bob &amp; &quot;Co&quot;&lt;/b&gt;</p>"
        );
        assert_eq!(
            Template::parse("no vars", &traits).unwrap().render(&v, plain).unwrap(),
            "no vars"
        );
    }
}
