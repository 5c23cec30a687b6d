"""Real human label sets as noise kinds, rateless. A dataset that ships such label sets registers each name
with :func:`register_label_set` and supplies the labels itself (``Dataset.human_labels``): the CIFAR-10/100
loaders register the CIFAR-N sets (``cifar10n-aggre``, ..., ``cifar100n``) in ``nlbench/datasets/cifarn.py``,
so this module knows no dataset."""

from __future__ import annotations

import numpy as np

from nlbench.errors import NLBenchError
from nlbench.noise.base import realised_matrix, register_noise


def _human(name: str, source: str):
    def generate(labels, num_classes, rate, rng, ctx):
        if name not in ctx.human:
            raise NLBenchError(f"noise {name!r} needs the {source} human labels, which dataset {ctx.dataset!r} "
                               "does not have")
        full = np.asarray(ctx.human[name]())
        noisy = full if ctx.indices is None else full[ctx.indices]
        if len(noisy) != len(labels):
            raise NLBenchError(f"{name}: {len(noisy)} human labels for {len(labels)} samples")
        return noisy.astype(np.int64).copy(), realised_matrix(labels, noisy, num_classes)

    generate.__doc__ = f"Real human labels {name} ({source}); T is the realised matrix."
    return generate


def register_label_set(name: str, source: str) -> None:
    """Register the rateless noise kind ``name``: the dataset's human label set of that name (``source`` says
    where the labels come from, for messages and listings). Registering a name twice is a no-op."""
    from nlbench.noise.base import NOISES

    if name not in NOISES:
        register_noise(name, rateless=True, family="human")(_human(name, source))
