//! Turning generated text into a label.

use crate::recipe::LabelExtraction;

/// The label found in `text`, or `None` when the text names no label (reported as unparsed).
///
/// - `Reference` (Emotion-LLaMA `eval_emotion.py`): the last whitespace token; anything outside the label
///   set counts as `neutral` (so it is never `None`).
/// - `NearestEnd`: after the last "emotional state is" / "emotion is" cue when the text has one (the
///   phrasing Emotion-LLaMA's answers end with), the first label word (or synonym) after it; otherwise the
///   label word nearest the end of the text. Punctuation stripped, case ignored.
pub fn extract_label(text: &str, labels: &[&str], rule: LabelExtraction) -> Option<String> {
    match rule {
        LabelExtraction::Reference => {
            let last = text.split(' ').next_back().unwrap_or("");
            Some(if labels.contains(&last) { last.to_string() } else { "neutral".to_string() })
        }
        LabelExtraction::NearestEnd | LabelExtraction::Scores => {
            let lower = text.to_lowercase();
            let words = |s: &str| s.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_string).collect::<Vec<_>>();
            let cue = CUES.iter().filter_map(|c| lower.rfind(c).map(|i| i + c.len())).max();
            if let Some(after) = cue
                && let Some(found) = words(&lower[after..]).iter().find_map(|w| canonical(w, labels))
            {
                return Some(found);
            }
            words(&lower).iter().rev().find_map(|w| canonical(w, labels))
        }
    }
}

/// Phrases after which an answer names its label.
const CUES: [&str; 4] = ["emotional state is", "emotion is", "emotional state of", "feeling is"];

use crate::data::card::canonical_label as canonical;

#[cfg(test)]
mod tests {
    use super::*;
    const L: [&str; 6] = ["neutral", "angry", "happy", "sad", "worried", "surprise"];

    #[test]
    fn reference_rule_takes_the_last_token_and_defaults_to_neutral() {
        assert_eq!(extract_label("so it is happy", &L, LabelExtraction::Reference).as_deref(), Some("happy"));
        assert_eq!(extract_label("so it is happy.", &L, LabelExtraction::Reference).as_deref(), Some("neutral"));
    }

    #[test]
    fn nearest_end_strips_punctuation_and_maps_synonyms() {
        assert_eq!(extract_label("the state is happy.", &L, LabelExtraction::NearestEnd).as_deref(), Some("happy"));
        assert_eq!(extract_label("not sad but furious!", &L, LabelExtraction::NearestEnd).as_deref(), Some("angry"));
        assert_eq!(extract_label("no idea", &L, LabelExtraction::NearestEnd), None);
        // The cue wins over a later label word.
        assert_eq!(extract_label("Her emotional state is Angry, not happy.", &L, LabelExtraction::NearestEnd).as_deref(), Some("angry"));
        assert_eq!(extract_label("The emotion is: surprised! She was sad before.", &L, LabelExtraction::NearestEnd).as_deref(), Some("surprise"));
        // A cue followed by no label falls back to the word nearest the end.
        assert_eq!(extract_label("sad voice; the emotional state is unclear", &L, LabelExtraction::NearestEnd).as_deref(), Some("sad"));
    }
}
