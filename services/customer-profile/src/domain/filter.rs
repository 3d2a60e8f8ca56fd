//! `ListCustomers` queries: the filter (a small AIP-160 subset: restrictions joined
//! by AND) and `order_by`.

use chrono::{DateTime, Utc};
use crm_platform::Error;

use super::customer::LifecycleStage;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
}

/// A parsed filter; every restriction must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub lifecycle_stage: Option<LifecycleStage>,
    pub owner_user_id: Option<String>,
    pub team_id: Option<String>,
    pub tags: Vec<String>,
    pub update_time: Vec<(Comparison, DateTime<Utc>)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Quoted(String),
    Op(&'static str),
}

fn tokenize(input: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = input.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '"' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(escaped) => s.push(escaped),
                            None => return Err("unterminated string".into()),
                        },
                        Some(ch) => s.push(ch),
                        None => return Err("unterminated string".into()),
                    }
                }
                tokens.push(Token::Quoted(s));
            }
            '=' | ':' => {
                chars.next();
                tokens.push(Token::Op(if c == '=' { "=" } else { ":" }));
            }
            '<' | '>' => {
                chars.next();
                let eq = chars.next_if_eq(&'=').is_some();
                tokens.push(Token::Op(match (c, eq) {
                    ('<', false) => "<",
                    ('<', true) => "<=",
                    ('>', false) => ">",
                    _ => ">=",
                }));
            }
            _ => {
                let mut s = String::new();
                while let Some(&ch) = chars.peek() {
                    if ch.is_whitespace() || matches!(ch, '=' | ':' | '<' | '>' | '"') {
                        break;
                    }
                    s.push(ch);
                    chars.next();
                }
                tokens.push(Token::Word(s));
            }
        }
    }
    Ok(tokens)
}

fn value(token: Option<Token>) -> Result<String, String> {
    match token {
        Some(Token::Word(w) | Token::Quoted(w)) => Ok(w),
        _ => Err("a value is missing".into()),
    }
}

impl Filter {
    /// Parses `filter`; errors are INVALID_ARGUMENT on the `filter` field.
    pub fn parse(input: &str) -> Result<Self, Error> {
        Self::parse_inner(input).map_err(|why| Error::invalid("filter", why))
    }

    fn parse_inner(input: &str) -> Result<Self, String> {
        let mut filter = Filter::default();
        let mut tokens = tokenize(input)?.into_iter().peekable();
        while tokens.peek().is_some() {
            let field = match tokens.next() {
                Some(Token::Word(w)) => w,
                other => return Err(format!("expected a field name, found {other:?}")),
            };
            let op = match tokens.next() {
                Some(Token::Op(op)) => op,
                _ => return Err(format!("expected an operator after `{field}`")),
            };
            let value = value(tokens.next())?;
            if value.chars().any(char::is_control) {
                return Err(format!("the value for `{field}` contains control characters"));
            }
            match (field.as_str(), op) {
                ("lifecycle_stage", "=") => {
                    filter.lifecycle_stage = Some(match value.trim_start_matches("LIFECYCLE_STAGE_") {
                        "LEAD" => LifecycleStage::Lead,
                        "PROSPECT" => LifecycleStage::Prospect,
                        "CUSTOMER" => LifecycleStage::Customer,
                        "CHURNED" => LifecycleStage::Churned,
                        other => {
                            return Err(format!(
                                "`{other}` is not a lifecycle stage (LEAD, PROSPECT, CUSTOMER, CHURNED)"
                            ));
                        }
                    });
                }
                ("owner_user_id", "=") => filter.owner_user_id = Some(value),
                ("team_id", "=") => filter.team_id = Some(value),
                ("tags", ":") => filter.tags.push(value.to_lowercase()),
                ("update_time", op) => {
                    let at = DateTime::parse_from_rfc3339(&value)
                        .map_err(|_| format!("`{value}` is not an RFC 3339 time such as 2026-01-31T00:00:00Z"))?
                        .with_timezone(&Utc);
                    let cmp = match op {
                        "<" => Comparison::Lt,
                        "<=" => Comparison::Le,
                        ">" => Comparison::Gt,
                        ">=" => Comparison::Ge,
                        _ => Comparison::Eq,
                    };
                    filter.update_time.push((cmp, at));
                }
                (field, op) => {
                    return Err(format!(
                        "`{field} {op}` is not supported; use lifecycle_stage =, owner_user_id =, team_id =, tags:, update_time <, <=, >, >=, ="
                    ));
                }
            }
            match tokens.next() {
                None => break,
                Some(Token::Word(w)) if w == "AND" => {
                    if tokens.peek().is_none() {
                        return Err("nothing after AND".into());
                    }
                }
                Some(other) => return Err(format!("expected AND between restrictions, found {other:?}")),
            }
        }
        Ok(filter)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderField {
    CreateTime,
    UpdateTime,
    DisplayName,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderBy {
    pub field: OrderField,
    pub descending: bool,
}

impl OrderBy {
    pub fn parse(input: &str) -> Result<Self, Error> {
        let words: Vec<&str> = input.split_whitespace().collect();
        let (field, descending) = match words.as_slice() {
            [] => {
                return Ok(Self {
                    field: OrderField::CreateTime,
                    descending: false,
                });
            }
            [f] => (*f, false),
            [f, "asc"] => (*f, false),
            [f, "desc"] => (*f, true),
            _ => return Err(Error::invalid("order_by", "one field, optionally followed by `desc`")),
        };
        let field = match field {
            "create_time" => OrderField::CreateTime,
            "update_time" => OrderField::UpdateTime,
            "display_name" => OrderField::DisplayName,
            other => {
                return Err(Error::invalid(
                    "order_by",
                    format!("cannot order by `{other}`; use create_time, update_time or display_name"),
                ));
            }
        };
        Ok(Self { field, descending })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let f =
            Filter::parse(r#"lifecycle_stage = CUSTOMER AND tags:"vip" AND owner_user_id = "u-42" AND team_id=emea"#).unwrap();
        assert_eq!(f.lifecycle_stage, Some(LifecycleStage::Customer));
        assert_eq!(f.tags, vec!["vip"]);
        assert_eq!(f.owner_user_id.as_deref(), Some("u-42"));
        assert_eq!(f.team_id.as_deref(), Some("emea"));
    }

    #[test]
    fn parses_time_ranges() {
        let f = Filter::parse(r#"update_time >= "2026-01-01T00:00:00Z" AND update_time < "2026-02-01T00:00:00+08:00""#).unwrap();
        assert_eq!(f.update_time.len(), 2);
        assert_eq!(f.update_time[0].0, Comparison::Ge);
        assert_eq!(f.update_time[1].1.to_rfc3339(), "2026-01-31T16:00:00+00:00");
    }

    #[test]
    fn empty_is_everything() {
        assert_eq!(Filter::parse("  ").unwrap(), Filter::default());
    }

    #[test]
    fn rejects_bad_filters() {
        for bad in [
            "lifecycle_stage = VIP",
            "colour = red",
            "tags = vip",
            "update_time > yesterday",
            "team_id = a OR team_id = b",
            "team_id = a AND",
            "team_id =",
            r#"team_id = "unterminated"#,
            "team_id = \"a\u{0}b\"",
            "= x",
        ] {
            assert!(matches!(Filter::parse(bad), Err(Error::InvalidArgument(_))), "{bad}");
        }
    }

    #[test]
    fn order_by() {
        assert_eq!(
            OrderBy::parse("").unwrap(),
            OrderBy {
                field: OrderField::CreateTime,
                descending: false
            }
        );
        assert_eq!(
            OrderBy::parse("update_time desc").unwrap(),
            OrderBy {
                field: OrderField::UpdateTime,
                descending: true
            }
        );
        assert!(OrderBy::parse("phone").is_err());
        assert!(OrderBy::parse("a b c").is_err());
    }
}
