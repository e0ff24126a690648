//! Exact deduplication: documents whose whitespace-normalised text hashes the same keep only the first
//! (in the order given, which the caller makes stable), so repeated boilerplate pages count once.
use std::collections::HashSet;

use sha2::{Digest, Sha256};

use super::documents::Document;

/// Drops documents with an already-seen text and those shorter than `min_chars`; returns how many of
/// each were dropped.
pub fn dedup_exact(documents: &mut Vec<Document>, min_chars: usize) -> DedupCounts {
    let mut seen: HashSet<[u8; 32]> = HashSet::with_capacity(documents.len());
    let mut counts = DedupCounts::default();
    documents.retain(|doc| {
        if doc.text.chars().count() < min_chars {
            counts.too_short += 1;
            return false;
        }
        let key: String = doc.text.split_whitespace().collect::<Vec<_>>().join(" ");
        if seen.insert(Sha256::digest(key.as_bytes()).into()) {
            true
        } else {
            counts.duplicates += 1;
            false
        }
    });
    counts
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DedupCounts {
    pub duplicates: usize,
    pub too_short: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(id: &str, text: &str) -> Document {
        Document { id: id.into(), source: "s".into(), text: text.into() }
    }

    #[test]
    fn keeps_first_of_whitespace_equal_texts_and_drops_short_ones() {
        let mut docs =
            vec![doc("a", "the same  text"), doc("b", "tiny"), doc("c", "the same\ntext"), doc("d", "other text here")];
        let counts = dedup_exact(&mut docs, 8);
        assert_eq!(docs.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), ["a", "d"]);
        assert_eq!(counts, DedupCounts { duplicates: 1, too_short: 1 });
    }
}
