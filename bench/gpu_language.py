"""Expected per-query latency of the ChatRex-7B language model, from a Llama-2-7B-sized random-weight decoder.

ChatRex-7B's cost is its 7B decoder over the multimodal context: 576 image tokens + 100 objects x 2 tokens
(``<objK><roi>``) + about 40 prompt tokens, then a short index answer (about 60 new tokens). Random weights cost
the same as trained ones, so a transformers ``LlamaForCausalLM`` of the Llama-2-7B shape in bf16 on the GPU gives
the latency to expect: prefill of the context (CUDA events, median of >= 20) and greedy decoding of the answer
(per token and per query). The vision encoders (CLIP-L/336, ConvNeXt-L/768) and the RoI box encoder come on top
and are not measured here. Needs a CUDA GPU and transformers; without them it exits with status 2 and says so.

    PYTHONPATH=. python bench/gpu_language.py [--repeats 20] [--context 816] [--new-tokens 60]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

from _common import time_cuda

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "gpu_language.json"
LLAMA2_7B = {
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32000 + 104,
    "max_position_embeddings": 4096,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--context", type=int, default=576 + 200 + 40, help="tokens before generation")
    parser.add_argument("--new-tokens", type=int, default=60)
    args = parser.parse_args()
    try:
        import torch
        from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM
    except ImportError as error:
        print(
            f"gpu_language: needs torch with CUDA and transformers (pip install chatrex_ros[chatrex]): {error}",
            file=sys.stderr,
        )
        return 2
    if not torch.cuda.is_available():
        print("gpu_language: no CUDA GPU visible; run it on a GPU machine", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(LlamaConfig(**LLAMA2_7B, torch_dtype=torch.bfloat16)).to(torch.bfloat16).eval()
    context = torch.randint(0, 32000, (1, args.context), device="cuda")
    generation = GenerationConfig(
        max_new_tokens=args.new_tokens,
        min_new_tokens=args.new_tokens,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )

    with torch.inference_mode():
        prefill = time_cuda(torch, lambda: model(context, use_cache=True), args.repeats, args.warmup)
        query = time_cuda(
            torch, lambda: model.generate(context, generation_config=generation), max(5, args.repeats // 4), 1
        )
    prefill_ms, query_ms = prefill["median_ms"], query["median_ms"]
    result = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "shape": "Llama-2-7B (random weights), bf16",
        "context_tokens": args.context,
        "new_tokens": args.new_tokens,
        "prefill_ms": prefill_ms,
        "query_ms": query_ms,
        "decode_ms_per_token": (query_ms - prefill_ms) / args.new_tokens,
        "peak_mem_gib": max(prefill["peak_mem_gib"], query["peak_mem_gib"]),
    }
    print(f"| GPU | context | prefill ms | {args.new_tokens} new tokens: query ms | ms/token | peak GiB |")
    print("|---|---|---|---|---|---|")
    print(
        f"| {result['gpu']} | {args.context} | {prefill_ms:.1f} | {query_ms:.1f} | "
        f"{result['decode_ms_per_token']:.2f} | {result['peak_mem_gib']:.1f} |"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
