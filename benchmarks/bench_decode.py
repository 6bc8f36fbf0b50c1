"""Decoding cost with the bundled CLIP: encoding a 200-concept bank (7 templates each) and scoring
1,000 directions against it; plus, on a demo workspace, the mean edit's water − land contrast.

    python -m benchmarks.bench_decode [--workspace DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    from hsfm_core.analysis.decode import encode_concepts, read_concepts
    from hsfm_core.demo.build import DEMO_CLIP

    parser = argparse.ArgumentParser()
    parser.add_argument("--workspace", help="a built demo workspace, for the contrast of its HSFM run")
    args = parser.parse_args()
    encoder = {"model": f"local-dir:{DEMO_CLIP}", "pretrained": None}
    base, _ = read_concepts()
    concepts = (base * (200 // len(base) + 1))[:200]
    concepts = [f"{c} {i}" for i, c in enumerate(concepts)]  # 200 distinct prompts
    encode_concepts(encoder, ["warm-up"], ["x"])  # model load, not part of the encoding time
    t0 = time.perf_counter()
    bank = encode_concepts(encoder, concepts, ["c"] * 200)
    t_encode = time.perf_counter() - t0
    directions = np.random.default_rng(0).normal(size=(1000, bank.embeddings.shape[1]))
    t1 = time.perf_counter()
    bank.scores(directions)
    t_score = time.perf_counter() - t1
    result = {"encode_200_concepts_s": t_encode, "score_1000_directions_s": t_score}
    print(f"encode 200 concepts × 7 templates: {t_encode:.2f} s; score 1,000 directions: {1000 * t_score:.1f} ms")
    if args.workspace:
        from hsfm_core.analysis.decode import clip_space_map, decode_run
        from hsfm_core.features import FeatureStore
        from hsfm_core.runs import list_runs, load_support

        store = FeatureStore.open(args.workspace)
        run = next(r for r in list_runs(args.workspace) if r["method"] == "hsfm")
        to_clip, text_encoder = clip_space_map(store)
        bank = encode_concepts(text_encoder, *read_concepts())
        decoded = decode_run(store, load_support(run), bank, to_clip, store.class_names, top=5)
        for c in decoded["per_class"]:
            print(f"{c['name']}: water − land contrast of the mean edit {c['contrast']:+.3f}; top "
                  + ", ".join(f"{t['concept']} ({t['cosine']:+.2f})" for t in c["top"]))
        result["per_class"] = decoded["per_class"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
