"""The leaderboard against scipy on hand-made records, its determinism, bad files, failed runs, the oracle tag
and the plots."""

from __future__ import annotations

import json
import math
import os
import random
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as st
from typer.testing import CliRunner

from nlbench.benchmark.config import RunConfig
from nlbench.benchmark.leaderboard import build_tables, plot_file, render_leaderboard
from nlbench.benchmark.records import scan_records, write_record
from nlbench.cli import app

# last-epoch accuracy per (noise, method) for seeds 0, 1, 2
ACC = {
    "sym20": {"erm": [0.80, 0.82, 0.79], "erm-meta": [0.83, 0.84, 0.80], "surrogate": [0.86, 0.85, 0.84],
              "clean-only": [0.70, 0.73, 0.69], "oracle": [0.90, 0.91, 0.905]},
    "sym50": {"erm": [0.60, 0.65, 0.62], "erm-meta": [0.66, 0.64, 0.65], "surrogate": [0.75, 0.78, 0.74],
              "clean-only": [0.70, 0.71, 0.69], "oracle": [0.88, 0.87, 0.89]},
    "pairflip45": {"erm": [0.55, 0.58, 0.50], "erm-meta": [0.60, 0.57, 0.58], "surrogate": [0.70, 0.65, 0.72],
                   "clean-only": [0.71, 0.69, 0.70], "oracle": [0.86, 0.85, 0.87]},
}
CLEAN = [0.93, 0.94, 0.92]
EPOCH_TIME = {"erm": 1.0, "erm-meta": 1.1, "surrogate": 1.5, "clean-only": 0.1, "oracle": 0.6}
RANKED = ["clean-only", "erm", "erm-meta", "surrogate"]  # sorted, oracle excluded


def make_record(method: str, noise: str, seed: int, acc: float | None, *, status: str = "ok",
                epoch_time: float = 1.0, epochs: int = 2, weights: bool = False) -> dict:
    """A schema-valid record: epoch 1 is 2 points better than the last (the best epoch), as with noisy labels."""
    cfg = RunConfig(method=method, noise=noise, dataset="synthetic", seed=seed, epochs=epochs, meta_size=40)
    history = []
    if acc is not None:
        for e in range(1, epochs + 1):
            h = {"epoch": e, "test_acc": acc + (0.02 if e == 1 else 0.0), "epoch_time_s": epoch_time,
                 "train_loss": 1.0, "lr": 0.05, "val_acc": None}
            if weights:
                h.update(w_clean_mean=0.9 - 0.01 * e, w_noisy_mean=0.5 - 0.1 * e)
            history.append(h)
    final = {} if status != "ok" else {"last_acc": acc, "best_acc": acc + 0.02, "best_epoch": 1,
                                       "last5_acc": acc + 0.01, "epochs_done": epochs}
    rate = 0.0 if noise == "clean" else int("".join(c for c in noise if c.isdigit())) / 100
    rec = {"schema": 1, "run_name": cfg.run_name(), "config_hash": cfg.hash(), "method": method, "noise": noise,
           "dataset": "synthetic", "model": cfg.model, "seed": seed, "noise_seed": seed, "status": status,
           "oracle": method == "oracle", "config": cfg.to_dict(), "env": {}, "noise_report": {"realised_rate": rate},
           "history": history, "final": final, "wall_time_s": 1.0}
    if status != "ok":
        rec["error"] = {"reason": "non-finite training loss (nan) in epoch 1", "epoch": 1}
    return rec


def all_records() -> list[dict]:
    recs = [make_record(m, noise, s, a, epoch_time=EPOCH_TIME[m], weights=m == "surrogate")
            for noise, by_m in ACC.items() for m, accs in by_m.items() for s, a in enumerate(accs)]
    recs += [make_record("erm", "clean", s, a) for s, a in enumerate(CLEAN)]
    recs.append(make_record("surrogate", "sym50", 3, 0.5, status="failed", epoch_time=1.5, epochs=2))
    return recs


@pytest.fixture
def results(tmp_path):
    for rec in all_records():
        write_record(tmp_path / "results", rec)
    return tmp_path / "results"


def pct(v: float) -> str:
    return f"{100 * v:.2f}"


def fmt_p(p: float) -> str:
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def holm(ps: list[float]) -> list[float]:
    """Independent Holm step-down: sort, multiply by (m - i), running max, cap at 1."""
    order = np.argsort(ps)
    out, running = [0.0] * len(ps), 0.0
    for i, j in enumerate(order):
        running = max(running, (len(ps) - i) * ps[j])
        out[j] = min(1.0, running)
    return out


def test_cells_match_scipy(results):
    records, problems = scan_records(results)
    assert problems == []
    t = build_tables(records)
    md = render_leaderboard(records, [])
    for noise, by_m in ACC.items():
        others = [m for m in RANKED if m != "erm"]
        raw = [st.ttest_rel(by_m[m], by_m["erm"]).pvalue for m in others]
        adjusted = dict(zip(others, holm(raw), strict=True))
        for method, accs in by_m.items():
            cell = t.cells[(t.cells["noise"] == noise) & (t.cells["method"] == method)].iloc[0]
            x = np.array(accs)
            lo, hi = st.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=st.sem(x))
            assert cell["n"] == 3
            assert cell["mean"] == pytest.approx(x.mean(), abs=1e-12)
            assert cell["std"] == pytest.approx(x.std(ddof=1), abs=1e-12)
            assert (cell["lo"], cell["hi"]) == pytest.approx((lo, hi), abs=1e-12)
            assert cell["best_mean"] == pytest.approx(x.mean() + 0.02, abs=1e-12)
            assert cell["cost"] == pytest.approx(EPOCH_TIME[method] / EPOCH_TIME["erm"], abs=1e-12)
            name = "oracle [ORACLE]" if method == "oracle" else method
            row = next(line for line in md.split(f"### {noise} ")[1].splitlines() if line.startswith(f"| {name} |"))
            assert f"{pct(x.mean())} ± {pct(x.std(ddof=1))}" in row
            assert f"[{pct(lo)}, {pct(hi)}]" in row
            assert f"{pct(x.mean() + 0.02)} ± {pct(x.std(ddof=1))}" in row  # best epoch (optimistic)
            assert f"| {EPOCH_TIME[method] / EPOCH_TIME['erm']:.2f} |" in row
            if method in adjusted:
                assert cell["p_holm"] == pytest.approx(adjusted[method], rel=1e-9)
                assert f"| {fmt_p(adjusted[method])} |" in row
                assert f"{100 * (x - np.array(by_m['erm'])).mean():+.2f}" in row
            else:
                assert math.isnan(cell["p_holm"])  # erm itself and the oracle are not in the family


def test_tied_with_best_bolded(results):
    records, _ = scan_records(results)
    md = render_leaderboard(records, [])
    for noise, by_m in ACC.items():
        contenders = {m: by_m[m] for m in RANKED}
        best = max(contenders, key=lambda m: (np.mean(contenders[m]), -RANKED.index(m)))
        others = [m for m in RANKED if m != best]
        adj = holm([st.ttest_rel(contenders[best], contenders[m]).pvalue for m in others])
        tied = {best} | {m for m, p in zip(others, adj, strict=True) if p >= 0.05}
        section = md.split(f"### {noise} ")[1].split("###")[0]
        for m in RANKED:
            row = next(line for line in section.splitlines() if line.startswith(f"| {m} |"))
            assert ("**" in row) == (m in tied), (noise, m, row)
        oracle_row = next(line for line in section.splitlines() if line.startswith("| oracle [ORACLE] |"))
        assert "**" not in oracle_row  # the oracle is never best, though it has the highest accuracy
        assert section.splitlines()[4].startswith(f"| {best} |")  # rows sorted by mean, best first


def test_ranks_friedman_cd_match_scipy(results):
    records, _ = scan_records(results)
    t = build_tables(records)
    noises = ["pairflip45", "sym20", "sym50"]
    means = np.array([[np.mean(ACC[n][m]) for m in RANKED] for n in noises])
    ranks = st.rankdata(-means, axis=1).mean(axis=0)
    chi2, p = st.friedmanchisquare(*means.T)
    k, n = len(RANKED), len(noises)
    cd = st.studentized_range.ppf(0.95, k, np.inf) / math.sqrt(2) * math.sqrt(k * (k + 1) / (6 * n))
    got = t.ranks.set_index("method")
    assert sorted(got.index) == RANKED  # the oracle is not ranked
    for m, r in zip(RANKED, ranks, strict=True):
        assert got.loc[m, "avg_rank"] == pytest.approx(r, abs=1e-12)
    assert got.loc["surrogate", "cost"] == pytest.approx(1.5, abs=1e-12)
    tests = t.tests.iloc[0]
    assert (tests["chi2"], tests["p"], tests["cd"]) == pytest.approx((chi2, p, cd), rel=1e-9)
    assert (tests["n_settings"], tests["k_methods"]) == (3, 4)
    md = render_leaderboard(records, [])
    assert f"Friedman test: χ² = {chi2:.3f}, p = {fmt_p(p)} (N = 3, k = 4)." in md
    assert f"CD = {cd:.3f}" in md
    ranks_table = md.split("### Ranks across settings")[1]
    order = [line.split(" | ")[0][2:] for line in ranks_table.splitlines() if line.startswith("| ")][1:]
    assert order == [RANKED[i] for i in np.argsort(ranks, kind="stable")]
    assert f"| surrogate | {ranks[RANKED.index('surrogate')]:.2f} |" in ranks_table
    assert "Not ranked: oracle [ORACLE] (read ground truth or the nominal noise rate)." in md


def test_failed_clean_reference_oracle_and_links(results):
    records, _ = scan_records(results)
    t = build_tables(records)
    cell = t.cells[(t.cells["noise"] == "sym50") & (t.cells["method"] == "surrogate")].iloc[0]
    assert (cell["n_runs"], cell["n"], cell["n_failed"]) == (4, 3, 1)
    assert cell["mean"] == pytest.approx(np.mean(ACC["sym50"]["surrogate"]), abs=1e-12)  # not averaged in
    assert t.cells.loc[(t.cells["noise"] != "sym50") | (t.cells["method"] != "surrogate"), "n_failed"].eq(0).all()
    md = render_leaderboard(records, [], plots_dir="results/plots")
    row = next(line for line in md.split("### sym50 ")[1].splitlines() if line.startswith("| surrogate |"))
    cols = row.split(" | ")
    assert (cols[2], cols[6]) == ("3", "1")  # n finished, failed
    assert "49 run records (48 ok, 1 failed)" in md
    clean = md.split("### Clean reference (no label noise)")[1].split("###")[0]
    x = np.array(CLEAN)
    assert f"| erm | {pct(x.mean())} ± {pct(x.std(ddof=1))} | 3 |" in clean
    assert md.count("oracle [ORACLE]") == 4  # three settings + "not ranked"; never a bare "| oracle |"
    assert "| oracle |" not in md
    assert "[README.md#noise](README.md#noise)" in md
    assert "seeds 0, 1, 2, 3" in md and "model `mlp`" in md and "2 epochs" in md and "clean meta set 40" in md
    assert f"(results/plots/{plot_file('synthetic__mlp__e2', 'sym20', 'acc')})" in md
    assert "(results/plots/synthetic__mlp__e2__sym20__weights.png)" in md
    assert "(results/plots/synthetic__mlp__e2__cd.png)" in md
    assert "no grid log covers these records" in md


def test_grid_log_wall_time_stated(results):
    records, _ = scan_records(results)
    hashes = [r["config_hash"] for r in records]
    log = {"name": "smoke", "config_hashes": hashes[:5] + ["000000000000"], "wall_time_s": 123.456,
           "cumulative_wall_time_s": 200.0, "invocations": 2, "finished": "2025-01-01T00:00:00+00:00",
           "runs_in_last_invocation": 4}
    md = render_leaderboard(records, [log])
    assert ("- grid `smoke` (5 of its 6 runs shown here): measured wall time 123.5 s (2.1 min) for the invocation that "
            "completed it (4 runs, finished 2025-01-01T00:00:00+00:00); cumulative 200.0 s over 2 invocation(s)."
            ) in md


def test_deterministic_bytes(results, tmp_path):
    records, _ = scan_records(results)
    first = render_leaderboard(records, [])
    shuffled = list(records)
    random.Random(3).shuffle(shuffled)
    assert render_leaderboard(shuffled, []) == first
    # the same records written in another order into another folder
    other = tmp_path / "other"
    recs = all_records()
    random.Random(5).shuffle(recs)
    for rec in recs:
        write_record(other, rec)
    assert render_leaderboard(scan_records(other)[0], []) == first


def test_cli_skips_bad_files_with_one_warning_each(results, tmp_path):
    runs = results / "runs"
    (runs / "garbage.json").write_text("{not json")
    (runs / "schema.json").write_text(json.dumps({"schema": 1, "method": "erm"}))
    out = tmp_path / "lb.md"
    res = CliRunner().invoke(app, ["leaderboard", "--results-dir", str(results), "--out", str(out)])
    assert res.exit_code == 0, res.output
    warnings = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(warnings) == 2
    assert warnings[0].startswith("warning: skipped ") and "garbage.json: unreadable" in warnings[0]
    assert "schema.json: schema: missing key" in warnings[1]
    md = out.read_text()
    assert "49 run records (48 ok, 1 failed)" in md
    readme = os.path.relpath(Path("README.md").resolve(), tmp_path)  # links are relative to the output file
    # no plots drawn in results/plots: none is linked
    assert md == render_leaderboard(scan_records(results)[0], [], plots_dir="results/plots", readme=readme,
                                    plot_exists=lambda name: False)


def test_cli_links_only_plots_that_exist(results, tmp_path):
    """A leaderboard written to another folder links the plots that exist, relative to itself, and says how to
    draw the missing ones instead of linking files that are not there."""
    slug = "synthetic__mlp__e2"
    plots = results / "plots"
    plots.mkdir()
    drawn = [plot_file(slug, "sym20", "acc"), plot_file(slug, "sym20", "weights")]
    for name in drawn:
        (plots / name).write_bytes(b"png")
    out = tmp_path / "elsewhere" / "lb.md"
    res = CliRunner().invoke(app, ["leaderboard", "--results-dir", str(results), "--out", str(out)])
    assert res.exit_code == 0, res.output
    md = out.read_text()
    links = re.findall(r"\]\(([^)]+\.png)\)", md)
    assert sorted(Path(link).name for link in links) == sorted(drawn)
    assert all((out.parent / link).is_file() for link in links)
    assert md.count("Plots: not drawn yet (`nlbench plot` draws the plots of these records).") == 2  # sym50, pf45
    assert "Critical-difference diagram: not drawn yet" in md
    # sym50 and pairflip45: accuracy and weights; the CD diagram
    assert "5 plot(s) not in" in res.stdout and "nlbench plot --results-dir" in res.stdout
    assert res.stderr == ""


def test_cli_errors_are_one_line(tmp_path):
    res = CliRunner().invoke(app, ["leaderboard", "--results-dir", str(tmp_path / "missing")])
    assert res.exit_code == 2
    assert res.stderr.strip().splitlines() == [f"error: results folder {tmp_path / 'missing'} does not exist"]


def test_plots_written_with_stable_names(results, tmp_path):
    from nlbench.benchmark.plots import cd_cliques, plot_all

    paths = plot_all(scan_records(results)[0], tmp_path / "plots")
    names = [p.name for p in paths]
    assert names == ["synthetic__mlp__e2__clean__acc.png", "synthetic__mlp__e2__pairflip45__acc.png",
                     "synthetic__mlp__e2__sym20__acc.png", "synthetic__mlp__e2__sym50__acc.png",
                     "synthetic__mlp__e2__pairflip45__weights.png", "synthetic__mlp__e2__sym20__weights.png",
                     "synthetic__mlp__e2__sym50__weights.png", "synthetic__mlp__e2__cd.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)
    # Demšar's bars: groups whose rank span is below the CD, maximal ones only
    assert cd_cliques([1.0, 1.5, 2.9, 3.2, 4.0], cd=1.0) == [(0, 1), (2, 3), (3, 4)]
    assert cd_cliques([1.0, 2.0, 3.0], cd=2.5) == [(0, 2)]
    assert cd_cliques([1.0, 3.0], cd=1.0) == []


def _rec(method, noise, seed, curve, *, val=None, section_epochs=2, **extra):
    history = [{"epoch": i + 1, "test_acc": a, "val_acc": None if val is None else val[i], "epoch_time_s": 1.0}
               for i, a in enumerate(curve)]
    cfg = {"dataset": "synthetic", "model": "mlp", "epochs": section_epochs, "method": method, "noise": noise,
           "seed": seed, "method_options": {}}
    return {"method": method, "noise": noise, "seed": seed, "dataset": "synthetic", "model": "mlp",
            "status": "ok", "config": cfg, "config_hash": f"{method}{noise}{seed}",
            "final": {"last_acc": curve[-1], "best_acc": max(curve)}, "history": history, **extra}


def test_selection_rules_flags_identity_and_escaping():
    recs = []
    for seed in (0, 1, 2):
        recs.append(_rec("erm", "sym50", seed, [0.6, 0.8, 0.5], val=[0.5, 0.7, 0.4]))
        recs.append(_rec("erm", "clean", seed, [0.8, 0.9, 0.9], val=[0.8, 0.85, 0.85]))
        recs.append(_rec("twin", "sym50", seed, [0.6, 0.8, 0.5], val=[0.5, 0.7, 0.4]))
        recs.append(_rec("co", "sym50", seed, [0.7, 0.75, 0.8 + seed / 100], val=[0.6, 0.7, 0.65],
                         uses_noise_rate=True))
        recs.append(_rec("evil|name\n# x", "sym50", seed, [0.1, 0.2, 0.3]))
    t = build_tables(recs)
    cell = t.cells.set_index(["noise", "method"])
    # noisy-val selection picks epoch 2 (val 0.7): test 0.8; best-epoch 0.8; last 0.5
    assert cell.loc[("sym50", "erm"), "val_mean"] == pytest.approx(0.8)
    assert cell.loc[("sym50", "erm"), "gap_mean"] == pytest.approx(0.3)
    assert cell.loc[("sym50", "co"), "val_mean"] == pytest.approx(0.75)
    assert cell.loc[("sym50", "erm"), "same_as"] == "twin" and cell.loc[("sym50", "co"), "same_as"] == ""
    assert not cell.loc[("sym50", "co"), "is_best"], "a method reading the noise rate is never best"
    md = render_leaderboard(recs)
    assert "**Memorisation indicator**" in md and "clean 0.00, sym50 30.00" in md
    assert "co [NOISE RATE]" in md and "`erm` = `twin`" in md
    assert "| evil\\|name # x |" in md and "\n# x" not in md
    assert "Not ranked: co [NOISE RATE]" in md


def test_method_label_leaves_the_presets_own_options_out():
    """fmnist-memorize gives the surrogate alpha=3: its runs are plain `surrogate`, the ablation row's w0 shows,
    and a run of that protocol without the preset's option is a separate entry, never merged with it."""
    from nlbench.benchmark.config import RunConfig
    from nlbench.benchmark.leaderboard import method_label

    def rec(method, **opts):
        cfg = RunConfig.from_preset("fmnist-memorize", method=method, noise="sym50")
        cfg.method_options = opts
        return {"method": method, "dataset": cfg.dataset, "model": cfg.model, "config": cfg.to_dict()}

    assert method_label(rec("surrogate", alpha=3.0)) == "surrogate"
    assert method_label(rec("surrogate", alpha=3.0, w0=0.5)) == "surrogate[w0=0.5]"
    assert method_label(rec("surrogate-no-sign", alpha=3.0, w0=0.5)) == "surrogate-no-sign[w0=0.5]"
    assert method_label(rec("surrogate")) == 'surrogate[alpha="built-in"]'
    assert method_label(rec("surrogate", alpha=1.0)) == "surrogate[alpha=1.0]"
    assert method_label(rec("meta-reweight", alpha=1.0, w0=1.0)) == "meta-reweight"
    assert method_label(rec("erm")) == "erm"
    short = RunConfig(method="surrogate", noise="sym50", method_options={"alpha": 3.0})
    assert method_label({"method": "surrogate", "dataset": short.dataset, "model": short.model,
                         "config": short.to_dict()}) == "surrogate[alpha=3.0]"


def test_a_method_without_a_result_somewhere_is_left_out_of_the_ranks_not_the_settings():
    """l2rw diverging on one noise must not shrink the ranking of the others to the settings it survived."""
    from nlbench.benchmark.leaderboard import build_tables, render_leaderboard

    recs = []
    for noise, base in (("sym20", 0.8), ("sym40", 0.7), ("pairflip40", 0.6)):
        for seed in (0, 1):
            recs += [make_record("erm", noise, seed, base), make_record("gce", noise, seed, base + 0.05),
                     make_record("sce", noise, seed, base + 0.02)]
            recs.append(make_record("l2rw", noise, seed, None if noise == "sym40" else base + 0.1,
                                    status="failed" if noise == "sym40" else "ok"))
    t = build_tables(recs)
    assert set(t.ranks["method"]) == {"erm", "gce", "sce"} and int(t.tests.iloc[0]["n_settings"]) == 3
    text = render_leaderboard(recs)
    assert "Not ranked, for lack of a result in some settings (every run failed there): l2rw (1 of 3)." in text
    assert "Ranks over the 3 noisy settings where all 3 ranked methods have a result" in text
