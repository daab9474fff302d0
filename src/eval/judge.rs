//! A judge for reasoning quality: the EMER clue-overlap and label-overlap scores (1-10) of AffectGPT's
//! `evaluation.py`, whose prompts are Chinese; they are translated here faithfully (same steps, same
//! example, same output format). The reference judge (gpt-3.5-turbo-16k-0613) is retired, so the judge is
//! a trait with two implementations: a local LLM from the registry (e.g. SmolLM2 from GGUF) and any
//! OpenAI-compatible chat-completions endpoint. Replies with no usable score are counted, not guessed.

use serde::Serialize;

use crate::model::chat::ChatModel;
use crate::model::generate::GenerateOptions;

#[derive(Debug, thiserror::Error)]
pub enum JudgeError {
    #[error("judge `{judge}`: {message}")]
    Failed { judge: String, message: String },
}

/// Something that answers a prompt, greedily.
pub trait Judge {
    fn name(&self) -> String;
    fn complete(&self, prompt: &str) -> Result<String, JudgeError>;
}

/// Clue overlap (`func_clue_scoring`), translated.
pub fn clue_prompt(truth: &str, prediction: &str) -> String {
    format!(
        "Below are a person's <<True description>> and <<Predicted description>>. Follow the steps below to compute the score of the <<Predicted description>>; the score ranges from 1 to 10. Finally, output only the numeric value of the predicted score, and give the reason.\n\n\
         1. Summarise the description of the person's emotional state in the <<True description>>.\n\n\
         2. Summarise the description of the person's emotional state in the <<Predicted description>>.\n\n\
         3. Compute the overlap between the <<Predicted description>> and the <<True description>>; the higher the overlap, the higher the score returned.\n\n\
         4. The output format is: 'Predicted score': predicted score; 'Reason': reason\n\n\
         Input:\n\n\
         <<True description>>: {truth}\n\n\
         <<Predicted description>>: {prediction}\n\n\
         Output:\n"
    )
}

/// Emotion summary of a description (`get_summarized_emotions`), translated with its one-shot example.
pub fn summary_prompt(description: &str) -> String {
    format!(
        "Based on the following video description, infer the most likely emotional state of the person in the video, and output only emotion words:\n\n\
         Video description: Although he looks very happy, he is actually very anxious\n\n\
         Output: anxious\n\n\
         Video description: {description}\n\n\
         Output:\n"
    )
}

/// Label overlap (`func_label_scoring`), translated.
pub fn label_prompt(truth: &str, prediction: &str) -> String {
    format!(
        "Below are a person's <<True emotion>> and <<Predicted emotion>>. Compute the overlap between the <<Predicted emotion>> and the <<True emotion>>; the higher the overlap, the higher the score returned. The score ranges from 1 to 10. Finally, output only the numeric value of the predicted score, and give the reason.\n\n\
         The output format is: 'Predicted score': predicted score; 'Reason': reason\n\n\
         Input:\n\n\
         <<True emotion>>: {truth}\n\n\
         <<Predicted emotion>>: {prediction}\n\n\
         Output:\n"
    )
}

/// The score in a judge's reply, if any: the number after "score" (English or the reference's 预测分数)
/// when there is one, else the first number (the reference takes the first match of `[\d][.]*[\d]*`);
/// `7/10` reads as 7. Scores outside 1-10 are not scores.
pub fn parse_score(reply: &str) -> Option<f64> {
    let lower = reply.to_lowercase();
    let after = ["predicted score", "score", "预测分数", "分数"].iter().find_map(|k| lower.find(k).map(|i| &lower[i + k.len()..]));
    let number = |s: &str| -> Option<f64> {
        let start = s.find(|c: char| c.is_ascii_digit())?;
        let rest = &s[start..];
        let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        rest[..end].trim_end_matches('.').parse::<f64>().ok()
    };
    let x = after.and_then(number).or_else(|| number(&lower))?;
    (1.0..=10.0).contains(&x).then_some(x)
}

/// One judged pair.
#[derive(Debug, Clone, Serialize)]
pub struct Judged {
    pub name: String,
    pub clue_score: Option<f64>,
    pub clue_reply: String,
    pub truth_emotions: String,
    pub predicted_emotions: String,
    pub label_score: Option<f64>,
    pub label_reply: String,
}

/// Means over the parsed scores, and how many replies had none.
#[derive(Debug, Clone, Serialize)]
pub struct JudgeReport {
    pub judge: String,
    pub n: usize,
    pub clue_overlap: Option<f64>,
    pub label_overlap: Option<f64>,
    pub clue_unparsed: usize,
    pub label_unparsed: usize,
    pub items: Vec<Judged>,
}

/// Judges (name, true description, predicted description) triples: clue overlap, then both emotion
/// summaries and their label overlap, as the reference does.
pub fn judge_pairs(judge: &dyn Judge, pairs: &[(String, String, String)], progress: Option<&indicatif::ProgressBar>) -> Result<JudgeReport, JudgeError> {
    let mut items = Vec::with_capacity(pairs.len());
    for (name, truth, pred) in pairs {
        let clue_reply = judge.complete(&clue_prompt(truth, pred))?;
        let truth_emotions = judge.complete(&summary_prompt(truth))?.trim().to_string();
        let predicted_emotions = judge.complete(&summary_prompt(pred))?.trim().to_string();
        let label_reply = judge.complete(&label_prompt(&truth_emotions, &predicted_emotions))?;
        items.push(Judged { name: name.clone(), clue_score: parse_score(&clue_reply), clue_reply, truth_emotions, predicted_emotions, label_score: parse_score(&label_reply), label_reply });
        if let Some(p) = progress {
            p.inc(1);
        }
    }
    let mean = |f: fn(&Judged) -> Option<f64>| {
        let v: Vec<f64> = items.iter().filter_map(f).collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    Ok(JudgeReport {
        judge: judge.name(),
        n: items.len(),
        clue_overlap: mean(|j| j.clue_score),
        label_overlap: mean(|j| j.label_score),
        clue_unparsed: items.iter().filter(|j| j.clue_score.is_none()).count(),
        label_unparsed: items.iter().filter(|j| j.label_score.is_none()).count(),
        items,
    })
}

/// A local LLM (registry name or path), greedy, as the reference's temperature 0.
pub struct LocalJudge {
    chat: ChatModel,
    max_new_tokens: usize,
}

impl LocalJudge {
    pub fn new(chat: ChatModel, max_new_tokens: usize) -> Self {
        LocalJudge { chat, max_new_tokens }
    }
}

impl Judge for LocalJudge {
    fn name(&self) -> String {
        format!("local:{}", self.chat.spec.name)
    }

    fn complete(&self, prompt: &str) -> Result<String, JudgeError> {
        let fail = |e: crate::model::llm_load::LlmError| JudgeError::Failed { judge: self.name(), message: e.to_string() };
        let ids = self.chat.prompt_ids(prompt, false).map_err(fail)?;
        let opts = GenerateOptions { max_new_tokens: self.max_new_tokens, temperature: 0.0, top_p: 1.0, repetition_penalty: 1.0, stop_tokens: Vec::new() };
        let mut out = self.chat.generate(&[ids], &opts, 0).map_err(fail)?;
        Ok(out.pop().unwrap_or_default())
    }
}

/// An OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, llama.cpp's server, ...).
pub struct HttpJudge {
    /// Base URL, e.g. `http://127.0.0.1:8000/v1` (`/v1` added when missing).
    pub base_url: String,
    pub api_key: Option<String>,
    pub model: String,
    pub max_tokens: usize,
    pub timeout_s: u64,
}

impl Judge for HttpJudge {
    fn name(&self) -> String {
        format!("http:{} ({})", self.base_url, self.model)
    }

    fn complete(&self, prompt: &str) -> Result<String, JudgeError> {
        let base = self.base_url.trim_end_matches('/');
        let url = if base.ends_with("/v1") { format!("{base}/chat/completions") } else { format!("{base}/v1/chat/completions") };
        let body = serde_json::json!({
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
            "max_tokens": self.max_tokens,
        });
        let mut req = ureq::post(&url).timeout(std::time::Duration::from_secs(self.timeout_s));
        if let Some(k) = &self.api_key {
            req = req.set("Authorization", &format!("Bearer {k}"));
        }
        let fail = |message: String| JudgeError::Failed { judge: self.name(), message };
        let resp = req.send_json(body).map_err(|e| match e {
            ureq::Error::Status(code, r) => fail(format!("{url}: HTTP {code}: {}", r.into_string().unwrap_or_default().chars().take(300).collect::<String>())),
            other => fail(format!("{url}: {other}")),
        })?;
        let v: serde_json::Value = resp.into_json().map_err(|e| fail(format!("{url}: reply is not JSON: {e}")))?;
        v["choices"][0]["message"]["content"].as_str().map(str::to_string).ok_or_else(|| fail(format!("{url}: no choices[0].message.content in the reply")))
    }
}

/// `name → description` from a CSV (`name`/`names` and `reason`/`reasons`/`description`/`english`: EMER's
/// `gt-eng.csv`, MER-Caption's `name, reason`) or a run's predictions.jsonl (`id`, `text`).
pub fn read_descriptions(path: &std::path::Path) -> Result<Vec<(String, String)>, JudgeError> {
    let file = path.display().to_string();
    let fail = |message: String| JudgeError::Failed { judge: file.clone(), message };
    if path.extension().is_some_and(|e| e == "jsonl") {
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        return text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                let v: serde_json::Value = serde_json::from_str(l).map_err(|e| fail(format!("line {}: {e}", i + 1)))?;
                match (v["id"].as_str(), v["text"].as_str().or(v["reason"].as_str())) {
                    (Some(id), Some(t)) => Ok((id.to_string(), t.to_string())),
                    _ => Err(fail(format!("line {}: needs `id` and `text`", i + 1))),
                }
            })
            .collect();
    }
    let t = crate::data::sources::table::read_csv_file(path).map_err(|e| fail(e.to_string()))?;
    let name = t.require(&["name", "names"]).map_err(|e| fail(e.to_string()))?;
    let desc = t.require(&["reason", "reasons", "description", "english"]).map_err(|e| fail(e.to_string()))?;
    Ok(t.rows.iter().map(|(_, r)| (r[name].clone(), r[desc].clone())).collect())
}

/// The MER-OV synonym grouping (MER2024 `main-ov.py`, English in the original): a judge groups the union of
/// a sample's true and predicted words; each word then stands for the first word of its group. A reply
/// that is not a list of lists counts as unparsed and the words are compared exactly.
pub struct JudgeGrouping<'a> {
    pub judge: &'a dyn Judge,
    pub unparsed: std::cell::Cell<usize>,
    pub failed: std::cell::RefCell<Option<String>>,
}

impl<'a> JudgeGrouping<'a> {
    pub fn new(judge: &'a dyn Judge) -> Self {
        JudgeGrouping { judge, unparsed: std::cell::Cell::new(0), failed: std::cell::RefCell::new(None) }
    }
}

/// The reference's grouping prompt with its one-shot example.
pub fn grouping_prompt(words: &[String]) -> String {
    let list = format!("[{}]", words.iter().map(|w| format!("'{w}'")).collect::<Vec<_>>().join(", "));
    format!(
        "Please assume the role of an expert in the field of emotions. We provide a set of emotions. Please group the emotions, with each group containing emotions with the same meaning. Directly output the results. The output format should be a list containing multiple lists. Input: ['Agree', 'agreement', 'Relaxed', 'acceptance', 'pleasant', 'relaxed', 'Accept', 'positive', 'Happy'] Output: [['Agree', 'agreement', 'Accept', 'acceptance'], ['Relaxed', 'relaxed'],['pleasant', 'positive', 'Happy']] Input: {list} Output:"
    )
}

/// The inner lists of a reply like `[['a', 'b'], ['c']]`.
pub fn parse_groups(reply: &str) -> Option<Vec<Vec<String>>> {
    let start = reply.find('[')?;
    let end = reply.rfind(']')?;
    let body = reply.get(start + 1..end)?;
    let mut groups = Vec::new();
    let mut rest = body;
    while let Some(open) = rest.find('[') {
        let close = rest[open..].find(']')? + open;
        let words = crate::data::sources::table::parse_list_string(&rest[open..=close]).ok()?;
        if !words.is_empty() {
            groups.push(words);
        }
        rest = &rest[close + 1..];
    }
    (!groups.is_empty()).then_some(groups)
}

impl super::openset::Grouping for JudgeGrouping<'_> {
    fn group(&self, words: &[String]) -> std::collections::HashMap<String, String> {
        let exact = || words.iter().map(|w| (w.clone(), w.clone())).collect();
        if words.len() < 2 {
            return exact();
        }
        match self.judge.complete(&grouping_prompt(words)) {
            Ok(reply) => match parse_groups(&reply) {
                Some(groups) => super::openset::Synonyms(groups).group(words),
                None => {
                    self.unparsed.set(self.unparsed.get() + 1);
                    exact()
                }
            },
            Err(e) => {
                self.failed.borrow_mut().get_or_insert(e.to_string());
                exact()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_are_parsed_robustly() {
        assert_eq!(parse_score("'Predicted score': 7; 'Reason': both describe anger"), Some(7.0));
        assert_eq!(parse_score("'预测分数'：8.5；'原因'：重叠度高"), Some(8.5));
        assert_eq!(parse_score("Step 1 ... Step 3: the overlap is high. Score: 9/10."), Some(9.0));
        assert_eq!(parse_score("6"), Some(6.0));
        assert_eq!(parse_score("I cannot tell."), None);
        assert_eq!(parse_score("Predicted score: 42"), None);
        assert_eq!(parse_score("score 0"), None);
    }

    /// A judge that replies from a script, to test the flow and the counting.
    struct Scripted(std::cell::RefCell<Vec<String>>);

    impl Judge for Scripted {
        fn name(&self) -> String {
            "scripted".into()
        }
        fn complete(&self, _: &str) -> Result<String, JudgeError> {
            Ok(self.0.borrow_mut().remove(0))
        }
    }

    #[test]
    fn means_skip_and_count_unparsed_replies() {
        let replies = ["'Predicted score': 8", "sad", "sad", "'Predicted score': 10", "no idea", "happy", "angry", "'Predicted score': 2"];
        let j = Scripted(std::cell::RefCell::new(replies.iter().map(|s| s.to_string()).collect()));
        let pairs = vec![("a".into(), "t1".into(), "p1".into()), ("b".into(), "t2".into(), "p2".into())];
        let r = judge_pairs(&j, &pairs, None).unwrap();
        assert_eq!((r.n, r.clue_unparsed, r.label_unparsed), (2, 1, 0));
        assert_eq!((r.clue_overlap, r.label_overlap), (Some(8.0), Some(6.0)));
        assert_eq!((r.items[1].truth_emotions.as_str(), r.items[1].predicted_emotions.as_str()), ("happy", "angry"));
    }

    #[test]
    fn judge_grouping_merges_synonyms_for_mer_ov() {
        use crate::eval::openset::{Exact, ov_scores};
        assert_eq!(parse_groups("Output: [['Happy', 'joyful'], ['sad']]"), Some(vec![vec!["happy".to_string(), "joyful".into()], vec!["sad".into()]]));
        assert_eq!(parse_groups("I think they are all different."), None);
        let gt = vec![vec!["happy".to_string()], vec!["sad".to_string()]];
        let pred = vec![vec!["joyful".to_string()], vec!["angry".to_string()]];
        let j = Scripted(std::cell::RefCell::new(vec!["[['happy', 'joyful']]".into(), "no groups".into()]));
        let g = JudgeGrouping::new(&j);
        let s = ov_scores(&gt, &pred, &g);
        assert_eq!((s.ov_accuracy, s.ov_recall), (0.5, 0.5));
        assert_eq!(g.unparsed.get(), 1);
        assert_eq!(ov_scores(&gt, &pred, &Exact).ov_accuracy, 0.0);
    }

    #[test]
    fn prompts_keep_the_reference_structure() {
        let p = clue_prompt("T", "P");
        assert!(p.contains("1 to 10") && p.contains("<<True description>>: T") && p.contains("<<Predicted description>>: P") && p.contains("'Predicted score'"));
        assert!(summary_prompt("D").contains("Output: anxious\n\nVideo description: D"));
        assert!(label_prompt("sad", "angry").contains("<<True emotion>>: sad"));
    }
}
