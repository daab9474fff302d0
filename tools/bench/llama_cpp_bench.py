"""llama.cpp (llama-cpp-python) on the same GGUF, prompt, thread count and token budget as
examples/bench_llm.rs: prompt processing and greedy decoding speed, median of 3. Prints one JSON line.
Usage: llama_cpp_bench.py GGUF THREADS NEW_TOKENS [MODE_LABEL]"""
import json
import os
import sys
import time

import numpy as np
from llama_cpp import Llama

PROMPT = "Describe the facial expression of a person who has just heard good news."
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def main():
    path, threads, new_tokens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    mode = sys.argv[4] if len(sys.argv) > 4 else "q4_1"
    m = Llama(model_path=path, n_ctx=512, n_threads=threads, n_threads_batch=threads, verbose=False)
    text = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n"
    ids = m.tokenize(text.encode(), add_bos=False, special=True)

    def run(n):
        m.reset()
        t = time.perf_counter()
        m.eval(ids)
        nxt = int(np.argmax(m.scores[m.n_tokens - 1]))
        prefill = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(n):
            m.eval([nxt])
            nxt = int(np.argmax(m.scores[m.n_tokens - 1]))
        return prefill, time.perf_counter() - t

    run(4)
    runs = sorted((run(new_tokens) for _ in range(3)), key=lambda r: r[0] + r[1])
    prefill, decode = runs[1]
    print(json.dumps({"engine": "llama.cpp", "mode": mode, "threads": threads, "prompt_tokens": len(ids),
                      "new_tokens": new_tokens, "prefill_tok_s": len(ids) / prefill, "decode_tok_s": new_tokens / decode}))


if __name__ == "__main__":
    main()
