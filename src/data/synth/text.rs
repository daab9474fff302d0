//! Transcripts, coarse descriptions and fine reasoning sentences.
//!
//! The transcript carries only a weak valence hint (with probability `text_hint_prob` a sentence from a
//! valence-specific pool, otherwise a sentence from a shared generic pool). Descriptions describe the
//! face and voice cues without any class word; reasoning appends the class label as its last word.

use rand::Rng;

use super::{Arousal, Valence};

/// Shared pool: says nothing about the emotion.
pub const GENERIC_SENTENCES: [&str; 16] = [
    "we are meeting at noon",
    "the train leaves at seven",
    "i will call you tomorrow",
    "can you pass me the file",
    "the office is on the third floor",
    "she said the bus was late",
    "let me check the calendar",
    "the report is on the table",
    "we need to buy more paper",
    "he parked the car outside",
    "the window was open all night",
    "i read the message this morning",
    "they moved the meeting to friday",
    "the shop closes at nine",
    "put the boxes by the door",
    "my brother lives in the city",
];

/// Hints a flat (unsure, matter of fact) valence.
pub const FLAT_SENTENCES: [&str; 12] = [
    "i am not sure about this",
    "let us wait and see",
    "i do not know what to say",
    "we will find out later",
    "it could go either way",
    "i am still thinking about it",
    "maybe we should ask someone",
    "there is nothing to report yet",
    "i have not heard anything",
    "what comes next is unclear",
    "it depends on the weather",
    "we have to check again",
];

/// Hints a positive valence.
pub const UP_SENTENCES: [&str; 13] = [
    "i got the results today",
    "i got the results today and they are great",
    "this is the best news all week",
    "we finally won the match",
    "you did a wonderful job",
    "i cannot believe we made it",
    "they gave me the job",
    "the party was a lot of fun",
    "look at this lovely gift",
    "everything worked out in the end",
    "we are going on a trip",
    "she passed the exam",
    "this is great news",
];

/// Hints a negative valence.
pub const DOWN_SENTENCES: [&str; 12] = [
    "this is not what i expected",
    "i lost my keys again",
    "nobody listened to me",
    "they cancelled everything",
    "i failed the exam",
    "you broke my favourite cup",
    "the whole day was a disaster",
    "he never came back",
    "why does this always go wrong",
    "i cannot stand this any longer",
    "they forgot about me",
    "it is all ruined now",
];

const FACE_FLAT: [&str; 3] = [
    "the mouth is straight and the face is still",
    "the face shows a level mouth and steady eyes",
    "the lips form a flat line",
];
const FACE_UP: [&str; 3] =
    ["the face shows a smile", "the corners of the mouth turn up", "the lips curve upward into a smile"];
const FACE_DOWN: [&str; 3] = [
    "the face shows a frown with slanted brows",
    "the mouth turns down and the brows are slanted",
    "the corners of the mouth drop and the brows tilt inward",
];
const VOICE_CALM: [&str; 3] =
    ["the voice is soft slow and low pitched", "the speech is quiet slow and deep", "the voice is low and unhurried"];
const VOICE_AROUSED: [&str; 3] = [
    "the voice is loud fast and high pitched",
    "the speech is rapid loud and high",
    "the voice is high and quick with strong energy",
];
const CONNECTORS: [&str; 3] = ["so the emotional state is", "so the emotion is", "which indicates"];

/// Generated text fields of one clip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClipText {
    pub transcript: String,
    pub description: String,
    pub reasoning: String,
    /// Whether the transcript came from a valence hint pool.
    pub hinted: bool,
}

fn pick<'a, R: Rng + ?Sized>(rng: &mut R, pool: &[&'a str]) -> &'a str {
    pool[rng.random_range(0..pool.len())]
}

/// The hint pool of a valence group.
pub fn hint_pool(valence: Valence) -> &'static [&'static str] {
    match valence {
        Valence::Flat => &FLAT_SENTENCES,
        Valence::Up => &UP_SENTENCES,
        Valence::Down => &DOWN_SENTENCES,
    }
}

/// Coarse cue description (no class word), wording variant chosen by `rng`.
pub fn describe<R: Rng + ?Sized>(rng: &mut R, valence: Valence, arousal: Arousal) -> String {
    let face = match valence {
        Valence::Flat => pick(rng, &FACE_FLAT),
        Valence::Up => pick(rng, &FACE_UP),
        Valence::Down => pick(rng, &FACE_DOWN),
    };
    let voice = match arousal {
        Arousal::Calm => pick(rng, &VOICE_CALM),
        Arousal::Aroused => pick(rng, &VOICE_AROUSED),
    };
    format!("{face} and {voice}")
}

/// All text of one clip. `hint_prob` must lie in [0, 1] (validated by the config).
pub fn clip_text<R: Rng + ?Sized>(
    rng: &mut R,
    label: &str,
    valence: Valence,
    arousal: Arousal,
    hint_prob: f32,
) -> ClipText {
    let hinted = rng.random::<f32>() < hint_prob;
    let transcript = if hinted { pick(rng, hint_pool(valence)) } else { pick(rng, &GENERIC_SENTENCES) };
    let description = describe(rng, valence, arousal);
    let connector = pick(rng, &CONNECTORS);
    let reasoning = format!("{description} {connector} {label}");
    ClipText { transcript: transcript.to_string(), description, reasoning, hinted }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synth::{CLASSES, class_affect};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// Word stems of every class label (catches "happily", "surprised", "worry", ...).
    const STEMS: [&str; 6] = ["neutral", "angr", "happ", "sad", "worr", "surpris"];

    fn leaks(text: &str) -> Option<String> {
        text.split_whitespace()
            .find(|w| STEMS.iter().any(|s| w.starts_with(s)) || CLASSES.contains(w))
            .map(str::to_string)
    }

    fn all_pools() -> Vec<&'static str> {
        let mut v: Vec<&str> = Vec::new();
        for p in [&GENERIC_SENTENCES[..], &FLAT_SENTENCES, &UP_SENTENCES, &DOWN_SENTENCES] {
            v.extend_from_slice(p);
        }
        for p in [&FACE_FLAT, &FACE_UP, &FACE_DOWN, &VOICE_CALM, &VOICE_AROUSED, &CONNECTORS] {
            v.extend_from_slice(p);
        }
        v
    }

    #[test]
    fn pools_are_clean_lowercase_and_label_free() {
        for s in all_pools() {
            assert!(leaks(s).is_none(), "label word in {s:?}");
            assert!(
                s.chars().all(|c| c.is_ascii_lowercase() || c == ' '),
                "only lower case words and spaces allowed: {s:?}"
            );
            assert!(!s.contains("  ") && s.trim() == s, "spacing: {s:?}");
        }
    }

    #[test]
    fn pools_are_disjoint() {
        let mut seen = std::collections::HashSet::new();
        for p in [&GENERIC_SENTENCES[..], &FLAT_SENTENCES, &UP_SENTENCES, &DOWN_SENTENCES] {
            for s in p {
                assert!(seen.insert(*s), "duplicate sentence {s:?}");
            }
        }
    }

    #[test]
    fn reasoning_ends_with_label_and_only_there() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for _ in 0..200 {
            for (c, label) in CLASSES.iter().enumerate() {
                let (v, a) = class_affect(c);
                let t = clip_text(&mut rng, label, v, a, 0.5);
                assert!(leaks(&t.description).is_none(), "{}", t.description);
                assert!(leaks(&t.transcript).is_none(), "{}", t.transcript);
                let words: Vec<&str> = t.reasoning.split_whitespace().collect();
                assert_eq!(words.last().copied(), Some(*label));
                assert!(leaks(&words[..words.len() - 1].join(" ")).is_none(), "{}", t.reasoning);
                assert!(t.reasoning.starts_with(&t.description));
            }
        }
    }

    #[test]
    fn hint_probability_is_respected() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let n = 4000;
        let hinted = (0..n).filter(|_| clip_text(&mut rng, "sad", Valence::Down, Arousal::Calm, 0.5).hinted).count();
        let frac = hinted as f64 / n as f64;
        assert!((0.45..0.55).contains(&frac), "hint fraction {frac}");
        let t = clip_text(&mut rng, "sad", Valence::Down, Arousal::Calm, 0.0);
        assert!(GENERIC_SENTENCES.contains(&t.transcript.as_str()));
        let t = clip_text(&mut rng, "sad", Valence::Down, Arousal::Calm, 1.0);
        assert!(DOWN_SENTENCES.contains(&t.transcript.as_str()));
    }
}
