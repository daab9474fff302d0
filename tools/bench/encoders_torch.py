"""Times each Emotion-LLaMA encoder's forward pass in PyTorch at its real size (random weights), f32, with
the given thread count: the reference side of `just bench` (the candle side is examples/encoder_bench.rs).

Prints one JSON object: {"<encoder>": {"median_s": ..., "runs": [...], "input": "..."}}.
Uses the pinned venv of tools/fixtures (torch 2.5.1, transformers 4.46.3, timm 1.0.12). `beats-iter3-plus`
(VideoLLaMA2-AV's audio tower) is imported from a VideoLLaMA2 checkout of the `audio_visual` branch given with
--vl2-src (the directory holding videollama2/); it is skipped without one.
    python tools/bench/encoders_torch.py --threads 2 --repeats 3 [--vl2-src /path/to/VideoLLaMA2]
"""

import argparse
import json
import statistics
import time

import torch


def hubert_large():
    from transformers import HubertConfig, HubertModel

    # chinese-hubert-large / hubert-large-ll60k: layer-norm extractor, stable layer norm, 24 x 1024.
    cfg = HubertConfig(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
        feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True, feat_proj_layer_norm=True,
    )
    return HubertModel(cfg).eval(), (torch.randn(1, 160000),), "10 s of 16 kHz audio"


def vit_mae_large():
    from transformers import ViTMAEConfig, ViTMAEModel

    cfg = ViTMAEConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096, mask_ratio=0.0)
    return ViTMAEModel(cfg).eval(), (torch.randn(16, 3, 224, 224),), "16 face crops at 224x224"


def videomae_large():
    from transformers import VideoMAEConfig, VideoMAEModel

    cfg = VideoMAEConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
    return VideoMAEModel(cfg).eval(), (torch.randn(1, 16, 3, 224, 224),), "one 16-frame clip at 224x224"


def eva_vit_g():
    from timm.models.eva import Eva

    # LAVIS create_eva_vit_g: 448 px, patch 14, 39 blocks of 1408, 16 heads, MLP 6144, q/v bias.
    m = Eva(img_size=448, patch_size=14, embed_dim=1408, depth=39, num_heads=16, mlp_ratio=4.3637,
            qkv_bias=True, qkv_fused=True, num_classes=0, global_pool="", use_abs_pos_emb=True)
    return m.eval(), (torch.randn(1, 3, 448, 448),), "one frame at 448x448"


def siglip_so400m():
    from transformers import SiglipVisionConfig, SiglipVisionModel

    # VideoLLaMA2's tower: google/siglip-so400m-patch14-384's vision_config; no pooling head (emollama
    # never runs it: the feature is a hidden state).
    cfg = SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                             image_size=384, patch_size=14, vision_use_head=False)
    return SiglipVisionModel(cfg).eval(), (torch.randn(16, 3, 384, 384),), "16 frames at 384x384"


VL2_SRC = None


class _BeatsFeatures(torch.nn.Module):
    """`extract_features` on the fbank with VideoLLaMA2's all-False padding mask."""

    def __init__(self, beats):
        super().__init__()
        self.beats = beats

    def forward(self, fbank):
        return self.beats.extract_features(fbank, padding_mask=torch.zeros(fbank.shape, dtype=torch.bool))[0]


def beats_iter3_plus():
    import os
    import sys

    sys.path.insert(0, os.path.join(VL2_SRC, "videollama2", "model"))
    from beats.BEATs import BEATs, BEATsConfig

    # BEATsConfig() defaults (what VideoLLaMA2-AV builds); the fbank of 30 s: 2998 frames of 128 bins.
    return _BeatsFeatures(BEATs(BEATsConfig())).eval(), (torch.randn(1, 2998, 128),), "30 s of 16 kHz audio as 2998 fbank frames (1496 tokens)"


MODELS = {"hubert-large": hubert_large, "vit-mae-large": vit_mae_large, "videomae-large": videomae_large, "eva-vit-g": eva_vit_g,
          "siglip-so400m": siglip_so400m, "beats-iter3-plus": beats_iter3_plus}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--vl2-src", default=None, help="VideoLLaMA2 checkout (audio_visual branch), for beats-iter3-plus")
    # f32; bf16 (model and input in bfloat16); autocast (f32 model, CPU autocast to bf16 for matmuls,
    # which is what emollama's bf16 mode does).
    ap.add_argument("--dtype", choices=["f32", "bf16", "autocast"], default="f32")
    a = ap.parse_args()
    global VL2_SRC
    VL2_SRC = a.vl2_src
    if a.only is None:
        a.only = [m for m in MODELS if m != "beats-iter3-plus" or VL2_SRC]
    elif "beats-iter3-plus" in a.only and not VL2_SRC:
        ap.error("beats-iter3-plus needs --vl2-src")
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    out = {}
    for name in a.only:
        model, inputs, what = MODELS[name]()
        if a.dtype == "bf16":
            model = model.to(torch.bfloat16)
            inputs = tuple(x.to(torch.bfloat16) for x in inputs)
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.dtype == "autocast")
        with torch.inference_mode(), autocast:
            model(*inputs)  # warm-up
            runs = []
            for _ in range(a.repeats):
                t0 = time.perf_counter()
                model(*inputs)
                runs.append(time.perf_counter() - t0)
        out[name] = {"median_s": statistics.median(runs), "runs": runs, "input": what, "torch": torch.__version__, "dtype": a.dtype}
        del model
    print(json.dumps(out))


if __name__ == "__main__":
    main()
