//! Managing the field standard.

use crm_platform::{Error, Result, db::begin_write, feed};

use super::Customers;
use crate::{
    domain::definitions::{Definitions, FieldDefinition, RESOURCE_TYPE},
    events,
    store::records,
};

/// Fields of a definition an update can name.
pub const MUTABLE: &[&str] = &[
    "display_name",
    "description",
    "applies_to",
    "required_for",
    "allowed_values",
    "classification",
    "completeness_weight",
    "self_editable",
];

impl Customers {
    /// The definitions as stored now (not this replica's cached copy, which writes use).
    async fn stored_definitions(&self) -> Result<Definitions> {
        Ok(Definitions::new(records::load_definitions(&self.db).await?))
    }

    pub async fn list_definitions(&self) -> Result<Vec<FieldDefinition>> {
        Ok(self.stored_definitions().await?.iter().cloned().collect())
    }

    pub async fn get_definition(&self, path: &str) -> Result<FieldDefinition> {
        self.stored_definitions()
            .await?
            .get(path)
            .cloned()
            .ok_or_else(|| Error::NotFound {
                resource_type: RESOURCE_TYPE,
                name: format!("fieldDefinitions/{path}"),
            })
    }

    /// Applies `mask` (empty: every mutable field) of `patch` to the stored
    /// definition, or creates a custom one when `allow_missing`.
    pub async fn update_definition(
        &self,
        actor: &str,
        patch: FieldDefinition,
        mask: &[String],
        etag: &str,
        allow_missing: bool,
    ) -> Result<FieldDefinition> {
        let current = self.stored_definitions().await?.get(&patch.path).cloned();
        let at = super::now();
        let next = match &current {
            None if !allow_missing => {
                return Err(Error::NotFound {
                    resource_type: RESOURCE_TYPE,
                    name: patch.name(),
                });
            }
            None => FieldDefinition {
                built_in: false,
                revision: 1,
                update_time: Some(at),
                ..patch
            }
            .validated(None)?,
            Some(current) => {
                if !etag.is_empty() && etag != current.etag() {
                    return Err(Error::EtagMismatch { name: current.name() });
                }
                if patch.field_type != current.field_type {
                    return Err(Error::invalid(
                        "type",
                        "immutable: a field keeps the type it was defined with",
                    ));
                }
                let mut next = current.clone();
                let all: Vec<String> = MUTABLE.iter().map(|s| (*s).to_owned()).collect();
                for path in if mask.is_empty() { &all } else { mask } {
                    match path.as_str() {
                        "display_name" => next.display_name.clone_from(&patch.display_name),
                        "description" => next.description.clone_from(&patch.description),
                        "applies_to" => next.applies_to.clone_from(&patch.applies_to),
                        "required_for" => next.required_for.clone_from(&patch.required_for),
                        "allowed_values" => next.allowed_values.clone_from(&patch.allowed_values),
                        "classification" => next.classification = patch.classification,
                        "completeness_weight" => next.completeness_weight = patch.completeness_weight,
                        "self_editable" => next.self_editable = patch.self_editable,
                        "type" if patch.field_type == current.field_type => {}
                        other => {
                            return Err(Error::invalid(
                                "update_mask",
                                format!("`{other}` cannot be updated; updatable: {}", MUTABLE.join(", ")),
                            ));
                        }
                    }
                }
                next.revision = current.revision + 1;
                next.update_time = Some(at);
                let next = next.validated(Some(current))?;
                if next.display_name.is_empty() {
                    return Err(Error::invalid("field_definition.display_name", "required"));
                }
                next
            }
        };
        let txn = begin_write(&self.db).await?;
        let expected = current.as_ref().map_or(0, |c| c.revision);
        if !records::save_definition(&txn, &next, expected).await? {
            // Another writer saved first (or created the same custom field).
            return Err(match current {
                Some(c) => Error::EtagMismatch { name: c.name() },
                None => Error::AlreadyExists {
                    resource_type: RESOURCE_TYPE,
                    name: next.name(),
                },
            });
        }
        if let Some(c) = &current
            && c.classification.is_protected() != next.classification.is_protected()
            && next.custom_key().is_some()
        {
            // Values already stored sit on the wrong side of the seal: the
            // re-encryption job re-seals every row under the new split.
            records::mark_all_for_reseal(&txn).await?;
        }
        feed::append(&txn, events::field_definition_changed(&next, actor)).await?;
        txn.commit().await?;
        self.feed.committed();
        self.forget_definitions();
        Ok(next)
    }
}
