//! Update masks (AIP-134): which fields an update changes.

use crate::FieldViolation;

/// The paths an update changes: the mask's, or, for an empty mask, those of the
/// fields the patch sets (`set`: each updatable path and whether the patch sets it),
/// never "clear the rest".
pub fn update_paths(mask: Option<prost_types::FieldMask>, set: &[(&str, bool)]) -> Vec<String> {
    match mask {
        Some(m) if !m.paths.is_empty() => m.paths,
        _ => set.iter().filter(|(_, s)| *s).map(|(p, _)| (*p).to_owned()).collect(),
    }
}

/// A violation of `update_mask.paths[i]` for every path not in `allowed`.
pub fn check_paths(paths: &[String], allowed: &[&str], v: &mut Vec<FieldViolation>) {
    for (i, p) in paths.iter().enumerate() {
        if !allowed.contains(&p.as_str()) {
            v.push(FieldViolation::new(
                format!("update_mask.paths[{i}]"),
                format!("only {} can change", allowed.join(", ")),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_mask_means_the_fields_set() {
        let set = [("display_name", true), ("description", false)];
        assert_eq!(update_paths(None, &set), vec!["display_name"]);
        let mask = prost_types::FieldMask {
            paths: vec!["description".into()],
        };
        assert_eq!(update_paths(Some(mask), &set), vec!["description"]);
        let mut v = Vec::new();
        check_paths(&["display_name".into(), "etag".into()], &["display_name"], &mut v);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].field, "update_mask.paths[1]");
    }
}
