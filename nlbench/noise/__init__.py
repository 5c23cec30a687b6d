"""Label noise: a registry of noise kinds, each a generator with exact, verifiable rates.

:mod:`nlbench.noise.base` holds the registry (:data:`NOISES`, :func:`register_noise`), spec parsing
(:func:`parse_noise`: ``sym40`` -> kind ``sym``, rate 0.4), exact-count flipping (:func:`flip_with_matrix`), the
noise seed (:func:`noise_rng`) and the report a run records (:func:`noise_report`). The kinds live in one module
per family: :mod:`~nlbench.noise.uniform` (``clean``, ``sym``, ``uniform``), :mod:`~nlbench.noise.class_dependent`
(``pairflip``, ``flipback``, ``background``, ``asym``), :mod:`~nlbench.noise.instance` (``idn``) and
:mod:`~nlbench.noise.human` (the CIFAR-N label sets).

Adding a noise kind is one file and one test. Put a module in ``nlbench/noise/`` (every module of this package is
imported with it, so nothing else needs editing) and register a generator::

    from nlbench.noise.base import register_noise

    @register_noise("mykind")                  # rateless=True for a kind named without a rate, like ``clean``
    def mykind(labels, num_classes, rate, rng, ctx):
        \"\"\"One line for ``nlbench list noises``.\"\"\"
        ...                                    # draw only from ``rng``; read dataset extras from ``ctx``
        return noisy, T                        # int labels (n,) and the nominal row-stochastic T[true, noisy]

A kind given by a transition matrix needs only the matrix: ``register_noise("mykind")(_matrix_noise(build))``
with ``build(C, rate, rng, ctx) -> T`` flips exactly ``round_half_up(n_c * (1 - T[c, c]))`` labels per class
(see :mod:`nlbench.noise.class_dependent`). ``mykind40`` then works everywhere a noise spec does. The test (in
``tests/test_noise.py`` or a new ``tests/test_noise_<kind>.py``) should check the realised rates against the
nominal ``T`` for a few seeds and that the same noise seed gives the same labels.
"""

from __future__ import annotations

from nlbench.noise.base import (
    MAX_RATE_DECIMALS,
    MAX_SPEC_CHARS,
    NOISE_FAMILIES,
    NOISES,
    NoiseContext,
    NoiseKind,
    NoiseSpec,
    apply_noise,
    flip_with_matrix,
    is_rateless,
    list_noises,
    noise_family,
    noise_report,
    noise_rng,
    nominal_rate,
    parse_noise,
    realised_matrix,
    register_noise,
    round_half_up,
)
from nlbench.noise.instance import standardise_features


def _import_kinds() -> None:
    """Import every module of this package, so a new noise kind is one file: its decorator registers it."""
    import importlib
    import pkgutil

    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        importlib.import_module(f"{__name__}.{info.name}")


_import_kinds()

__all__ = ["MAX_RATE_DECIMALS", "MAX_SPEC_CHARS", "NOISE_FAMILIES", "NOISES", "NoiseContext", "NoiseKind",
           "NoiseSpec", "apply_noise", "flip_with_matrix", "is_rateless", "list_noises", "noise_family",
           "noise_report", "noise_rng", "nominal_rate", "parse_noise", "realised_matrix", "register_noise",
           "round_half_up", "standardise_features"]
