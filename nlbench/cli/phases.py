"""``nlbench phases``: the three-phase reweighting study in the theory setting (:mod:`nlbench.phases`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from nlbench.cli import app, console, user_errors
from nlbench.cli.core import DataRoot
from nlbench.phase_config import PHASE_DATASETS, PhaseConfig

# The defaults are PhaseConfig's own (nlbench.phase_config holds no torch code, so `nlbench -h` stays fast).
P = PhaseConfig


@app.command()
def phases(
    out: Annotated[Path, typer.Option(help="Folder for phases.json, phases.png and log.csv.")],
    dataset: Annotated[str, typer.Option(help=f"{' or '.join(PHASE_DATASETS)}.")] = P.dataset,
    method: Annotated[str, typer.Option(help="meta-reweight (exact scores) or surrogate (FBR scores).")] = \
    P.method,
    meta_size: Annotated[int, typer.Option(help="Clean subset size m.")] = P.meta_size,
    iterations: Annotated[int, typer.Option(help="Full-batch gradient steps.")] = P.iterations,
    seed: Annotated[int, typer.Option(min=0, help="Seed of data, split, flips and initialisation.")] = P.seed,
    noise_rate: Annotated[float, typer.Option(help="Share of flipped labels per class, in [0, 0.5).")] = P.noise_rate,
    n_train: Annotated[int, typer.Option(help="Noisy pool size n.")] = P.n_train,
    width: Annotated[int, typer.Option(help="Hidden width (even).")] = P.width,
    lr: Annotated[float, typer.Option(help="Step size of gradient descent.")] = P.lr,
    alpha: Annotated[float, typer.Option(help="Weight step, in units of the first iteration's mean |score|.")] =
    P.alpha,
    w0: Annotated[float, typer.Option(help="Initial weight of every sample.")] = P.w0,
    dim: Annotated[int, typer.Option(help="Input dimension (synthetic).")] = P.dim,
    separation: Annotated[float, typer.Option(help="Distance between the class means (synthetic).")] = P.separation,
    threads: Annotated[int, typer.Option(min=1, help="Torch CPU threads (a small full-batch problem: 1 is "
                                                     "fastest on a shared machine).")] = 1,
    data_root: DataRoot = None,
) -> None:
    """Persistent clipped reweighting of a wide two-layer net (squared loss, full batch); detect alignment,
    filtering and post-filtering and write DIR/phases.json, DIR/phases.png and DIR/log.csv."""
    import torch

    from nlbench.phases import phases_experiment

    with user_errors():
        cfg = PhaseConfig(dataset=dataset, method=method, n_train=n_train, meta_size=meta_size, noise_rate=noise_rate,
                          iterations=iterations, width=width, lr=lr, alpha=alpha, w0=w0, seed=seed, dim=dim,
                          separation=separation).validate()
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            res = phases_experiment(cfg, out, data_root=data_root)
        finally:
            torch.set_num_threads(before)
    table = Table(title=f"phases: {cfg.method} on {cfg.dataset}, m={cfg.meta_size}, seed {cfg.seed}")
    table.add_column("quantity")
    table.add_column("value", justify="right")

    def fmt(v) -> str:
        return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

    for key in ("alignment_end", "noisy_floor_reached", "filtering_end", "post_filtering_start", "noisy_weight_min",
                "noisy_weight_argmin", "noisy_rise", "clean_fall", "auroc_filtering_end", "auroc_end", "meta_loss_end",
                "filtered", "drifted"):
        table.add_row(key, fmt(res[key]))
    table.add_row("wall seconds", f"{res['wall_s']:.1f}")
    console.print(table)
    console.print(f"wrote {Path(out) / 'phases.json'}, phases.png and log.csv")
