//! The audit log's hash chain: each entry's hash covers its sequence number, the
//! previous entry's hash and its content, so editing, deleting or reordering any
//! entry breaks every hash from there on.

use crm_proto::crm::permissions::v1::AuditEntry;
use prost::Message;
use sha2::{Digest, Sha256};

/// The bytes an entry's hash covers: the entry as submitted, without the fields
/// the log assigns (name, hashes). Protobuf encoding of this message (no maps) is
/// deterministic.
pub fn content(entry: &AuditEntry) -> Vec<u8> {
    AuditEntry {
        name: String::new(),
        previous_hash: String::new(),
        hash: String::new(),
        ..entry.clone()
    }
    .encode_to_vec()
}

/// SHA-256 over `sequence`, `previous` and `content`, hex-encoded.
pub fn hash(sequence: i64, previous: &str, content: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(sequence.to_be_bytes());
    h.update((previous.len() as u64).to_be_bytes());
    h.update(previous.as_bytes());
    h.update(content);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A stored link of the chain, as read back for verification.
#[derive(Debug, Clone)]
pub struct Link {
    pub sequence: i64,
    pub content: Vec<u8>,
    pub previous_hash: String,
    pub hash: String,
}

/// Where verification stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    pub sequence: i64,
    pub problem: String,
}

/// Checks links that follow the link (`after_sequence`, `after_hash`): sequence
/// numbers without gaps, each `previous_hash` equal to the hash before it, each
/// hash recomputing from the stored content.
pub fn verify<'a>(
    after_sequence: i64,
    after_hash: &str,
    links: impl IntoIterator<Item = &'a Link>,
) -> Result<(i64, String), Break> {
    let (mut seq, mut prev) = (after_sequence, after_hash.to_owned());
    for link in links {
        if link.sequence != seq + 1 {
            return Err(Break {
                sequence: seq + 1,
                problem: format!("entry missing: the chain jumps from {seq} to {}", link.sequence),
            });
        }
        if link.previous_hash != prev {
            return Err(Break {
                sequence: link.sequence,
                problem: "link broken: previous_hash is not the hash of the entry before".into(),
            });
        }
        if hash(link.sequence, &link.previous_hash, &link.content) != link.hash {
            return Err(Break {
                sequence: link.sequence,
                problem: "content edited: the stored entry does not match its hash".into(),
            });
        }
        seq = link.sequence;
        prev = link.hash.clone();
    }
    Ok((seq, prev))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: i64) -> Vec<Link> {
        let mut prev = String::new();
        (1..=n)
            .map(|seq| {
                let entry = AuditEntry {
                    id: format!("e{seq}"),
                    actor: "u".into(),
                    ..AuditEntry::default()
                };
                let content = content(&entry);
                let h = hash(seq, &prev, &content);
                let link = Link {
                    sequence: seq,
                    content,
                    previous_hash: prev.clone(),
                    hash: h.clone(),
                };
                prev = h;
                link
            })
            .collect()
    }

    #[test]
    fn intact_chain_verifies() {
        let links = chain(5);
        let (seq, head) = verify(0, "", &links).unwrap();
        assert_eq!(seq, 5);
        assert_eq!(head, links[4].hash);
    }

    #[test]
    fn edits_deletions_and_relinks_are_found() {
        let mut edited = chain(5);
        edited[2].content = content(&AuditEntry {
            id: "e3".into(),
            actor: "mallory".into(),
            ..AuditEntry::default()
        });
        assert_eq!(verify(0, "", &edited).unwrap_err().sequence, 3);

        let mut deleted = chain(5);
        deleted.remove(1);
        assert_eq!(verify(0, "", &deleted).unwrap_err().sequence, 2);

        // Deleting and renumbering still breaks the link to the previous hash.
        let mut renumbered = chain(5);
        renumbered.remove(1);
        for (i, l) in renumbered.iter_mut().enumerate() {
            l.sequence = i as i64 + 1;
        }
        assert_eq!(verify(0, "", &renumbered).unwrap_err().sequence, 2);
    }
}
