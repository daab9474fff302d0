"""PyTorch + PEFT side of the LoRA training-step benchmark (tools/bench/lora_step_vs_peft.sh).

The model and adapter of `examples/bench_lora_step.rs` (its `config.json`: SmolLM2-135M's LlamaConfig and the
manifest's LoRA), random weights in f32 (a step's time does not depend on the values), frozen base, batch 8
of token ids, `labels = input_ids`, backward, gradient clipping at 1, AdamW. Median of 3 steps after a
warm-up, per sequence length; one JSON line each.

Usage: python lora_step_torch.py CONFIG_DIR THREADS SEQ_LEN [SEQ_LEN ...]
"""
import json
import sys
import time

import peft
import torch
import transformers

BATCH = 8


def main():
    config_dir, threads, lengths = sys.argv[1], int(sys.argv[2]), [int(a) for a in sys.argv[3:]]
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    spec = json.load(open(f"{config_dir}/config.json"))
    m = spec["model"]
    config = transformers.LlamaConfig(
        hidden_size=m["hidden_size"], intermediate_size=m["intermediate_size"], num_hidden_layers=m["num_hidden_layers"],
        num_attention_heads=m["num_attention_heads"], num_key_value_heads=m["num_key_value_heads"], head_dim=m["head_dim"],
        vocab_size=m["vocab_size"], max_position_embeddings=m["max_position_embeddings"], rms_norm_eps=m["rms_norm_eps"],
        rope_theta=m["rope_theta"], tie_word_embeddings=m["tie_word_embeddings"], attention_bias=m["attention_bias"],
    )
    model = transformers.LlamaForCausalLM(config).float()
    lora = spec["lora"]
    model = peft.get_peft_model(model, peft.LoraConfig(r=lora["r"], lora_alpha=lora["lora_alpha"], lora_dropout=lora["lora_dropout"],
                                                       target_modules=lora["target_modules"], task_type="CAUSAL_LM"))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    for length in lengths:
        ids = (torch.arange(BATCH * length, dtype=torch.int64) * 2654435761 % m["vocab_size"]).reshape(BATCH, length)

        def step():
            t = time.perf_counter()
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return time.perf_counter() - t

        step()
        times = sorted(step() for _ in range(3))
        print(json.dumps({"engine": f"PyTorch {torch.__version__.split('+')[0]} + PEFT {peft.__version__}", "batch": BATCH,
                          "seq_len": length, "threads": threads, "trainable": sum(p.numel() for p in params),
                          "attention": model.config._attn_implementation, "step_s": times[1]}), flush=True)


if __name__ == "__main__":
    main()
