"""Detection against look-alike prompts on the embedded demo model (issue 19 item 4; CPU, not CI).

    python tests/bench/lookalikes.py --out runs/lookalikes.json --threads 1

The model card's AUC compares memorized captions with plain held-out grammar captions, which never carry a
memorized-style suffix (``..., poster print NNNN``). This bench adds two negative groups that look like memorized
captions, and asks of each prompt whether it is a false alarm or a memorization trigger:

- ``memorized``: the 14 captions of ``memorized.jsonl`` (12 exact, 2 templates); the positives;
- ``heldout``: the plain held-out captions (``heldout_prompts.txt``; the card's negatives);
- ``A_fresh_suffix``: fresh two-object grammar captions (``core.demo.data.random_caption_spec``; in neither the
  training set nor the held-out list) with a memorized-style suffix (one of the 8 memorized labels or the template
  label) and a 4-digit number no training caption carries;
- ``B_number_changed``: the memorized captions with their number replaced by an untrained one.

For every prompt: the detector columns of ``sailscope.core.detect.score_prompt(..., detectors="all")`` (seeds 0-3,
step 1, 50-step DDIM schedule, guidance 7.5: ``wen``, ``sharpness`` with ``--hvp`` (default fd),
``anisotropy`` = 1 x norm + 2 x angle and its two terms) plus ``sharpness_exact`` (exact JVP, a second pass, the
model card's setting). For the memorized and look-alike groups also a full 50-step generation of the same 4
seeds and the demo's copy criterion (``core/demo/evaluate.py``): a generation *copies* when its RMSE to the
nearest memorized training image is below ``tau_copy`` (the card's ``eval.json``, 0.11). A look-alike prompt
with at least one copying seed is a memorization *trigger*, not a false alarm; AUCs are reported against each
whole group and against its non-copying prompts only.

Resumable: every finished prompt is a line of ``<out>.parts.jsonl``; rerunning skips them. ``--quick`` shrinks
every group for a smoke run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

GROUPS = ("memorized", "heldout", "A_fresh_suffix", "B_number_changed")
COLUMNS = ("wen", "sharpness", "sharpness_exact", "anisotropy", "anisotropy_norm", "anisotropy_alignment")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="demo", help="demo, or a demo-style model folder with train_info.json")
    p.add_argument("--out", default="runs/lookalikes.json")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--hvp", choices=["fd", "exact"], default="fd", help="sharpness column's HVP (default fd)")
    p.add_argument("--n-fresh", type=int, default=40, help="group A size (default 40)")
    p.add_argument("--per-memorized", type=int, default=2, help="group B: new numbers per memorized caption (2)")
    p.add_argument("--n-heldout", type=int, default=120, help="held-out prompts scored (default all 120)")
    p.add_argument("--tau", type=float, default=None, help="copy threshold (default: the card's eval.json tau_copy)")
    p.add_argument("--seed", type=int, default=19, help="seed of the look-alike captions")
    p.add_argument("--quick", action="store_true", help="4 memorized, 6 held-out, 4 + 4 look-alikes, 2 seeds")
    return p.parse_args(argv)


def model_folder(model: str) -> Path:
    if model == "demo":
        from sailscope.core.models import DEMO_MODEL_DIR

        return Path(DEMO_MODEL_DIR)
    return Path(model)


def build_groups(folder: Path, *, n_fresh: int, per_memorized: int, n_heldout: int, seed: int) -> dict[str, list[str]]:
    """The four prompt groups (deterministic for a seed; look-alikes from ``core.demo.data.lookalike_prompts``)."""
    from sailscope.core.demo import data as demo_data
    from sailscope.core.io.prompts import read_heldout, read_memorized

    info = json.loads((folder / "train_info.json").read_text(encoding="utf-8"))
    ds = demo_data.dataset_from_config(info["config"])
    look = demo_data.lookalike_prompts(ds, n_fresh=n_fresh, per_memorized=per_memorized, seed=seed)
    return {"memorized": [r["caption"] for r in read_memorized(folder)], "heldout": read_heldout(folder)[:n_heldout],
            **look}


def read_parts(path: Path) -> dict[tuple[str, str], dict]:
    from sailscope.core.io.files import read_jsonl

    return {(r["group"], r["prompt"]): r for r in read_jsonl(path)}


def score_one(pipe, prompt: str, *, seeds: int, hvp: str, generate_images: bool, memo_images, tau: float) -> dict:
    from sailscope.core.demo.evaluate import nearest_train_rmse
    from sailscope.core.detect import score_prompt
    from sailscope.core.sampling import GenerationSettings, run_generation

    t0 = time.perf_counter()
    s = score_prompt(pipe, prompt, seeds=seeds, hvp=hvp, detectors="all")
    row = {k: s.columns[k] for k in ("wen", "sharpness", "anisotropy", "anisotropy_norm", "anisotropy_alignment")}
    row["sharpness_exact"] = score_prompt(pipe, prompt, seeds=seeds, hvp="exact").score
    row["detect_s"] = time.perf_counter() - t0
    if generate_images:
        t1 = time.perf_counter()
        g = run_generation(pipe, GenerationSettings(prompt=prompt, seed=0, num_images=seeds, sharpness_at="none"))
        d = nearest_train_rmse(g.array, memo_images)
        row.update(memorized_rmse=d.tolist(), copies=int((d < tau).sum()), generate_s=time.perf_counter() - t1)
    return row


def summarize(groups: dict[str, list[str]], parts: dict[tuple[str, str], dict], tau: float, seeds: int) -> dict:
    from sailscope.core.demo.evaluate import roc_summary

    rows = {g: [parts[(g, p)] for p in prompts] for g, prompts in groups.items()}
    pos = rows["memorized"]
    out: dict = {}
    for g, rs in rows.items():
        entry: dict = {"n_prompts": len(rs)}
        if rs and "copies" in rs[0]:
            copies = np.array([r["copies"] for r in rs])
            entry.update(copy_rate=float(copies.sum() / (seeds * len(rs))), prompts_copying=int((copies > 0).sum()),
                         copying_prompts=[r["prompt"] for r in rs if r["copies"] > 0])
        if g != "memorized":
            sets = {"all": rs}
            if "copies" in (rs[0] if rs else {}):
                sets["not_copying"] = [r for r in rs if r["copies"] == 0]
                sets["copying"] = [r for r in rs if r["copies"] > 0]
            entry["detection"] = {
                name: {c: roc_summary([r[c] for r in pos], [r[c] for r in sel]) for c in COLUMNS}
                for name, sel in sets.items()}
        entry["median"] = {c: float(np.median([r[c] for r in rs])) if rs else None for c in COLUMNS}
        out[g] = entry
    return out


def markdown_table(summary: dict) -> str:
    lines = ["| negatives | n | prompts copying (copy rate) | " + " | ".join(COLUMNS) + " |",
             "|---|---|---|" + "---|" * len(COLUMNS)]
    for g in GROUPS[1:]:
        e = summary[g]
        copy = (f"{e['prompts_copying']} ({e['copy_rate']:.3f})" if "copy_rate" in e else "not generated")
        for name, det in e["detection"].items():
            n = det[COLUMNS[0]]["n_neg"]
            cells = [("–" if det[c]["auc"] is None else f"{det[c]['auc']:.3f} / {det[c]['tpr_at_1fpr']:.2f}")
                     for c in COLUMNS]
            label = g if name == "all" else f"{g}, {name.replace('_', ' ')}"
            lines.append(f"| {label} | {n} | {copy if name == 'all' else ''} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.quick:
        args.seeds, args.n_fresh, args.per_memorized, args.n_heldout = 2, 4, 1, 6
    from sailscope.core.threads import configure_threads

    configure_threads(str(args.threads))
    from sailscope.core.demo.evaluate import load_memorized
    from sailscope.core.io.files import append_jsonl, write_json_atomic
    from sailscope.core.models import load_pipeline

    t_start = time.perf_counter()
    folder = model_folder(args.model)
    tau = args.tau
    if tau is None:
        tau = float(json.loads((folder / "eval.json").read_text(encoding="utf-8"))["tau_copy"])
    groups = build_groups(folder, n_fresh=args.n_fresh, per_memorized=args.per_memorized,
                          n_heldout=args.n_heldout, seed=args.seed)
    if args.quick:
        groups["memorized"] = groups["memorized"][:4]
        groups["B_number_changed"] = groups["B_number_changed"][:4]
    out = Path(args.out)
    parts_path = out.with_name(out.name + ".parts.jsonl")
    parts = read_parts(parts_path)
    pipe = load_pipeline(str(folder), device="cpu", dtype="fp32")
    memo_images = np.stack([m["array"] for m in load_memorized(folder)])
    total = sum(len(v) for v in groups.values())
    done = sum((g, p) in parts for g, v in groups.items() for p in v)
    print(f"lookalikes: {total} prompts ({', '.join(f'{g} {len(v)}' for g, v in groups.items())}); "
          f"{done} already in {parts_path}; tau_copy {tau}", file=sys.stderr, flush=True)
    for g, prompts in groups.items():
        for p in prompts:
            if (g, p) in parts:
                continue
            row = score_one(pipe, p, seeds=args.seeds, hvp=args.hvp, generate_images=g != "heldout",
                            memo_images=memo_images, tau=tau)
            row.update(group=g, prompt=p)
            append_jsonl(parts_path, row)
            parts[(g, p)] = row
            done += 1
            print(f"[{done}/{total}] {g}: copies {row.get('copies', '-')} sharp {row['sharpness']:.3g} "
                  f"wen {row['wen']:.3g} aniso {row['anisotropy']:.3g} {p}", file=sys.stderr, flush=True)
    summary = summarize(groups, parts, tau, args.seeds)
    cpu = sum(r.get("detect_s", 0) + r.get("generate_s", 0) for r in parts.values()
              if (r["group"], r["prompt"]) in {(g, p) for g, v in groups.items() for p in v})
    result = {
        "command": "python tests/bench/lookalikes.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "model": str(args.model), "seeds": args.seeds, "hvp": args.hvp, "tau_copy": tau, "threads": args.threads,
        "steps": 50, "guidance": 7.5, "anisotropy_weights": [1.0, 2.0],
        "groups": {g: v for g, v in groups.items()}, "summary": summary,
        "scoring_seconds_total": cpu, "wall_s_this_run": time.perf_counter() - t_start,
        "table_markdown": markdown_table(summary),
    }
    write_json_atomic(out, result)
    print(result["table_markdown"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
