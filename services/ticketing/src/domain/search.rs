//! Search terms for the knowledge base, the same for PostgreSQL and SQLite: words of
//! letters and digits, lower-cased, common English words dropped; runs of CJK
//! characters (written without spaces) become overlapping character pairs, so
//! "屏幕碎了" matches "屏幕" without a dictionary.

/// Words too common to tell articles apart.
const STOP_WORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "by", "can", "do", "for", "from", "how", "i", "in", "is", "it", "my", "of", "on",
    "or", "the", "to", "was", "what", "when", "with", "you",
];

/// Han, kana and hangul: scripts written without spaces between words.
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xAC00..=0xD7AF | 0xF900..=0xFAFF | 0x20000..=0x2FA1F)
}

/// The terms of `text`, in order of appearance, duplicates kept (they weigh in ranking).
pub fn terms(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut run: Vec<char> = Vec::new();
    let flush_word = |word: &mut String, out: &mut Vec<String>| {
        if !word.is_empty() && !STOP_WORDS.contains(&word.as_str()) && word.chars().count() <= 64 {
            out.push(std::mem::take(word));
        }
        word.clear();
    };
    let flush_run = |run: &mut Vec<char>, out: &mut Vec<String>| {
        match run.len() {
            0 => {}
            1 => out.push(run.iter().collect()),
            _ => out.extend(run.windows(2).map(|w| w.iter().collect::<String>())),
        }
        run.clear();
    };
    for c in text.chars() {
        if is_cjk(c) {
            flush_word(&mut word, &mut out);
            run.push(c);
        } else if c.is_alphanumeric() {
            flush_run(&mut run, &mut out);
            word.extend(c.to_lowercase());
        } else {
            flush_word(&mut word, &mut out);
            flush_run(&mut run, &mut out);
        }
    }
    flush_word(&mut word, &mut out);
    flush_run(&mut run, &mut out);
    out
}

/// The distinct terms of a query, at most `max`.
pub fn query_terms(text: &str, max: usize) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    terms(text).into_iter().filter(|t| seen.insert(t.clone())).take(max).collect()
}

/// Up to `width` characters of `body` around the first term of `query` found in it
/// (the start when none is), with ellipses where cut.
pub fn snippet(body: &str, query: &[String], width: usize) -> String {
    let lower: Vec<char> = body.chars().flat_map(char::to_lowercase).collect();
    let chars: Vec<char> = body.chars().collect();
    // Lower-casing can change lengths (rarely); fall back to the start then.
    let hit = if lower.len() == chars.len() {
        query
            .iter()
            .filter_map(|t| {
                let t: Vec<char> = t.chars().collect();
                lower.windows(t.len().max(1)).position(|w| w == t.as_slice())
            })
            .min()
    } else {
        None
    };
    let start = hit.map_or(0, |h| h.saturating_sub(width / 3));
    let end = (start + width).min(chars.len());
    let mut out: String = chars[start..end]
        .iter()
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    if start > 0 {
        out.insert(0, '…');
    }
    if end < chars.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_and_character_pairs() {
        assert_eq!(terms("How do I reset my Password?"), vec!["reset", "password"]);
        assert_eq!(terms("屏幕碎了"), vec!["屏幕", "幕碎", "碎了"]);
        assert_eq!(terms("iPhone 15屏幕"), vec!["iphone", "15", "屏幕"]);
        assert_eq!(terms("退"), vec!["退"]);
        assert_eq!(terms("Zurück über Straße"), vec!["zurück", "über", "straße"]);
        assert!(terms("-- !! ??").is_empty());
        assert_eq!(query_terms("refund refund order", 10), vec!["refund", "order"]);
    }

    #[test]
    fn snippets_centre_on_the_first_match() {
        let body = format!("{} The refund arrives within 7 days. {}", "x".repeat(100), "y".repeat(100));
        let s = snippet(&body, &["refund".into()], 60);
        assert!(s.starts_with('…') && s.ends_with('…'), "{s}");
        assert!(s.contains("refund arrives"), "{s}");
        assert_eq!(snippet("short text", &["none".into()], 60), "short text");
    }
}
