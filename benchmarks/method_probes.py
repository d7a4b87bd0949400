"""Four probes quoted in docs/methods.md, on the embedded model with one torch thread:

    python benchmarks/method_probes.py cgce-sweep      # how far CGCE's refinement must go: star drawn, colour kept
    python benchmarks/method_probes.py trce-gap        # why TRCE's triplet loss is zero at the reference's margin
    python benchmarks/method_probes.py many-saliency   # SCORE on the four-concept set, with its mask and without
    python benchmarks/method_probes.py many-budget     # the same set: what holds SCORE's erasure of four back

cgce-sweep erases star with CGCE under each refinement setting and judges 4 seeds of six star prompts and three
others. trce-gap samples 8 trajectories of the star prompts and prints, at four of their early points, the two
squared distances of TRCE's hinge (to f_safe and to f_unsafe) and the squared guidance of the concept and of its
anchor. many-saliency erases the many-concepts protocol's set of four in one run with `score` as it was in
session 24 (its iterations shared by the concepts), and so with `saliency = false`, and judges the set's prompts at
its seeds (the curve's images): acc_e per concept, acc_s. many-budget does the same for that `score`, then without
its adversary, then with the plain preservation, and for `score` as registered (100 iterations a concept).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

STAR = ["a star", "a red star", "a striped blue star", "a picture of a star", "a star in green", "a purple star"]
OTHERS = ["a circle", "a red square", "a triangle in blue"]
COLOURS = {1: "red", 2: "blue", 4: "green", 5: "purple"}  # the colour each coloured star prompt asks for
SWEEP = [{"target": 0.05, "step": 0.02, "steps": 20}, {"target": 0.001, "step": 0.05, "steps": 40},
         {"target": 0.01, "step": 0.1, "steps": 20}, {}]


def cgce_sweep() -> None:
    from score_erasure.backends import denoiser_for
    from score_erasure.generate import generate
    from score_erasure.methods import get_method
    from score_erasure.models import load_pipeline
    from score_erasure.toyworld.judge import WorldJudge
    from score_erasure.toyworld.specs import world_spec

    judge, method, spec = WorldJudge.load(), get_method("cgce"), world_spec("star")
    print("| refinement | star on star prompts | star on other prompts | colour kept on star prompts |")
    print("|---|---|---|---|")
    for overrides in SWEEP:
        pipe = load_pipeline("embedded")
        method.fit(denoiser_for(pipe), spec, method.config(overrides), show_progress=False)
        images = generate(pipe, STAR + OTHERS, list(range(4)), show_progress=False)
        verdicts = judge.judge(images.reshape(-1, *images.shape[2:]))
        star = (np.array(verdicts.shape) == "star").reshape(len(STAR + OTHERS), 4)
        colour = np.array(verdicts.colour).reshape(len(STAR + OTHERS), 4)
        kept = np.mean([colour[i] == c for i, c in COLOURS.items()])
        print(f"| {json.dumps(method.config(overrides).model_dump(include={'target', 'step', 'steps'}))} | "
              f"{star[:len(STAR)].mean():.3f} | {star[len(STAR):].mean():.3f} | {kept:.3f} |")


@torch.no_grad()
def trce_gap() -> None:
    from score_erasure.backends import denoiser_for
    from score_erasure.methods.trce import TRCEConfig, trajectory_points
    from score_erasure.models import load_pipeline
    from score_erasure.toyworld.specs import world_spec

    d, spec, cfg = denoiser_for(load_pipeline("embedded")), world_spec("star"), TRCEConfig()
    pick = [i % 4 for i in range(8)]
    c, a, u = d.encode(spec.target_prompts[:4])[pick], d.encode(spec.anchor_prompts[:4])[pick], d.unconditional()
    z, timesteps = trajectory_points(d, c, cfg, 0, cfg.early)
    print("| point | t | hinge gap, cond (min, max) | squared guidance: concept, anchor |\n|---|---|---|---|")
    for k in (0, 5, 12, 24):
        x = z[k]
        e_c, e_a, e_u = d.predict(torch.cat([x, x, x]), timesteps[k], torch.cat([c, a, u.expand_as(c)])).chunk(3)
        f_safe, f_unsafe = e_a + cfg.amplify * (e_a - e_u), e_c + cfg.amplify * (e_c - e_u)
        gap = (e_c - f_safe).pow(2).mean((1, 2, 3)) - (e_c - f_unsafe).pow(2).mean((1, 2, 3))
        print(f"| {k} | {int(timesteps[k])} | {gap.min():.2f}, {gap.max():.2f} | "
              f"{(e_c - e_u).pow(2).mean():.4f}, {(e_a - e_u).pow(2).mean():.4f} |")


SHARED = {"iterations_per_concept": False}  # 100 iterations for all the concepts together (score before session 25)
MANY = {"many-saliency": [SHARED, {**SHARED, "saliency": False}],
        "many-budget": [SHARED, {**SHARED, "adversarial": False},
                        {**SHARED, "pres_anchors": False, "pres_batch": 1, "lambda_pres": 2.0}, {}]}


def many_concepts(configs: list[dict], k: str = "4") -> None:
    """`score` under each override on the protocol's set of k concepts, erased in one run."""
    import time

    from score_erasure.evaluation.cache import ImageCache
    from score_erasure.evaluation.evaluate import expectation_hits, set_prompts
    from score_erasure.evaluation.judges import load_judge
    from score_erasure.evaluation.protocol import load_sets
    from score_erasure.jobs.bench import ErasureRequest, eraser
    from score_erasure.models import resolve_model
    from score_erasure.spec import mentions

    sets = load_sets()
    concept_set, base, judge = sets.sets[k], resolve_model("embedded"), load_judge(sets.judge)
    concepts, n = concept_set.concepts, len(concept_set.erased)
    header = " | ".join(f"acc_e {c}" for c in concepts)
    print(f"| score | {header} | acc_e | acc_s | erase s |\n|---|{'---|' * (len(concepts) + 3)}")
    for overrides in configs:
        request = ErasureRequest("many", ",".join(concepts), "embedded", base.spec(list(concepts)))
        start = time.time()
        pipe = eraser("score", overrides)(base.load(), request)
        seconds = time.time() - start
        images = ImageCache(None).images(pipe, "probe", sets.sampling, set_prompts(concept_set), list(sets.seeds),
                                         show_progress=False)
        erased = expectation_hits(judge, images[:n], concept_set.erased)
        rows = [[i for i, r in enumerate(concept_set.erased) if mentions(r.prompt, [c])] for c in concepts]
        per = [erased[r].mean() for r in rows]
        kept = expectation_hits(judge, images[n:], concept_set.kept).mean()
        print(f"| {json.dumps(overrides)} | {' | '.join(f'{v:.3f}' for v in per)} | {erased.mean():.3f} | {kept:.3f} "
              f"| {seconds:.0f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("probe", choices=["cgce-sweep", "trce-gap", *MANY])
    args = parser.parse_args()
    from score_erasure.options import set_run_options

    set_run_options(threads=1)
    if args.probe in MANY:
        many_concepts(MANY[args.probe])
    else:
        {"cgce-sweep": cgce_sweep, "trce-gap": trce_gap}[args.probe]()


if __name__ == "__main__":
    main()
