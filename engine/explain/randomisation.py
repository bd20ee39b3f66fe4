"""Model-parameter randomisation test (Adebayo et al. 2018, "Sanity checks for saliency maps").

If a saliency map explains the MODEL, destroying what the model learned must change the map. The
test re-initialises the weights cascading from the top - the classification head first, then the
backbone's blocks from the last one down - recomputes the maps after each step and compares them with
the trained model's maps by Spearman rank correlation and SSIM. A method whose maps barely change
(an edge detector in disguise) fails.

Re-initialisation: each weight tensor of a randomised layer is replaced by a seeded permutation of
its own entries. That is a draw from the tensor's own value distribution with the learned structure
destroyed; unlike a fresh Glorot/He draw it keeps every layer's scale (so activations neither vanish
nor explode, and a map does not go blank merely because the network went dead) and keeps batch-norm
variances positive. The model's weights are restored afterwards, also when a step fails.

Verdict: the maps depend on the learned weights when the median Spearman correlation between
trained and randomised maps after the last cascade step is below ``SPEARMAN_PASS`` (0.5; see
docs/explanations.md for why).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from engine.explain import gradcam
from engine.explain.methods import Explainer, explainer
from engine.explain.similarity import bootstrap_ci, spearman, ssim

#: Randomised maps whose median Spearman correlation with the trained maps is below this pass.
SPEARMAN_PASS = 0.5
#: Cascade steps computed by default: head, then the top three backbone blocks.
DEFAULT_STEPS = 4
_BLOCK = re.compile(r"^(stem|top|block\d+[a-z]?)(?=_)")


@dataclass
class CascadeStep:
    """One step of the cascade: every layer up to this group has been randomised."""

    name: str
    layers: list[str]
    spearman: np.ndarray  # (n,) per image, against the trained maps
    ssim: np.ndarray  # (n,)
    #: share of images whose randomised map is blank (no positive evidence: Spearman 0 by definition)
    blank_fraction: float = 0.0

    def to_json(self) -> dict:
        return {"name": self.name, "layers": list(self.layers),
                "spearman_median": float(np.median(self.spearman)), "ssim_median": float(np.median(self.ssim)),
                "blank_fraction": self.blank_fraction}


@dataclass
class RandomisationResult:
    """The cascade's steps and the verdict on the last one."""

    steps: list[CascadeStep]
    spearman_median: float
    spearman_ci: list[float] | None
    ssim_median: float
    ssim_ci: list[float] | None
    passed: bool
    threshold: float = SPEARMAN_PASS
    #: (steps + 1, H, W): the maps of ``example_index`` - trained first, then after each step.
    example_maps: np.ndarray = field(default=None, repr=False)
    example_index: int = 0

    def to_json(self) -> dict:
        return {"spearman_median": self.spearman_median, "spearman_ci": self.spearman_ci,
                "ssim_median": self.ssim_median, "ssim_ci": self.ssim_ci, "passed": self.passed,
                "threshold": self.threshold, "steps": [s.to_json() for s in self.steps]}


def _block_of(name: str) -> str:
    match = _BLOCK.match(name)
    return match.group(1) if match else name


def cascade_groups(model) -> list[tuple[str, list]]:
    """The cascade order: ``("head", [head layers])``, then the backbone's blocks from the top.

    The head is every layer with weights between the nested backbone and the logits. Backbone layers
    with weights are grouped by block name prefix (``top``, ``block7a``, ..., ``stem`` in the
    EfficientNet naming); a layer without such a prefix is its own group. A model without a nested
    backbone is treated the same way on its top-level layers.
    """
    chain = gradcam.layer_chain(model)
    backbone = gradcam.nested_backbone(model)
    if backbone is not None and backbone in chain:
        cut = chain.index(backbone)
        head, body = chain[cut + 1:], [lay for lay in backbone.layers]
    else:
        head, body = chain[-1:], chain[:-1]
    groups = [("head", [lay for lay in reversed(head) if lay.weights])]
    for lay in reversed([lay for lay in body if lay.weights]):
        block = _block_of(lay.name)
        if groups[-1][0] == block and len(groups) > 1:
            groups[-1][1].append(lay)
        else:
            groups.append((block, [lay]))
    return [g for g in groups if g[1]]


def _reinitialise_layer(layer, rng: np.random.Generator) -> None:
    """Kernels (2-D and up): zero-mean normal draws with the trained tensor's standard deviation.
    Vectors (biases, batch-norm parameters and statistics): a permutation of their own entries."""
    for var in layer.weights:
        value = np.asarray(var.numpy())
        if value.ndim >= 2:
            fresh = rng.normal(0.0, float(value.std()) or 1e-3, value.shape)
        else:
            fresh = rng.permutation(value.ravel()).reshape(value.shape)
        var.assign(fresh.astype(value.dtype))


def randomisation_test(model, images: np.ndarray, class_index: Sequence[int], method: str | Explainer = "gradcam",
                       seed: int = 0, steps: int | None = DEFAULT_STEPS, trained_maps: np.ndarray | None = None,
                       layer: str | None = None, batch_size: int = 32, n_boot: int = 1000,
                       example_index: int = 0, draws: int = 1, **options) -> RandomisationResult:
    """Cascading randomisation of ``model``; maps of ``method`` compared with the trained ones.

    Args:
        images, class_index: (n, H, W, 3) as the model takes them; (n,) explained class.
        method: a name in ``methods.METHODS`` or an explainer ``(model, images, class_index) -> maps``.
        seed: drives the permutations (step k, layer j: ``default_rng([seed, k, j])``) and the CIs.
        steps: cascade steps to run (None: all, down to the stem).
        trained_maps: the trained model's maps when already computed (saves one pass).
        example_index: the image whose maps at every step are kept for the cascade figure (first draw).
        draws: independent re-initialisations of the cascade; each image's similarities are averaged
            over them. One is enough for a real backbone (a random 1280-channel head averages out);
            a toy model with a handful of channels needs a few for a stable verdict.

    The model's weights are restored before returning.
    """
    explain = explainer(method, layer=layer, batch_size=batch_size, **options)
    class_index = np.asarray(class_index)
    trained = explain(model, images, class_index) if trained_maps is None else np.asarray(trained_maps)
    groups = cascade_groups(model)[:steps]
    layers = [lay for _, group in groups for lay in group]
    saved = [[np.array(v.numpy()) for v in lay.weights] for lay in layers]
    rho = np.zeros((len(groups), len(images)))
    sim = np.zeros_like(rho)
    blank = np.zeros_like(rho)
    example = [trained[example_index]]
    try:
        for d in range(draws):
            for k, (_, group) in enumerate(groups):
                for j, lay in enumerate(group):
                    _reinitialise_layer(lay, np.random.default_rng([int(seed), d, k, j]))
                maps = explain(model, images, class_index)
                if d == 0:
                    example.append(maps[example_index])
                rho[k] += [spearman(t, m) / draws for t, m in zip(trained, maps)]
                sim[k] += [ssim(t, m) / draws for t, m in zip(trained, maps)]
                blank[k] += (maps.reshape(len(maps), -1).max(axis=1) <= 0) / draws
            _restore(layers, saved)
    finally:
        _restore(layers, saved)
    steps_done = [CascadeStep(name, [lay.name for lay in group], rho[k], sim[k], float(blank[k].mean()))
                  for k, (name, group) in enumerate(groups)]
    return _verdict(steps_done, np.stack(example), example_index, seed, n_boot)


def _restore(layers: list, saved: list) -> None:
    for lay, values in zip(layers, saved):
        for var, value in zip(lay.weights, values):
            var.assign(value)


def _verdict(results: list[CascadeStep], example: np.ndarray, example_index: int, seed: int,
             n_boot: int) -> RandomisationResult:
    if not results:
        raise ValueError("randomisation test: the model has no layer with weights to randomise")
    last = results[-1]
    rho = float(np.median(last.spearman))
    return RandomisationResult(
        steps=results, spearman_median=rho, spearman_ci=bootstrap_ci(last.spearman, seed=seed, n_boot=n_boot),
        ssim_median=float(np.median(last.ssim)), ssim_ci=bootstrap_ci(last.ssim, seed=seed, n_boot=n_boot),
        passed=bool(rho < SPEARMAN_PASS), example_maps=example, example_index=example_index)
