//! "Did you mean ...?" suggestions for misspelt keys, enum values and registry names.

/// Minimum Jaro-Winkler similarity (case-insensitive) for a candidate to be suggested.
pub const SIMILARITY_THRESHOLD: f64 = 0.8;

/// The candidate closest to `word`, if any is similar enough to be worth suggesting.
///
/// Similarity is Jaro-Winkler on lower-cased strings (favouring a shared prefix, which suits
/// identifiers such as `lr_shedule` → `lr_schedule` and `tiny-vt` → `tiny-vit`); a candidate
/// within a small edit distance (one edit per four characters, at least one) is also accepted,
/// which catches typos in short words. Ties go to the earlier candidate. An exact match is
/// returned as is; an empty `word` or no close candidate gives `None`.
///
/// ```
/// use emollama::recipe::suggest::suggest;
/// assert_eq!(suggest("lr_shedule", &["lr", "lr_schedule", "min_lr"]).as_deref(), Some("lr_schedule"));
/// assert_eq!(suggest("cosin", &["constant", "cosine", "linear"]).as_deref(), Some("cosine"));
/// assert_eq!(suggest("zzz", &["constant", "cosine", "linear"]), None);
/// ```
pub fn suggest(word: &str, candidates: &[&str]) -> Option<String> {
    let word_lc = word.trim().to_lowercase();
    if word_lc.is_empty() {
        return None;
    }
    let word_len = word_lc.chars().count();
    let mut best: Option<(f64, &str)> = None;
    for &candidate in candidates {
        let cand_lc = candidate.to_lowercase();
        if cand_lc.is_empty() {
            continue;
        }
        let jw = strsim::jaro_winkler(&word_lc, &cand_lc);
        let max_edits = (word_len.max(cand_lc.chars().count()) / 4).max(1);
        let close_edit = word_len >= 3 && strsim::damerau_levenshtein(&word_lc, &cand_lc) <= max_edits;
        if jw < SIMILARITY_THRESHOLD && !close_edit {
            continue;
        }
        // Rank by similarity; an accepted short-edit candidate ranks at least at the threshold.
        let score = if close_edit { jw.max(SIMILARITY_THRESHOLD) } else { jw };
        if best.is_none_or(|(b, _)| score > b) {
            best = Some((score, candidate));
        }
    }
    best.map(|(_, c)| c.to_string())
}

/// `", did you mean `x`?"` when [`suggest`] finds a candidate, else an empty string; handy for
/// building messages such as "unknown encoder `tiny-vt`, did you mean `tiny-vit`? known: ...".
pub fn did_you_mean(word: &str, candidates: &[&str]) -> String {
    match suggest(word, candidates) {
        Some(s) => format!(", did you mean `{s}`?"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_keys_and_variants() {
        let keys = ["name", "tasks", "steps", "batch_size", "lr", "min_lr", "warmup_steps", "lr_schedule"];
        assert_eq!(suggest("lr_shedule", &keys).as_deref(), Some("lr_schedule"));
        assert_eq!(suggest("batchsize", &keys).as_deref(), Some("batch_size"));
        assert_eq!(suggest("step", &keys).as_deref(), Some("steps"));
        assert_eq!(suggest("cosin", &["constant", "cosine", "linear"]).as_deref(), Some("cosine"));
        assert_eq!(suggest("tiny-vt", &["tiny-vit", "tiny-wave-audio"]).as_deref(), Some("tiny-vit"));
        assert_eq!(suggest("LR", &keys).as_deref(), Some("lr"));
    }

    #[test]
    fn no_suggestion_for_unrelated_or_empty() {
        assert_eq!(suggest("completely_different", &["lr", "steps"]), None);
        assert_eq!(suggest("", &["lr"]), None);
        assert_eq!(suggest("lr", &[]), None);
        assert_eq!(did_you_mean("xyz", &["abcdef"]), "");
        assert_eq!(did_you_mean("cosin", &["cosine"]), ", did you mean `cosine`?");
    }
}
