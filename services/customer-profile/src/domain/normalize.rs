//! Normalisation of single values on entry: text, names, phone numbers, e-mail
//! addresses, region codes. Each function returns the normalised value or a
//! description of what is wrong, for a field violation. Descriptions of personal
//! values never repeat the value: they are stored with import results and logged.

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
    let parsed = phonenumber::parse(region, &raw).map_err(|_| "not a telephone number".to_owned())?;
    if !phonenumber::is_valid(&parsed) {
        return Err("not a valid telephone number for its region".into());
    }
    Ok(parsed.format().mode(phonenumber::Mode::E164).to_string())
}

/// Trims an e-mail address, folds full-width forms, converts an internationalised
/// domain to its ASCII (punycode) form in lower case, and checks the syntax. The
/// local part keeps its case (RFC 5321 lets the receiving host decide).
pub fn email(raw: &str) -> Result<String, String> {
    let raw = text(raw);
    let raw = raw.as_str();
    if raw.is_empty() {
        return Err("required".into());
    }
    if raw.len() > 254 {
        return Err("at most 254 characters".into());
    }
    let (local, domain) = raw
        .rsplit_once('@')
        .ok_or_else(|| "not an e-mail address: no `@`".to_owned())?;
    let domain = idna::domain_to_ascii(domain).map_err(|_| "not an e-mail address: bad domain".to_owned())?;
    let normalised = format!("{local}@{domain}");
    if !email_address::EmailAddress::is_valid(&normalised) || !domain.contains('.') {
        return Err("not an e-mail address".into());
    }
    Ok(normalised)
}

/// ISO 3166-1 alpha-2 codes without a telephone numbering plan of their own (the
/// phone-number metadata knows every other assigned code).
const REGIONS_WITHOUT_PHONES: &[&str] = &["AQ", "BV", "GS", "HM", "PN", "TF", "UM"];

/// An ISO 3166-1 alpha-2 region code, upper-cased; it must be an assigned code.
pub fn region_code(raw: &str) -> Result<String, String> {
    let code = raw.trim().to_ascii_uppercase();
    let assigned = || REGIONS_WITHOUT_PHONES.contains(&code.as_str()) || phonenumber::country::Id::from_str(&code).is_ok();
    if code.len() == 2 && code.bytes().all(|b| b.is_ascii_uppercase()) && assigned() {
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

/// A calendar date to ISO 8601 `YYYY-MM-DD`, from `YYYY-MM-DD`, `YYYYMMDD`,
/// `YYYY/MM/DD`, `YYYY.MM.DD` or `YYYY年MM月DD日`, between 1850 and 2200.
pub fn date(raw: &str) -> Result<String, String> {
    let t = text(raw);
    let digits: Vec<&str> = t
        .split(['-', '/', '.', '年', '月', '日', ' '])
        .filter(|p| !p.is_empty())
        .collect();
    let parts: Option<(i32, u32, u32)> = match digits.as_slice() {
        [compact] if compact.len() == 8 && compact.bytes().all(|b| b.is_ascii_digit()) => Some((
            compact[..4].parse().ok(),
            compact[4..6].parse().ok(),
            compact[6..].parse().ok(),
        ))
        .and_then(|(y, m, d)| Some((y?, m?, d?))),
        [y, m, d] if y.len() == 4 => {
            Some((y.parse().ok(), m.parse().ok(), d.parse().ok())).and_then(|(y, m, d)| Some((y?, m?, d?)))
        }
        _ => None,
    };
    let date = parts
        .and_then(|(y, m, d)| chrono::NaiveDate::from_ymd_opt(y, m, d))
        .ok_or_else(|| "not a date: use YYYY-MM-DD".to_owned())?;
    if !(1850..=2200).contains(&chrono::Datelike::year(&date)) {
        return Err("out of range (1850 to 2200)".into());
    }
    Ok(date.format("%Y-%m-%d").to_string())
}

/// A national identity number: upper-cased, spaces and dashes removed, 4 to 32
/// letters and digits. Chinese resident identity numbers (18 characters) must carry
/// a valid ISO 7064 check character.
pub fn national_id(raw: &str, region: &str) -> Result<String, String> {
    let id: String = text(raw)
        .chars()
        .filter(|c| !matches!(c, ' ' | '-'))
        .collect::<String>()
        .to_uppercase();
    if !(4..=32).contains(&id.len()) || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err("4 to 32 letters and digits".into());
    }
    if region == "CN" && id.len() == 18 && !cn_resident_id_checksum_ok(&id) {
        return Err("not a valid resident identity number: wrong check character".into());
    }
    Ok(id)
}

fn cn_resident_id_checksum_ok(id: &str) -> bool {
    const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    const CHECK: &[u8; 11] = b"10X98765432";
    let bytes = id.as_bytes();
    let mut sum = 0;
    for (b, w) in bytes[..17].iter().zip(WEIGHTS) {
        if !b.is_ascii_digit() {
            return false;
        }
        sum += u32::from(b - b'0') * w;
    }
    CHECK[(sum % 11) as usize] == bytes[17]
}

/// A postal code checked and formatted by the rules of `region` where they are
/// known (CN, US, GB, DE, FR, JP, AU, CA, IN, SG, NL, KR...); elsewhere trimmed and
/// upper-cased, at most 16 characters.
pub fn postal_code(raw: &str, region: &str) -> Result<String, String> {
    let code = text(raw).to_uppercase();
    let compact: String = code.chars().filter(|c| !c.is_whitespace() && *c != '-').collect();
    let digits = |n: usize| compact.len() == n && compact.bytes().all(|b| b.is_ascii_digit());
    let fail = |format: &str| Err(format!("not a postal code of {region}: {format}"));
    match region {
        "CN" | "IN" | "SG" | "RU" => {
            if digits(6) {
                Ok(compact)
            } else {
                fail("6 digits")
            }
        }
        "DE" | "FR" | "IT" | "ES" | "KR" | "MX" | "TH" | "MY" => {
            if digits(5) {
                Ok(compact)
            } else {
                fail("5 digits")
            }
        }
        "AU" | "AT" | "BE" | "CH" | "DK" | "NO" | "NZ" | "ZA" | "PH" => {
            if digits(4) {
                Ok(compact)
            } else {
                fail("4 digits")
            }
        }
        "US" => {
            if digits(5) {
                Ok(compact)
            } else if digits(9) {
                Ok(format!("{}-{}", &compact[..5], &compact[5..]))
            } else {
                fail("5 digits or ZIP+4")
            }
        }
        "JP" => {
            if digits(7) {
                Ok(format!("{}-{}", &compact[..3], &compact[3..]))
            } else {
                fail("7 digits (123-4567)")
            }
        }
        "NL" => {
            let b = compact.as_bytes();
            if b.len() == 6 && b[..4].iter().all(u8::is_ascii_digit) && b[4..].iter().all(u8::is_ascii_uppercase) {
                Ok(format!("{} {}", &compact[..4], &compact[4..]))
            } else {
                fail("4 digits and 2 letters (1234 AB)")
            }
        }
        "CA" => {
            let b = compact.as_bytes();
            let shape = b.len() == 6
                && b.iter().enumerate().all(|(i, c)| {
                    if i % 2 == 0 {
                        c.is_ascii_uppercase()
                    } else {
                        c.is_ascii_digit()
                    }
                });
            if shape {
                Ok(format!("{} {}", &compact[..3], &compact[3..]))
            } else {
                fail("A1A 1A1")
            }
        }
        "GB" => {
            // Outward code (2 to 4 characters) + inward code (digit, two letters).
            let b = compact.as_bytes();
            let inward_ok = b.len() >= 5 && {
                let i = &b[b.len() - 3..];
                i[0].is_ascii_digit() && i[1].is_ascii_uppercase() && i[2].is_ascii_uppercase()
            };
            if inward_ok && (5..=7).contains(&b.len()) && b[0].is_ascii_uppercase() && compact.is_ascii() {
                let split = compact.len() - 3;
                Ok(format!("{} {}", &compact[..split], &compact[split..]))
            } else {
                fail("e.g. SW1A 1AA")
            }
        }
        _ => {
            if code.chars().count() > 16 || code.chars().any(char::is_control) {
                Err("at most 16 characters".into())
            } else {
                Ok(code)
            }
        }
    }
}

/// A decimal number in canonical form (`1200`, `-3.5`; no exponent, no grouping).
pub fn number(raw: &str) -> Result<String, String> {
    let t: String = text(raw).chars().filter(|c| *c != ',' && *c != '_').collect();
    let value: f64 = t.parse().map_err(|_| "not a number".to_owned())?;
    if !value.is_finite() || t.contains(['e', 'E']) || t.eq_ignore_ascii_case("nan") || t.to_lowercase().contains("inf") {
        return Err("not a plain decimal number".into());
    }
    Ok(format!("{value}"))
}

/// `true` or `false` (also from `1`/`0`, `yes`/`no`, `y`/`n`, `是`/`否`).
pub fn boolean(raw: &str) -> Result<String, String> {
    match text(raw).to_lowercase().as_str() {
        "true" | "1" | "yes" | "y" | "是" => Ok("true".into()),
        "false" | "0" | "no" | "n" | "否" => Ok("false".into()),
        _ => Err("not true or false".into()),
    }
}

/// Folds a name for matching: lower case, diacritics removed (`José` -> `jose`),
/// punctuation dropped. CJK characters are kept as they are.
pub fn fold_name(raw: &str) -> String {
    use unicode_normalization::{UnicodeNormalization, char::is_combining_mark};
    text(raw)
        .nfkd()
        .filter(|c| !is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        .filter(|c| c.is_alphanumeric() || c.is_whitespace())
        .collect()
}

/// The matching key of a person's name, equal for spellings of the same name:
/// CJK names are the family name then the given name without spaces (`王 小明`,
/// `王小明` -> `王小明`); Latin names are their folded tokens in sorted order, so the
/// order of given and family name does not matter (`Smith, John`, `john smith` ->
/// `john smith`).
pub fn name_key(given: &str, family: &str) -> String {
    if has_cjk(given) || has_cjk(family) {
        let mut key: String = fold_name(family).chars().filter(|c| !c.is_whitespace()).collect();
        key.extend(fold_name(given).chars().filter(|c| !c.is_whitespace()));
        return key;
    }
    let joined = format!("{} {}", fold_name(given), fold_name(family));
    let mut tokens: Vec<&str> = joined.split_whitespace().collect();
    tokens.sort_unstable();
    tokens.join(" ")
}

/// American Soundex of a folded Latin word (`robert`, `rupert` -> `R163`); empty for
/// a word without Latin letters.
pub fn soundex(word: &str) -> String {
    fn code(c: char) -> u8 {
        match c {
            'b' | 'f' | 'p' | 'v' => b'1',
            'c' | 'g' | 'j' | 'k' | 'q' | 's' | 'x' | 'z' => b'2',
            'd' | 't' => b'3',
            'l' => b'4',
            'm' | 'n' => b'5',
            'r' => b'6',
            'h' | 'w' => b'h',
            _ => b'0',
        }
    }
    let letters: Vec<char> = word
        .chars()
        .filter(char::is_ascii_alphabetic)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let Some(&first) = letters.first() else {
        return String::new();
    };
    let mut out = vec![first.to_ascii_uppercase() as u8];
    let mut last = code(first);
    for &c in &letters[1..] {
        let d = code(c);
        if d == b'h' {
            continue;
        }
        if d != b'0' && d != last {
            out.push(d);
            if out.len() == 4 {
                break;
            }
        }
        last = d;
    }
    while out.len() < 4 {
        out.push(b'0');
    }
    String::from_utf8(out).unwrap_or_default()
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
    fn international_emails() {
        assert_eq!(email("ｌｉ@Bücher.Example").as_deref(), Ok("li@xn--bcher-kva.example"));
        assert_eq!(email("张伟@例子.中国").as_deref(), Ok("张伟@xn--fsqu00a.xn--fiqs8s"));
    }

    #[test]
    fn dates() {
        for (raw, want) in [
            ("1990-01-31", "1990-01-31"),
            ("19900131", "1990-01-31"),
            ("1990/1/31", "1990-01-31"),
            ("1990.01.31", "1990-01-31"),
            ("1990年1月31日", "1990-01-31"),
            ("１９９０－０１－３１", "1990-01-31"),
        ] {
            assert_eq!(date(raw).as_deref(), Ok(want), "{raw}");
        }
        for bad in ["", "1990-02-30", "31/01/1990", "1700-01-01", "19900231", "abc"] {
            assert!(date(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn national_ids() {
        assert_eq!(national_id("11010519491231002x", "CN").as_deref(), Ok("11010519491231002X"));
        assert!(national_id("110105194912310021", "CN").is_err(), "bad check digit");
        assert_eq!(national_id("078-05-1120", "US").as_deref(), Ok("078051120"));
        assert!(national_id("12", "US").is_err());
    }

    #[test]
    fn postal_codes() {
        for (raw, region, want) in [
            ("100 080", "CN", "100080"),
            ("941031234", "US", "94103-1234"),
            ("sw1a1aa", "GB", "SW1A 1AA"),
            ("1000001", "JP", "100-0001"),
            ("k1a0b1", "CA", "K1A 0B1"),
            ("1234ab", "NL", "1234 AB"),
            ("2600", "AU", "2600"),
            ("ab-12", "IE", "AB-12"),
        ] {
            assert_eq!(postal_code(raw, region).as_deref(), Ok(want), "{raw} {region}");
        }
        for (bad, region) in [("10008", "CN"), ("9410", "US"), ("12345", "GB"), ("ABCDE", "DE")] {
            assert!(postal_code(bad, region).is_err(), "{bad} {region}");
        }
    }

    #[test]
    fn numbers_and_booleans() {
        assert_eq!(number(" 1,200 ").as_deref(), Ok("1200"));
        assert_eq!(number("-3.50").as_deref(), Ok("-3.5"));
        for bad in ["", "1e5", "NaN", "inf", "12a"] {
            assert!(number(bad).is_err(), "{bad}");
        }
        assert_eq!(boolean("Yes").as_deref(), Ok("true"));
        assert_eq!(boolean("否").as_deref(), Ok("false"));
        assert!(boolean("maybe").is_err());
    }

    #[test]
    fn name_keys() {
        assert_eq!(name_key("小明", "王"), "王小明");
        assert_eq!(name_key("小 明", "王"), name_key("小明", " 王"));
        assert_eq!(name_key("John", "Smith"), name_key("smith", "JOHN"));
        assert_eq!(name_key("José", "Núñez"), "jose nunez");
        assert_eq!(name_key("Ｊｏｈｎ", "O'Brien"), "john obrien");
        assert_ne!(name_key("小明", "王"), name_key("小红", "王"));
    }

    #[test]
    fn soundex_codes() {
        for (w, want) in [
            ("robert", "R163"),
            ("rupert", "R163"),
            ("ashcraft", "A261"),
            ("tymczak", "T522"),
            ("pfister", "P236"),
            ("lee", "L000"),
        ] {
            assert_eq!(soundex(w), want, "{w}");
        }
        assert_eq!(soundex("王"), "");
    }

    #[test]
    fn regions_tags_keys() {
        assert_eq!(region_code(" cn").as_deref(), Ok("CN"));
        assert_eq!(region_code("aq").as_deref(), Ok("AQ"));
        assert!(region_code("CHN").is_err());
        assert!(region_code("ZZ").is_err(), "not an assigned code");
        assert!(region_code("XY").is_err());
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
