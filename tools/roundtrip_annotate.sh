#!/usr/bin/env bash
# The annotation round trip (issue 27): pseudo-label the quick start's synthetic test split with the
# zero-shot model, train the quick start on those pseudo-labels, and compare its F1 on the synthetic
# validation split (true labels, clips it never saw) with the zero-shot model's and with the quick start
# trained on the same clips' true labels. Runs in a scratch project (this repo's plugins/ and datasets/
# plus the two new cards), so nothing here changes. Needs `just fetch-models` (SmolLM2, the face front end).
#   bash tools/roundtrip_annotate.sh [WORKDIR]      # default: a new temporary directory
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
bin="${EMOLLAMA:-$repo/target/release/emollama}"
work="${1:-$(mktemp -d)}"
mkdir -p "$work/project/datasets"
ln -sfn "$repo/plugins" "$work/project/plugins"
# A copy, not a link: a recipe finds its registry from its own folder's real path.
rm -rf "$work/project/recipes" && cp -r "$repo/recipes" "$work/project/recipes"
cp "$repo"/datasets/*.toml "$work/project/datasets/"
cd "$work/project"

echo "== 1. annotate the synthetic test split (zero-shot) -> $work/annotated"
"$bin" annotate recipes/annotate_synth.toml --out "$work/annotated" --no-progress || [ $? -eq 3 ]
cp "$work/annotated/synth-annotated.toml" datasets/

echo "== 2. the same clips with their true labels (the supervised comparison)"
mkdir -p "$work/true"
rm -rf "$work/true/media" && cp -al "$work/annotated/media" "$work/true/media"   # hard links: a dataset's media stay below its root
python3 - "$work" <<'PY'
import json, sys, pathlib
w = pathlib.Path(sys.argv[1])
with open(w / "annotated/manifest.jsonl") as f, open(w / "true/manifest.jsonl", "w") as g:
    for line in f:
        d = json.loads(line)
        d["label"] = d["source_label"]
        g.write(json.dumps(d) + "\n")
card = (w / "annotated/synth-annotated.toml").read_text()
card = card.replace('name = "synth-annotated"', 'name = "synth-true"').replace(f'root = "{w}/annotated"', f'root = "{w}/true"')
(w / "project/datasets/synth-true.toml").write_text(card)
PY

common=(--no-progress --set validation.enabled=false --set eval.enabled=false --set "runtime.runs_dir=\"$work/runs\"")
echo "== 3. the quick start on the pseudo-labels, and on the true labels of the same clips"
"$bin" run recipes/quickstart.toml "${common[@]}" --set data.dataset=synth-annotated --set 'name="on-pseudo-labels"'
"$bin" run recipes/quickstart.toml "${common[@]}" --set data.dataset=synth-true --set 'name="on-true-labels"'

echo "== 4. F1 on the synthetic validation split (true labels)"
for name in on-pseudo-labels on-true-labels; do
  dir=$(ls -d "$work"/runs/$name-* | head -1)
  "$bin" eval recipes/quickstart.toml --checkpoint "$dir" --split val --no-progress --set "runtime.runs_dir=\"$work/evals\"" --set "name=\"$name\"" --set eval.task=emotion
done
"$bin" eval recipes/zero_shot.toml --split val --no-progress --set "runtime.runs_dir=\"$work/evals\"" --set 'name="zero-shot"' \
  --set data.synth.train=2400 --set data.synth.val=120 --set data.synth.test=240
python3 - "$work" <<'PY'
import json, sys, pathlib
w = pathlib.Path(sys.argv[1])
print(f"{'model':<22} {'weighted F1':>12} {'accuracy':>9} {'n':>4}")
for d in sorted((w / "evals").iterdir()):
    m = json.loads((d / "metrics.json").read_text())
    e = m.get("eval", m)
    print(f"{d.name.rsplit('-', 2)[0]:<22} {e['weighted_f1']:>12.3f} {e['accuracy']:>9.3f} {e['n']:>4}")
a = [json.loads(l) for l in open(w / "annotated/manifest.jsonl")]
ok = sum(x["label"] == x["source_label"] for x in a)
print(f"pseudo-labels vs the true labels of the annotated clips: {ok}/{len(a)} = {ok/len(a):.3f}")
PY
