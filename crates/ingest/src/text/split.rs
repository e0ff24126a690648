//! Train/validation split by document id: a document's split depends only on a hash of its id, so it is
//! the same on every machine and run, and adding a source never moves existing documents across.
use sha2::{Digest, Sha256};

/// Whether the document with this id belongs to the validation split holding `fraction` of documents.
pub fn is_validation(id: &str, fraction: f64) -> bool {
    let digest = Sha256::digest(id.as_bytes());
    let bucket = u64::from_le_bytes(digest[..8].try_into().expect("sha256 has 32 bytes"));
    (bucket as f64) < fraction * (u64::MAX as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_stable_and_near_the_requested_fraction() {
        let ids: Vec<String> = (0..20_000).map(|i| format!("src/{i}")).collect();
        let val = ids.iter().filter(|id| is_validation(id, 0.05)).count();
        assert!((900..1100).contains(&val), "{val}");
        assert!(ids.iter().all(|id| is_validation(id, 0.05) == is_validation(id, 0.05)));
        assert!(!is_validation("x", 0.0) && is_validation("x", 1.0));
    }
}
