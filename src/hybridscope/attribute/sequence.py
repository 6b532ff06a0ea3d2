"""Sequence attribution: a CUDA-graph replay's ordered kernels cut into the layers of a pattern.

Used for imported traces whose graph replays have no capture phase to map them to (see
attribute/graphs.py). Input: one replay's kernels in execution order, each with the layer type its
name rule gives (None when no rule matched), and the model's `LayerPattern`.

1. Anchors: kernels whose rule type is a layer family (`mamba` -> M, `attention` -> A, `moe_*` ->
   E). Consecutive anchors of one family form a run; the pattern's layers, flattened to their
   families and merged the same way, must give the same sequence of runs (else: no segmentation,
   the replay keeps its name rules and is counted as a mismatch). Layers without a family (MLP)
   have no anchor and fall in the gaps.
2. A run that covers k layers (`MM`, or `M-M` where the MLP has no anchor) is split at the k-1
   gaps between its anchors that hold a `norm` kernel (pre-norm blocks start with their norm).
   When there are not exactly k-1 such gaps but the run's anchors divide evenly, it is split
   evenly and its kernels are marked guessed; otherwise the replay is not segmented.
3. Layer boundaries: between two anchors of layers a < b (and before the first anchor / after the
   last, against a virtual layer before and after the model) b - a layers start; each starts at
   one of the last b - a norm kernels of the gap (a mixer's own norm, such as Mamba's gated norm,
   comes earlier in the gap than the next layer's input norm). A gap with too few norm kernels
   gets the missing boundaries at its start and its kernels are marked guessed (ambiguous).
4. Types: an anchor keeps its rule type; any other kernel of layer i takes the family of the
   latest anchor of layer i before it, else layer i's first family (`mlp` for an MLP layer);
   collectives outside MoE keep their rule type (`comm`). Kernels before the first layer or after
   the last (embedding, final norm, LM head, sampling) get no layer: their rule decides.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hybridscope.attribute.pattern import ANCHOR_FAMILY, FAMILY_TYPE, LayerPattern

KEEP_RULE = frozenset({"comm"})  # rule types a layer does not override


@dataclass(frozen=True)
class Segmentation:
    """Per kernel: `layer` (-1 outside every layer), `layer_type` (None: keep the name rule's) and
    `guessed` (its layer boundary was not determined by a norm kernel)."""

    layer: np.ndarray
    layer_type: list
    guessed: np.ndarray


def segment(types: Sequence[str | None], pattern: LayerPattern) -> Segmentation | None:
    """Cut one replay's kernels (their name-rule types, in order) into the pattern's layers."""
    fam = [ANCHOR_FAMILY.get(t) if t is not None else None for t in types]
    anchors = [i for i, f in enumerate(fam) if f is not None]
    if not anchors or not len(pattern):
        return None
    runs = _runs([(i, fam[i]) for i in anchors])
    for layers in (pattern.layers, tuple(tuple(reversed(f)) for f in pattern.layers)):
        pruns = _runs([(j, f) for j, fams in enumerate(layers) for f in fams])
        if [f for f, _ in runs] == [f for f, _ in pruns]:
            break
    else:
        return None
    is_norm = np.fromiter((t == "norm" for t in types), bool, len(types))
    guessed = np.zeros(len(types), bool)
    anchor_layer = _assign_anchors(runs, pruns, is_norm, guessed)
    if anchor_layer is None:
        return None
    layer = _boundaries(len(types), anchors, anchor_layer, len(pattern), is_norm, guessed)
    return Segmentation(layer, _types(types, fam, layer, pattern), guessed)


def _runs(items: list[tuple[int, str]]) -> list[tuple[str, list[int]]]:
    """Consecutive items of one family merged: [(family, [their first elements, distinct])]."""
    out: list[tuple[str, list[int]]] = []
    for pos, f in items:
        if out and out[-1][0] == f:
            if out[-1][1][-1] != pos:
                out[-1][1].append(pos)
        else:
            out.append((f, [pos]))
    return out


def _assign_anchors(runs, pruns, is_norm: np.ndarray, guessed: np.ndarray) -> list[int] | None:
    """The layer of each anchor, run by run (step 2 of the module docstring)."""
    out: list[int] = []
    cum = np.concatenate([[0], np.cumsum(is_norm)])  # norms in [a, b) = cum[b] - cum[a]
    for (_, pos), (_, layers) in zip(runs, pruns):
        k = len(layers)
        if k == 1:
            out += [layers[0]] * len(pos)
            continue
        cand = [g for g in range(len(pos) - 1) if cum[pos[g + 1]] - cum[pos[g] + 1] > 0]
        if len(cand) == k - 1:
            cuts = cand
        elif len(pos) % k == 0:
            per = len(pos) // k
            cuts = [per * (c + 1) - 1 for c in range(k - 1)]
            guessed[pos[0]:pos[-1] + 1] = True
        else:
            return None
        layer_of_gap = np.searchsorted(np.asarray(cuts), np.arange(len(pos)), side="left")
        out += [layers[c] for c in layer_of_gap]
    return out


def _boundaries(n: int, anchors: list[int], anchor_layer: list[int], m: int, is_norm: np.ndarray,
                guessed: np.ndarray) -> np.ndarray:
    """The layer of every kernel (step 3); -1 before the first layer and after the last."""
    layer = np.full(n, -1, np.int64)
    bounds = [(-1, -1)] + list(zip(anchors, anchor_layer)) + [(n, m)]
    for (p, lp), (q, lq) in itertools.pairwise(bounds):
        if q < n:
            layer[q] = lq
        if q - p <= 1:
            continue
        d = lq - lp
        if d <= 0:
            layer[p + 1:q] = lp
            continue
        norms = [i for i in range(p + 1, q) if is_norm[i]][-d:]
        if len(norms) < d:
            norms = [p + 1] * (d - len(norms)) + norms
            guessed[p + 1:q] = True
        starts = np.asarray(norms)
        gap = np.arange(p + 1, q)
        layer[p + 1:q] = lp + np.searchsorted(starts, gap, side="right")
    layer[layer >= m] = -1
    return layer


def _types(types, fam, layer: np.ndarray, pattern: LayerPattern) -> list:
    out: list = [None] * len(types)
    current, current_layer = None, -1
    for i, (t, f, j) in enumerate(zip(types, fam, layer.tolist())):
        if j != current_layer:
            current, current_layer = None, j
        if j < 0:
            continue
        if f is not None:
            current = f
            out[i] = t
        elif t in KEEP_RULE:
            out[i] = t
        else:
            out[i] = FAMILY_TYPE[current] if current is not None else pattern.default_type(j)
    return out
