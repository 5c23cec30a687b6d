"""The accuracy and weights figures: one style per method in every figure, legends outside the axes, seed bands,
one weights panel per reweighting method and titles written for people."""

from __future__ import annotations

import numpy as np
import pytest

from nlbench.benchmark.plots import (
    _curves,
    accuracy_figure,
    plot_all,
    protocol_title,
    style_of,
    style_table,
    weights_figure,
)


def rec(method: str, seed: int, *, noise: str = "sym50", epochs: int = 4, weights: bool = False,
        dataset: str = "fashion-mnist", model: str = "lenet", oracle: bool = False) -> dict:
    """A minimal record (enough for the plots): accuracy rising with the epoch, a per-seed offset."""
    history = []
    for e in range(1, epochs + 1):
        h = {"epoch": e, "test_acc": 0.5 + 0.05 * e + 0.01 * seed + 0.001 * len(method), "epoch_time_s": 1.0}
        if weights:
            h.update(w_clean_mean=0.9 + 0.01 * seed, w_noisy_mean=0.3 - 0.02 * e)
        history.append(h)
    cfg = {"dataset": dataset, "model": model, "epochs": epochs, "method": method, "noise": noise, "seed": seed,
           "method_options": {}}
    return {"method": method, "noise": noise, "seed": seed, "dataset": dataset, "model": model, "status": "ok",
            "oracle": oracle, "config": cfg, "config_hash": f"{method}{noise}{seed}",
            "final": {k: history[-1]["test_acc"] for k in ("last_acc", "best_acc", "last5_acc")}, "history": history}


def one_setting(records: list[dict], keys: list[str]) -> dict:
    curves = _curves(records, keys)
    assert len(curves) == 1
    return next(iter(curves.values()))


def test_plot_styles_are_distinct_for_40_methods_and_oracles_stay_dashed():
    labels = [f"method-{i:02d}" for i in range(39)] + ["oracle"]
    styles = style_table([{"method": m} for m in labels])
    seen = {(s.colour, str(s.for_oracle(m == "oracle").linestyle), s.for_oracle(m == "oracle").marker)
            for m, s in styles.items()}
    assert len(seen) == 40, "two methods share (colour, line style, marker)"
    assert len({style_of(i) for i in range(160)}) == 160
    assert all(style_of(i).linestyle != "--" for i in range(160)), "dashed is the oracle's alone"
    assert styles["oracle"].for_oracle(True).linestyle == "--"
    # the first ten methods differ in colour alone already
    assert len({style_of(i).colour for i in range(20)}) == 20


def test_plot_a_method_has_one_style_in_every_figure():
    records = [rec(m, s, noise=n) for m in ("erm", "surrogate-no-sign", "gce") for s in (0, 1)
               for n in ("sym20", "sym50")]
    records = [r for r in records if not (r["method"] == "gce" and r["noise"] == "sym20")]  # gce only in sym50
    styles = style_table(records)
    per_figure = []
    for noise in ("sym20", "sym50"):
        methods = one_setting([r for r in records if r["noise"] == noise], ["test_acc"])
        fig = accuracy_figure(methods, styles, f"t {noise}")
        ax = fig.axes[0]
        per_figure.append({line.get_label(): (line.get_color(), line.get_linestyle(), line.get_marker())
                           for line in ax.get_lines()})
    assert per_figure[0]["erm"] == per_figure[1]["erm"]
    assert per_figure[0]["surrogate-no-sign"] == per_figure[1]["surrogate-no-sign"]
    assert per_figure[0]["erm"] != per_figure[0]["surrogate-no-sign"]
    assert len(set(per_figure[1].values())) == 3


def test_plot_accuracy_legend_sits_right_of_the_axes_with_25_methods():
    records = [rec(f"m{i:02d}", s) for i in range(25) for s in (0, 1)] + [rec("oracle", 0, oracle=True)]
    methods = one_setting(records, ["test_acc"])
    fig = accuracy_figure(methods, style_table(records), "title")
    fig.canvas.draw()
    ax, = fig.axes
    legend = fig.legends[0]
    assert len(legend.get_texts()) == 26 and "oracle [ORACLE]" in [t.get_text() for t in legend.get_texts()]
    assert ax.get_legend() is None
    legend_box, ax_box = legend.get_window_extent(), ax.get_window_extent()
    assert legend_box.x0 >= ax_box.x1, "the legend overlaps the axes"
    assert legend_box.x1 <= fig.bbox.x1 + 1, "the legend is cut off"
    oracle_line = next(line for line in ax.get_lines() if line.get_label() == "oracle [ORACLE]")
    assert oracle_line.get_linestyle() == "--"


def test_plot_accuracy_has_a_band_for_every_multi_seed_method():
    records = [rec("erm", s) for s in range(3)] + [rec("gce", s) for s in range(2)] + [rec("single", 0)]
    methods = one_setting(records, ["test_acc"])
    fig = accuracy_figure(methods, style_table(records), "title")
    ax = fig.axes[0]
    bands = {c.get_gid(): c for c in ax.collections}
    assert set(bands) == {"band:erm", "band:gce"}, "a multi-seed method lacks its band (or one seed has one)"
    # the band spans min..max over seeds: erm's seeds differ by 0.01 each, so 2 points wide at every epoch
    ys = bands["band:erm"].get_paths()[0].vertices[:, 1]
    assert ys.max() - ys.min() > 2.0
    lines = {line.get_label(): line.get_ydata() for line in ax.get_lines()}
    assert np.allclose(lines["erm"], 100 * methods["erm"]["test_acc"].mean)
    assert methods["erm"]["test_acc"].mean[0] == pytest.approx(0.5 + 0.05 + 0.01 + 0.003)  # mean of seeds 0..2
    assert "min–max over seeds" in ax.get_title()


def test_plot_weights_has_one_panel_per_reweighting_method():
    names = ["surrogate", "mwnet", "l2rw", "meta-reweight", "oracle"]
    records = [rec(m, s, weights=True, epochs=5) for m in names for s in (0, 1)] + [rec("erm", 0)]
    methods = one_setting(records, ["w_clean_mean", "w_noisy_mean"])
    fig = weights_figure(methods, "title")
    fig.canvas.draw()
    assert len(fig.axes) == 5, "one axes per reweighting method, no empty panels"
    assert [ax.get_title() for ax in fig.axes] == sorted(names)
    top = max(ax.get_ylim()[1] for ax in fig.axes)
    assert all(ax.get_ylim() == (0.0, top) for ax in fig.axes) and top >= 0.91
    assert all(len(ax.get_lines()) == 2 for ax in fig.axes)  # clean and noisy
    legend_box = fig.legends[0].get_window_extent()
    assert all(legend_box.x0 >= ax.get_window_extent().x1 for ax in fig.axes)


def test_plot_titles_are_written_for_people_and_file_names_do_not_change(tmp_path, monkeypatch):
    import nlbench.benchmark.plots as plots

    assert protocol_title({"dataset": "fashion-mnist", "model": "lenet", "epochs": 3}, "x", "abc") == \
        "Fashion-MNIST, LeNet, 3 epochs"
    assert protocol_title({"dataset": "new", "model": "m", "epochs": 1}, "new__m__e1__abc", "abc") == \
        "new, m, 1 epoch (protocol abc)"
    titles, save = {}, plots._save

    def keep_title(fig, path):
        titles[path.name] = fig._suptitle.get_text() if fig._suptitle else fig.axes[0].get_title()
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", keep_title)
    records = [rec(m, s, weights=m == "surrogate") for m in ("erm", "surrogate") for s in (0, 1)]
    records += [rec("erm", s, dataset="odd$name", model="mlp512", epochs=2) for s in (0, 1)]
    paths = plot_all(records, tmp_path)
    assert [p.name for p in paths] == [
        "fashion-mnist__lenet__e4__sym50__acc.png", "odd_name__mlp512__e2__sym50__acc.png",
        "fashion-mnist__lenet__e4__sym50__weights.png", "fashion-mnist__lenet__e4__cd.png"]
    assert titles == {
        "fashion-mnist__lenet__e4__sym50__acc.png": "Fashion-MNIST, LeNet, 4 epochs — sym50: test accuracy",
        "odd_name__mlp512__e2__sym50__acc.png": "odd\\$name, MLP-512, 2 epochs — sym50: test accuracy",
        "fashion-mnist__lenet__e4__sym50__weights.png":
            "Fashion-MNIST, LeNet, 4 epochs — sym50: mean weight of clean vs noisy samples",
        "fashion-mnist__lenet__e4__cd.png": "Fashion-MNIST, LeNet, 4 epochs: average ranks over 1 settings "
                                            "(Nemenyi, α = 0.05)"}


def test_plot_legend_flags_methods_that_read_the_noise_rate():
    records = [rec("erm", s) for s in (0, 1)] + [{**rec("coteaching", s), "uses_noise_rate": True} for s in (0, 1)]
    fig = accuracy_figure(one_setting(records, ["test_acc"]), style_table(records), "title")
    assert sorted(t.get_text() for t in fig.legends[0].get_texts()) == ["coteaching [NOISE RATE]", "erm"]
