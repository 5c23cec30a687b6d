"""Real human label sets: the CIFAR-N kinds (``cifar10n-aggre``, ..., ``cifar100n``), rateless."""

from __future__ import annotations

import numpy as np

from nlbench.errors import NLBenchError
from nlbench.noise.base import realised_matrix, register_noise


def _human(name: str):
    def generate(labels, num_classes, rate, rng, ctx):
        if name not in ctx.human:
            raise NLBenchError(f"noise {name!r} needs the CIFAR-N human labels, which dataset {ctx.dataset!r} "
                               "does not have")
        full = np.asarray(ctx.human[name]())
        noisy = full if ctx.indices is None else full[ctx.indices]
        if len(noisy) != len(labels):
            raise NLBenchError(f"{name}: {len(noisy)} human labels for {len(labels)} samples")
        return noisy.astype(np.int64).copy(), realised_matrix(labels, noisy, num_classes)

    generate.__doc__ = f"Real human labels {name} (CIFAR-N, Wei et al. 2022); T is the realised matrix."
    return generate


for _name in ["cifar10n-aggre", "cifar10n-worst", "cifar10n-rand1", "cifar10n-rand2", "cifar10n-rand3",
              "cifar100n"]:
    register_noise(_name, rateless=True)(_human(_name))
