//! `recipe diff`: two resolved recipes compared key by key, each differing value with where it came
//! from (`file:line`, environment variable, `--set`, or `default`).

use super::{LoadedRecipe, RecipeError};

/// One key whose resolved values differ (`None`: the key is absent on that side, e.g. a stage only
/// one recipe has).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// Full key path: `model.llm`, `stage[1].lr`.
    pub key: String,
    pub a: Option<String>,
    pub b: Option<String>,
    pub a_from: String,
    pub b_from: String,
}

/// Every leaf key whose value differs, in key order (tables alphabetically, array elements by index),
/// then keys only `b` has.
pub fn diff(a: &LoadedRecipe, b: &LoadedRecipe) -> Result<Vec<Difference>, RecipeError> {
    let fa = flatten_recipe(a)?;
    let fb = flatten_recipe(b)?;
    let mut out = Vec::new();
    let mut push = |key: &str, va: Option<&String>, vb: Option<&String>| {
        if va != vb {
            out.push(Difference {
                key: key.to_string(),
                a: va.cloned(),
                b: vb.cloned(),
                a_from: if va.is_some() { a.origin_of(key) } else { "-".into() },
                b_from: if vb.is_some() { b.origin_of(key) } else { "-".into() },
            });
        }
    };
    let get = |f: &[(String, String)], k: &str| f.iter().find(|(x, _)| x == k).map(|(_, v)| v.clone());
    for (k, va) in &fa {
        push(k, Some(va), get(&fb, k).as_ref());
    }
    for (k, vb) in fb.iter().filter(|(k, _)| !fa.iter().any(|(x, _)| x == k)) {
        push(k, None, Some(vb));
    }
    Ok(out)
}

/// `(key path, value as TOML)` of every leaf of the resolved recipe; arrays of tables (`[[stage]]`)
/// are entered element by element, other arrays are one value.
fn flatten_recipe(r: &LoadedRecipe) -> Result<Vec<(String, String)>, RecipeError> {
    let text = r.to_toml()?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| RecipeError::Serialize { message: e.message().to_string() })?;
    let mut out = Vec::new();
    flatten_table(&table, "", &mut out);
    Ok(out)
}

fn flatten_table(t: &toml::Table, prefix: &str, out: &mut Vec<(String, String)>) {
    for (k, v) in t {
        let key = if prefix.is_empty() { quote_key(k) } else { format!("{prefix}.{}", quote_key(k)) };
        flatten_value(v, key, out);
    }
}

fn flatten_value(v: &toml::Value, key: String, out: &mut Vec<(String, String)>) {
    match v {
        toml::Value::Table(t) if !t.is_empty() => flatten_table(t, &key, out),
        toml::Value::Array(items) if !items.is_empty() && items.iter().all(|i| i.is_table()) => {
            for (i, item) in items.iter().enumerate() {
                flatten_value(item, format!("{key}[{i}]"), out);
            }
        }
        other => out.push((key, other.to_string())),
    }
}

fn quote_key(k: &str) -> String {
    if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') { k.to_string() } else { format!("{k:?}") }
}

/// The differences as text: a header naming both sides, then per key the two values side by side,
/// each with where it came from.
pub fn render(a_name: &str, b_name: &str, diffs: &[Difference]) -> String {
    let mut s = format!("A: {a_name}\nB: {b_name}\n");
    if diffs.is_empty() {
        s.push_str("the resolved recipes are identical\n");
        return s;
    }
    s.push_str(&format!("{} key(s) differ\n", diffs.len()));
    for d in diffs {
        let va = d.a.clone().unwrap_or_else(|| "(not set)".into());
        let vb = d.b.clone().unwrap_or_else(|| "(not set)".into());
        let w = va.chars().count().max(vb.chars().count());
        s.push_str(&format!("\n{}\n  A  {va:<w$}  {}\n  B  {vb:<w$}  {}\n", d.key, d.a_from, d.b_from));
    }
    s
}
