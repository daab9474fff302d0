//! The plan as text tables.

use std::fmt::Write;

use comfy_table::{CellAlignment, Table, presets};

use super::memory::human;
use super::{GenerationPlan, Plan};

/// `6738415616` → `6,738,415,616`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn table(header: Vec<String>) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::UTF8_FULL_CONDENSED);
    t.set_header(header);
    t
}

fn right_align(t: &mut Table, columns: impl IntoIterator<Item = usize>) {
    for i in columns {
        if let Some(c) = t.column_mut(i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
}

fn opt<T: ToString>(v: Option<T>, unknown: &str) -> String {
    v.map(|x| x.to_string()).unwrap_or_else(|| unknown.to_string())
}

pub fn render(p: &Plan) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Plan of `{}` ({}): dry run, no weights read, no data touched, nothing written", p.recipe, p.file);
    let l = &p.llm;
    let _ = writeln!(
        s,
        "LLM `{}` ({}, {}): {} layers x {}, MLP {}, {} heads ({} KV), vocab {}; template {}; config from {}",
        l.name,
        l.model_type,
        if l.pretrained { "pretrained" } else { "from scratch" },
        l.layers,
        l.hidden_size,
        l.intermediate_size,
        l.heads,
        l.kv_heads,
        l.vocab_size,
        l.template,
        l.config_from
    );
    let encoders: Vec<String> = p.encoders.iter().map(|e| format!("{} = {}", e.prefix.trim_start_matches("encoder."), e.plugin)).collect();
    let _ = writeln!(s, "layout {} ({}); projector {}; runtime {} on {}", p.layout, encoders.join(", "), p.projector, p.runtime_dtype, p.device);
    let d = |k: &str| p.dtypes[k].as_str().unwrap_or("?").to_string();
    let _ = writeln!(
        s,
        "dtypes: LLM weights and activations {}, trainable master weights {}, AdamW state {}, frozen encoders' weight matrices {} (other weights {}, activations {})",
        d("llm_weights"),
        d("trainable_master"),
        d("optimizer_state"),
        d("encoder_weight_matrices"),
        d("encoder_other_weights"),
        d("encoder_activations")
    );

    parameters_section(&mut s, p);
    stages_section(&mut s, p);
    tokens_section(&mut s, p);
    memory_section(&mut s, p);
    s
}

/// The parameter table (trainable and frozen per stage) and the projector shapes.
fn parameters_section(s: &mut String, p: &Plan) {
    s.push_str("\nParameters (exact, from the run's constructors)\n");
    let mut header: Vec<String> = vec!["component".into(), "what".into(), "parameters".into()];
    header.extend(p.stages.iter().map(|st| format!("stage {}", st.run.name)));
    let mut t = table(header);
    for c in &p.components {
        let mut row = vec![c.name.clone(), c.what.clone(), thousands(c.params)];
        row.extend(c.trainable.iter().map(|&n| match n {
            0 => "frozen".to_string(),
            n if n == c.params => "trainable".to_string(),
            n => format!("{} trainable", thousands(n)),
        }));
        t.add_row(row);
    }
    let mut total = vec!["total".to_string(), String::new(), thousands(p.total_params)];
    total.extend(p.stages.iter().map(|_| String::new()));
    t.add_row(total);
    for (what, pick) in [("trainable in the stage", true), ("frozen in the stage", false)] {
        let mut row = vec![String::new(), what.to_string(), String::new()];
        row.extend(p.stages.iter().map(|st| thousands(if pick { st.trainable_params } else { st.frozen_params })));
        t.add_row(row);
    }
    right_align(&mut t, 2..3 + p.stages.len());
    let _ = writeln!(s, "{t}");

    let projectors: Vec<_> = p.components.iter().filter(|c| !c.shapes.is_empty()).collect();
    if !projectors.is_empty() {
        s.push_str("\nProjectors\n");
        let mut t = table(vec!["projector".into(), "tensors ([out, in])".into(), "parameters".into()]);
        for c in projectors {
            t.add_row(vec![c.name.clone(), tensor_list(&c.shapes), thousands(c.params)]);
        }
        right_align(&mut t, [2]);
        let _ = writeln!(s, "{t}");
    }

}

/// A projector's tensors with their shapes; a connector with many (the STC's RegNet stages) is summed up
/// per top-level block (`s1: 80 tensors, 1,234 parameters`).
fn tensor_list(shapes: &[crate::plan::params::TensorShape]) -> String {
    const LISTED: usize = 8;
    if shapes.len() <= LISTED {
        return shapes.iter().map(|sh| format!("{} {:?}", sh.name, sh.shape)).collect::<Vec<_>>().join(", ");
    }
    let mut blocks: Vec<(String, usize, usize)> = Vec::new();
    for sh in shapes {
        let block = sh.name.split('.').next().unwrap_or("").to_string();
        let n: usize = sh.shape.iter().product();
        match blocks.iter_mut().find(|(b, _, _)| *b == block) {
            Some(entry) => {
                entry.1 += 1;
                entry.2 += n;
            }
            None => blocks.push((block, 1, n)),
        }
    }
    blocks.iter().map(|(b, k, n)| format!("{b}: {k} tensors, {}", thousands(*n as u64))).collect::<Vec<_>>().join("; ")
}

/// The stage table: data, steps, batch, learning rate, validations, checkpoints.
fn stages_section(s: &mut String, p: &Plan) {
    s.push_str("\nStages\n");
    let mut t = table(["stage", "init", "data (samples, passes)", "steps", "batch x accum", "samples seen", "learning rate", "validations", "checkpoints"].map(String::from).to_vec());
    for st in &p.stages {
        let r = &st.run;
        let data: Vec<String> = r
            .data
            .iter()
            .map(|d| {
                let passes = d.passes.map(|x| format!(", {x:.2} passes")).unwrap_or_default();
                format!("{}/{} ({}{passes}) [{}] w={}", d.dataset, d.split, opt(d.samples.map(thousands), "size unknown"), d.tasks.join(", "), d.weight)
            })
            .collect();
        let lr = match &r.schedule {
            Some(sch) => {
                let pts: Vec<String> = sch.points.iter().map(|(step, lr)| format!("{step}: {lr:.3e}")).collect();
                format!("{}\nat step {}\nAdamW wd {}, clip {}", sch.summary, pts.join(", "), r.weight_decay, r.grad_clip)
            }
            None => "unknown (no step count)".into(),
        };
        t.add_row(vec![
            r.name.clone(),
            r.init.clone(),
            data.join("\n"),
            format!("{}\n({})", opt(r.steps.map(|n| thousands(n as u64)), "unknown"), r.steps_from),
            format!("{} x {}", r.batch_size, r.grad_accum),
            opt(r.samples_seen.map(thousands), "unknown"),
            lr,
            opt(r.validations, "-"),
            opt(r.checkpoints, "?"),
        ]);
    }
    let _ = writeln!(s, "{t}");

}

/// Tokens per sample and task.
fn tokens_section(s: &mut String, p: &Plan) {
    s.push_str("\nTokens per sample (multimodal exact; text estimated: ~)\n");
    let mut t = table(["stage", "task", "BOS", "<VideoHere>", "<FeatureHere>", "prompt ~", "transcript ~", "answer <=", "total ~"].map(String::from).to_vec());
    let mut row = |who: String, tk: &super::TaskTokens| {
        t.add_row(vec![
            who,
            tk.task.clone(),
            tk.bos.to_string(),
            tk.video_here.to_string(),
            tk.feature_here.to_string(),
            tk.prompt_text.to_string(),
            tk.transcript.to_string(),
            tk.answer.to_string(),
            tk.total.to_string(),
        ]);
    };
    for st in &p.stages {
        for tk in &st.tokens {
            row(st.run.name.clone(), tk);
        }
    }
    for (who, g) in [("validation", &p.validation), ("evaluation", &p.eval)] {
        if let Some(g) = g {
            row(format!("{who} (generates)"), &g.tokens);
        }
    }
    right_align(&mut t, 2..9);
    let _ = writeln!(s, "{t}");

}

/// Memory per stage, then warnings and estimates.
fn memory_section(s: &mut String, p: &Plan) {
    s.push_str("\nMemory per stage (weights and optimiser exact; activations estimated)\n");
    let mut t = table(["stage", "dtype", "frozen weights", "trainable: weights+grads+AdamW (f32)", "activations ~ (batch x tokens)", "total ~"].map(String::from).to_vec());
    for m in &p.memory {
        t.add_row(vec![
            m.stage.clone(),
            if m.dtype == p.runtime_dtype { format!("{} (recipe)", m.dtype) } else { m.dtype.clone() },
            human(m.frozen_weights),
            human(m.trainable_state),
            format!("{} ({} x {})", human(m.activations), m.batch_size, m.seq_len),
            human(m.total),
        ]);
    }
    right_align(&mut t, 2..6);
    let _ = writeln!(s, "{t}");

    for (who, g) in [("validation", &p.validation), ("evaluation", &p.eval)] {
        if let Some(g) = g {
            let _ = writeln!(s, "{}", generation_line(who, g));
        }
    }
    if !p.warnings.is_empty() {
        s.push_str("\nWarnings\n");
        for w in &p.warnings {
            let _ = writeln!(s, "- {w}");
        }
    }
    s.push_str("\nEstimates\n");
    for e in &p.estimates {
        let _ = writeln!(s, "- {e}");
    }
}

fn generation_line(who: &str, g: &GenerationPlan) -> String {
    format!(
        "{who}: `{}` split `{}` ({} samples), task `{}`, {}, up to {} new tokens per sample",
        g.dataset,
        g.split,
        opt(g.samples.map(thousands), "unknown number of"),
        g.task,
        g.metric,
        g.tokens.answer
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn thousands_separators() {
        assert_eq!(super::thousands(0), "0");
        assert_eq!(super::thousands(999), "999");
        assert_eq!(super::thousands(1000), "1,000");
        assert_eq!(super::thousands(6_738_415_616), "6,738,415,616");
    }
}
