"""What the memorisation leaderboard shows, from its records: the surrogate against erm, erm-meta, finetune and
mwnet per noise (mean paired difference over shared seeds, paired t-test, Holm-adjusted over the noises of each
comparison), and the weight trajectories of the reweighting methods (mean clean and noisy weight per epoch,
averaged over seeds), to see whether the three phases show. Writes ``results/protocol/summary.md``::

    .venv/bin/python benchmarks/memorize_summary.py [--results-dir results]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pandas as pd

from nlbench.benchmark import stats
from nlbench.benchmark.config import RunConfig
from nlbench.benchmark.leaderboard import md_table, method_label, noise_sort_key, protocol_of
from nlbench.benchmark.records import scan_records

OUT = Path(__file__).resolve().parent.parent / "results" / "protocol" / "summary.md"
RIVALS = ("erm", "erm-meta", "finetune", "mwnet", "mwnet[normalize=true]", "meta-reweight")
#: the ablation study: the full method and its ablations at the same options (w0 = 0.5, the preset's alpha)
ABLATED = "surrogate[w0=0.5]"
ABLATIONS = ("surrogate-no-center[w0=0.5]", "surrogate-no-shift[w0=0.5]", "surrogate-no-sign[w0=0.5]")
REWEIGHTERS = ("surrogate", "meta-reweight", "mwnet", "mwnet[normalize=true]", "l2rw", ABLATED, *ABLATIONS)


def memorize_records(results_dir: str) -> list[dict]:
    want = protocol_of({"config": RunConfig.from_preset("fmnist-memorize").to_dict(), "dataset": "", "model": ""})
    records, _ = scan_records(results_dir)
    return [r for r in records if protocol_of(r) == want]


def comparisons(records: list[dict], subject: str = "surrogate", rivals: tuple[str, ...] = RIVALS) -> list[str]:
    """``subject`` against each rival per noise: mean paired difference, Holm-adjusted paired t-test p."""
    acc = {}
    for r in records:
        if r["status"] == "ok":
            acc.setdefault((method_label(r), r["noise"]), {})[r["seed"]] = r["final"]["last_acc"]
    noises = sorted({n for _, n in acc if n != "clean"}, key=noise_sort_key)
    lines = ["| noise | " + " | ".join(f"{subject} − {m} (points), p (Holm)" for m in rivals) + " |",
             "|---|" + "---:|" * len(rivals)]
    cells = {}
    for rival in rivals:
        ps, keys = [], []
        for noise in noises:
            a = pd.Series(acc.get((subject, noise), {}), dtype=float)
            b = pd.Series(acc.get((rival, noise), {}), dtype=float)
            shared = a.index.intersection(b.index)
            if len(shared) == 0:
                continue
            d = float(np.mean(a[shared] - b[shared]))
            _, p, n = stats.paired_test(a[shared], b[shared])
            cells[(rival, noise)] = [d, p, n]
            ps.append(p)
            keys.append(noise)
        finite = [i for i, p in enumerate(ps) if math.isfinite(p)]
        adjusted = stats.holm([ps[i] for i in finite]) if finite else []
        for i, p_adj in zip(finite, adjusted, strict=True):
            cells[(rival, keys[i])][1] = float(p_adj)
    for noise in noises:
        row = [noise]
        for rival in rivals:
            c = cells.get((rival, noise))
            if c is None:
                row.append("—")
            else:
                p = "—" if not math.isfinite(c[1]) else (f"{c[1]:.1e}" if c[1] < 1e-3 else f"{c[1]:.3f}")
                row.append(f"{100 * c[0]:+.2f}, p = {p} (n = {c[2]})")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def trajectories(records: list[dict]) -> list[str]:
    out = []
    for method in REWEIGHTERS:
        for noise in ("sym50", "pairflip45"):
            runs = [r for r in records if method_label(r) == method and r["noise"] == noise and r["status"] == "ok"]
            if not runs:
                continue
            n_ep = min(len(r["history"]) for r in runs)
            clean = np.mean([[h["w_clean_mean"] for h in r["history"][:n_ep]] for r in runs], axis=0)
            noisy = np.mean([[h["w_noisy_mean"] for h in r["history"][:n_ep]] for r in runs], axis=0)
            auroc = np.mean([[h["w_auroc"] for h in r["history"][:n_ep]] for r in runs], axis=0)
            lo = int(np.argmin(noisy))
            out.append([f"`{method}`", noise, str(len(runs)), f"{clean[0]:.3f} → {clean[-1]:.3f}",
                        f"{noisy[0]:.3f} → min {noisy[lo]:.3f} (epoch {lo + 1}) → {noisy[-1]:.3f}",
                        f"{auroc[0]:.3f} → {auroc[-1]:.3f}"])
    return md_table(["method", "noise", "seeds", "clean mean weight, epoch 1 → last",
                     "noisy mean weight, epoch 1 → min → last", "weight AUROC, epoch 1 → last"], out, right_from=2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results-dir", default="results")
    args = ap.parse_args()
    records = memorize_records(args.results_dir)
    text = ["# The memorisation protocol: what the records show", "",
            f"Generated by `benchmarks/memorize_summary.py` from {len(records)} `fmnist-memorize` records. "
            "Last-epoch test accuracy; differences are means over the seeds both methods have.", "",
            "## The surrogate against its rivals", "", *comparisons(records), "",
            "## The ablation study (all four at w0 = 0.5 and the preset's alpha)", "",
            *comparisons(records, ABLATED, ABLATIONS), "",
            "## Weight trajectories (mean over seeds)", "", *trajectories(records), ""]
    OUT.write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
