//! Normalisation of single values on entry: text, names, phone numbers, e-mail
//! addresses, region codes. Each function returns the normalised value or a
//! description of what is wrong, for a field violation.

use std::str::FromStr;

/// Trims, folds full-width ASCII forms to half-width, and collapses runs of white
/// space (including the ideographic space) to one ASCII space. CJK text is kept.
pub fn text(raw: &str) -> String {
    let folded = raw.chars().map(|c| match c {
        '\u{3000}' => ' ',
        '\u{FF01}'..='\u{FF5E}' => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
        other => other,
    });
    let mut out = String::with_capacity(raw.len());
    let mut pending_space = false;
    for c in folded {
        if c.is_whitespace() {
            pending_space = !out.is_empty();
        } else {
            if pending_space {
                out.push(' ');
                pending_space = false;
            }
            out.push(c);
        }
    }
    out
}

/// Does `s` contain CJK ideographs (Chinese, Japanese kanji) or Hangul?
pub fn has_cjk(s: &str) -> bool {
    s.chars().any(|c| {
        matches!(c as u32,
            0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0x20000..=0x2A6DF | 0xF900..=0xFAFF | 0xAC00..=0xD7AF | 0x3040..=0x30FF)
    })
}

/// A person's name to show: CJK names family-name first without a space (王小明),
/// others "given middle family".
pub fn display_person_name(given: &str, middle: &str, family: &str) -> String {
    if has_cjk(given) || has_cjk(family) {
        format!("{family}{given}")
    } else {
        [given, middle, family]
            .iter()
            .filter(|p| !p.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Parses a telephone number in any common notation to E.164; numbers without a
/// country code are read in `default_region` (ISO 3166 alpha-2).
pub fn phone(raw: &str, default_region: &str) -> Result<String, String> {
    let raw = text(raw);
    if raw.is_empty() {
        return Err("required".into());
    }
    if raw.len() > 64 {
        return Err("at most 64 characters".into());
    }
    // A number written with its country code needs no region; passing one anyway makes
    // phonenumber 0.3 strip that region's national prefix from the international number
    // ("+86 138..." read with region US loses its leading 1).
    let region = if raw.starts_with('+') {
        None
    } else {
        phonenumber::country::Id::from_str(default_region).ok()
    };
    let parsed = phonenumber::parse(region, &raw).map_err(|_| format!("`{raw}` is not a telephone number"))?;
    if !phonenumber::is_valid(&parsed) {
        return Err(format!("`{raw}` is not a valid telephone number for its region"));
    }
    Ok(parsed.format().mode(phonenumber::Mode::E164).to_string())
}

/// Trims an e-mail address, lower-cases its domain, and checks its syntax.
pub fn email(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err("required".into());
    }
    if raw.len() > 254 {
        return Err("at most 254 characters".into());
    }
    let (local, domain) = raw
        .rsplit_once('@')
        .ok_or_else(|| format!("`{raw}` is not an e-mail address: no `@`"))?;
    let normalised = format!("{local}@{}", domain.to_lowercase());
    if !email_address::EmailAddress::is_valid(&normalised) || !domain.contains('.') {
        return Err(format!("`{raw}` is not an e-mail address"));
    }
    Ok(normalised)
}

/// An ISO 3166-1 alpha-2 region code, upper-cased.
pub fn region_code(raw: &str) -> Result<String, String> {
    let code = raw.trim().to_ascii_uppercase();
    if code.len() == 2 && code.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(code)
    } else if code.is_empty() {
        Err("required: an ISO 3166-1 alpha-2 code such as CN or US".into())
    } else {
        Err(format!("`{raw}` is not an ISO 3166-1 alpha-2 code such as CN or US"))
    }
}

/// A tag: lower-case, 1 to 64 of letters, digits, `-`, `_`, `.`, `:`.
pub fn tag(raw: &str) -> Result<String, String> {
    let tag = raw.trim().to_lowercase();
    let valid_chars = tag.chars().all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if tag.is_empty() || tag.chars().count() > 64 || !valid_chars {
        return Err(format!("`{raw}` is not a tag: 1 to 64 letters, digits, '-', '_', '.', ':'"));
    }
    Ok(tag)
}

/// A custom-attribute key: `[a-z][a-z0-9_]{0,62}`.
pub fn attribute_key(key: &str) -> Result<(), String> {
    let mut chars = key.chars();
    let ok = key.len() <= 63
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!("`{key}` is not a key: [a-z][a-z0-9_]{{0,62}}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_cases() {
        let cases = [
            ("  Li   Wei ", "Li Wei"),
            ("Ｌｉ\u{3000}Ｗｅｉ", "Li Wei"),
            ("王\t小明", "王 小明"),
            ("", ""),
            ("\n\t ", ""),
            ("ＡＢＣ１２３", "ABC123"),
        ];
        for (raw, want) in cases {
            assert_eq!(text(raw), want, "{raw:?}");
        }
    }

    #[test]
    fn person_display_names() {
        assert_eq!(display_person_name("小明", "", "王"), "王小明");
        assert_eq!(display_person_name("Ada", "King", "Lovelace"), "Ada King Lovelace");
        assert_eq!(display_person_name("", "", "Smith"), "Smith");
    }

    #[test]
    fn phones() {
        let ok = [
            ("13800138000", "CN", "+8613800138000"),
            ("+86 138 0013 8000", "US", "+8613800138000"),
            ("(415) 555-0132", "US", "+14155550132"),
            ("０１０-１２３４５６７８", "CN", "+861012345678"),
            ("+44 20 7946 0958", "CN", "+442079460958"),
            ("+8613800138000", "US", "+8613800138000"),
        ];
        for (raw, region, want) in ok {
            assert_eq!(phone(raw, region).as_deref(), Ok(want), "{raw}");
        }
        for bad in ["", "12", "abc", "+86 138", "1380013800012345"] {
            assert!(phone(bad, "CN").is_err(), "{bad}");
        }
    }

    #[test]
    fn emails() {
        assert_eq!(email(" Li.Wei@Example.COM ").as_deref(), Ok("Li.Wei@example.com"));
        for bad in ["", "li.wei", "li@", "@example.com", "li wei@example.com", "li@localhost"] {
            assert!(email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn regions_tags_keys() {
        assert_eq!(region_code(" cn").as_deref(), Ok("CN"));
        assert!(region_code("CHN").is_err());
        assert!(region_code("").is_err());
        assert_eq!(tag(" VIP ").as_deref(), Ok("vip"));
        assert_eq!(tag("渠道:门店").as_deref(), Ok("渠道:门店"));
        assert!(tag("two words").is_err());
        assert!(tag(&"x".repeat(65)).is_err());
        assert!(attribute_key("loyalty_tier").is_ok());
        for bad in ["", "Tier", "1tier", "tier-x"] {
            assert!(attribute_key(bad).is_err(), "{bad}");
        }
    }
}
