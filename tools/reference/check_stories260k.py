#!/usr/bin/python3
"""Self-check of reference.py against the trained stories260K model's published outputs.

Compares with <shared>/models/stories260K/reference_outputs.json:
  * prompt [1, 403, 407, 261, 378]: top-5 ids per position equal, top-5 logits within 1e-4
  * 32 greedy ids after the prompt (decoding stops on id 1 or 2, as the reference did)
  * greedy_from_bos_only: 256 ids from BOS alone (Karpathy's temperature-0 sample)
  * greedy_prompt_Zoo: prompt [1] + its first 3 ids ("▁", "Z", "oo"), the rest is generated
With --moe it also checks the MoE models stored next to it (their reference_outputs.json come from
another independent numpy implementation): tiny-random-qwen3-moe (validates the Qwen3 q/k-norm,
explicit head_dim attention path), tiny-random-mixtral and stories260K-mixtral-4x.
Exits 0 when everything matches, 1 otherwise.

Usage: tools/reference/check_stories260k.py [--model-dir DIR] [--skip-long] [--moe]
"""

import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from reference import Model, topk  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(HERE))


def default_model_dir():
    for cand in (os.environ.get("DPSERVE_SHARED"), os.path.join(REPO_ROOT, "shared"),
                 os.path.join(REPO_ROOT, "..", "shared")):
        if cand and os.path.isdir(os.path.join(cand, "models", "stories260K")):
            return os.path.normpath(os.path.join(cand, "models", "stories260K"))
    return os.path.normpath(os.path.join(REPO_ROOT, "..", "shared", "models", "stories260K"))


def check_dir(model_dir, tol, skip_long):
    """Compare reference.py with model_dir/reference_outputs.json; returns True when all match."""
    with open(os.path.join(model_dir, "reference_outputs.json")) as f:
        ref = json.load(f)
    model = Model(model_dir)
    print(f"== {model_dir} ({model.arch})")
    ok = True
    stop = {1, 2}

    # 1. top-5 logits per prompt position
    prompt = ref["prompt_ids_with_bos"]
    logits = model.forward(prompt)
    max_diff = 0.0
    for entry in ref["prompt_logits_top5"]:
        pos = entry["position"]
        ids, vals = topk(logits[pos], 5)
        if ids != entry["top5_ids"]:
            print(f"FAIL position {pos}: top5 ids {ids} != {entry['top5_ids']}")
            ok = False
        diff = float(np.max(np.abs(logits[pos][entry["top5_ids"]] - np.array(entry["top5_logits"]))))
        max_diff = max(max_diff, diff)
    print(f"top-5 logits over {len(ref['prompt_logits_top5'])} positions: max |diff| = {max_diff:.3g} "
          f"(tolerance {tol})")
    if max_diff > tol:
        print("FAIL top-5 logits differ")
        ok = False

    # 2. greedy continuations
    cases = [(f"greedy ({len(ref['greedy']['ids'])} after prompt)", prompt, ref["greedy"]["ids"])]
    zoo = ref.get("greedy_prompt_Zoo")
    if zoo:  # llama2.c prints prompt tokens too: ids[:3] are the prompt "▁","Z","oo"
        cases.append(("greedy_prompt_Zoo", [1] + zoo["ids"][:3], zoo["ids"][3:]))
    if not skip_long and ref.get("greedy_from_bos_only"):
        cases.append((f"greedy_from_bos_only ({len(ref['greedy_from_bos_only']['ids'])})", [1],
                      ref["greedy_from_bos_only"]["ids"]))
    for label, p, expected in cases:
        t0 = time.time()
        got, margins = model.greedy(p, len(expected), stop)
        match = got == expected
        first_bad = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), None)
        print(f"{label}: {len(got)} ids, match={'yes' if match else 'NO'}"
              + ("" if match else f" (first mismatch at {first_bad})")
              + f", min top1-top2 margin {min(margins):.3g}, {time.time() - t0:.1f} s")
        ok &= match
    return ok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", default=default_model_dir())
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--skip-long", action="store_true", help="skip the 256-token greedy from BOS")
    ap.add_argument("--moe", action="store_true",
                    help="also cross-check the MoE models next to stories260K (tiny-random-qwen3-moe: "
                         "Qwen3 q/k-norm attention; tiny-random-mixtral; stories260K-mixtral-4x)")
    args = ap.parse_args()

    ok = check_dir(args.model_dir, args.tol, args.skip_long)
    if args.moe:
        base = os.path.dirname(args.model_dir)
        for name in ("tiny-random-qwen3-moe", "tiny-random-mixtral", "stories260K-mixtral-4x"):
            d = os.path.join(base, name)
            if os.path.isdir(d):
                ok &= check_dir(d, args.tol, True)
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
