"""Which modules of a model get hooks, and what each one is: `plan(model)` -> [(Spec, module)].

One walk of the module tree. Each module is recognized in this order (structure first, names last):
1. an item of a decoder stack (`structure.layer_lists`) is a **block**, its position the index;
2. a module holding both a mixer / attention and a feed-forward child is a block too (Zamba2's
   shared transformer block inside a hybrid layer, any fused decoder layer);
3. `structure.Structure.role`: recurrent mixer, attention, MoE container, router, experts, dense
   MLP, from parameters and children;
4. `attribute.recognize.classify_module`: the class name, then the last component of the path
   (`lm_head`, `gate`) -- never an ancestor's path component alone (otherwise every Linear inside a
   `mixer` would be hooked).
A block in which none of these finds a mixer takes the mixer its config names for that layer
(`live.layout`: `layer_types` and its spellings), when it names exactly one.
Norms and rotary embeddings are not hooked: their time stays in the enclosing block's own time.
Inside a leaf role (mixer, router, experts, mlp, ...) only a structural or class-named mixer /
attention is hooked (the halves of a parallel hybrid mixer); inside attention nothing is.

Layer types: a weak type (`norm`, `mlp`) yields to a strong enclosing one (a shared-expert MLP
inside an MoE block is `moe_experts`); a dense MLP beside an MoE container in the same block is
that layer's shared expert (`moe_experts`, docs/attribution.md); a block, which has no type of its
own, takes the type of its strong child (its exclusive time is the norm and residual of that layer).

Shared modules (one module object reached by several paths: Zamba2's shared attention block) run
inside several layers: their path names the layer `*` (`model.layers.*.shared_transformer`) and
they carry no index of their own; each call takes the index of the block it runs in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from hybridscope.attribute.recognize import WEAK_TYPES, ModuleInfo, classify_module, layer_index_from_path
from hybridscope.live.layout import mixer_kinds
from hybridscope.live.structure import Structure, expert_count, layer_lists

HOOK_ROLES = frozenset({
    "block", "mixer", "attention", "moe", "router", "experts", "mlp", "embedding", "lm_head",
    "sampling", "moe_comm",
})
STRONG_ROLES = frozenset({"mixer", "attention", "moe"})
# Roles whose submodules are not hooked (a Conv1d inside a Mamba mixer adds cost, not meaning).
LEAF_ROLES = frozenset({"mixer", "attention", "router", "experts", "mlp", "embedding", "lm_head", "sampling"})
_INDEX_RE = re.compile(r"((?:^|\.)(?:layers|layer|h|blocks|decoder_layers|mamba_layers)\.)\d+(?=\.|$)")


@dataclass(frozen=True)
class Spec:
    """One hooked module: where it is, what it is, and (routers) how many experts it picks from."""

    idx: int
    path: str
    module_class: str
    role: str
    layer_type: str | None
    layer_index: int | None
    family: str | None
    n_experts: int | None = None


class _Recognizer:
    """Steps 1-4 of the module docstring for one model."""

    def __init__(self, model):
        self.structure = Structure(model)
        self.blocks = layer_lists(model, self.structure)
        self.block_paths: dict[str, int] = {}  # path of each decoder-stack item seen -> its index

    def __call__(self, module, path: str) -> ModuleInfo | None:
        cls = type(module).__name__
        index = self.blocks.get(id(module))
        if index is not None or self._fused_block(module):
            info = classify_module(cls, path) or ModuleInfo(None, None, "block", None, cls, path)
            index = index if index is not None else (info.layer_index if info.layer_index is not None
                                                     else self.index(path))
            if id(module) in self.blocks:
                self.block_paths[path] = index
            return ModuleInfo(None, index, "block", info.family, cls, path)
        hit = self.structure.role(module)
        if hit is not None:
            info = classify_module(cls, path)
            return ModuleInfo(hit[1], self.index(path), hit[0], info.family if info else None, cls, path)
        info = _by_name(module, path)
        return info if info is None or info.layer_index is not None else replace(info, layer_index=self.index(path))

    def index(self, path: str) -> int | None:
        """The index of the decoder-stack item `path` lies in, else the one its path names."""
        for block, i in self.block_paths.items():
            if path.startswith(block + "."):
                return i
        return layer_index_from_path(path)

    def star(self, path: str) -> str:
        """`path` with its layer written `*` (a module shared by several layers)."""
        for block in self.block_paths:
            if path.startswith(block + ".") and "." in block:
                return block.rsplit(".", 1)[0] + ".*" + path[len(block):]
        return _INDEX_RE.sub(r"\1*", path)

    def _fused_block(self, module) -> bool:
        roles = {(self.structure.role(c) or ("",))[0] for c in module.children()}
        return bool(roles & {"mixer", "attention"}) and bool(roles & {"mlp", "moe"})

    def strong(self, module) -> bool:
        hit = self.structure.role(module)
        if hit is not None:
            return hit[0] in STRONG_ROLES
        info = classify_module(type(module).__name__)
        return info is not None and info.role in STRONG_ROLES


def _by_name(module, path: str) -> ModuleInfo | None:
    cls = type(module).__name__
    if classify_module(cls) is not None:
        return classify_module(cls, path)
    if classify_module("", path.rsplit(".", 1)[-1]) is not None:
        return classify_module("", path)  # the last component is what the recognizer sees here
    return None


def recognize(module, path: str):
    """The recognizer's answer for one module (alone, without its model), or None when it is not hooked."""
    info = _Recognizer(module)(module, path)
    return info if info is not None and info.role in HOOK_ROLES else None


def is_hybrid_model(model) -> bool:
    """True when the model holds at least one recognized block with a typed mixer: a hybrid, an
    attention-only or a pure SSM / recurrent model alike."""
    return any(s.role == "block" and s.layer_type is not None for s, _ in plan(model))


def plan(model, prune: bool = True) -> list[tuple[Spec, object]]:
    """(Spec, module) for every module to hook, in `named_modules` order (parents first).

    `prune`: leave out a strong module that is its block's only hooked direct child (`_redundant`)."""
    rec = _Recognizer(model)
    shared = _shared_prefixes(model)
    found, leaves, closed = [], [], []
    for path, module in model.named_modules():
        if not path:
            continue  # the model itself is the step, not a scope
        if any(path.startswith(p) for p in closed):
            continue  # nothing inside attention is a layer of its own (its projections, convolutions)
        if any(path.startswith(leaf) for leaf in leaves) and not rec.strong(module):
            continue  # inside a leaf only a mixer / attention counts (a parallel hybrid's halves)
        info = rec(module, path)
        if info is None or info.role not in HOOK_ROLES:
            continue
        if any(path == p or path.startswith(p + ".") for p in shared):
            info = ModuleInfo(info.layer_type, None, info.role, info.family, info.module_class, rec.star(path))
        found.append((path, module, info))
        if info.role in LEAF_ROLES:
            leaves.append(path + ".")
        if info.role == "attention":
            closed.append(path + ".")
    found = _shared_experts(found)
    by_path = {p: info for p, _, info in found}
    types = [_resolve_type(path, info, by_path) for path, _, info in found]  # before pruning
    found, types = _config_typed(found, types, by_path, mixer_kinds(getattr(model, "config", None)))
    pruned = _redundant(found) if prune else set()
    specs = []
    for (path, module, info), layer_type in zip(found, types):
        if path in pruned:
            continue
        n_experts = (rec.structure.n_experts or _expert_count(module)) if info.role == "router" else None
        specs.append((Spec(len(specs), info.module_path or path, type(module).__name__, info.role, layer_type,
                           info.layer_index, info.family, n_experts), module))
    return specs


def _shared_prefixes(model) -> list[str]:
    """Paths (first occurrence) of modules reached by more than one path."""
    first: dict[int, str] = {}
    shared = []
    for path, module in model.named_modules(remove_duplicate=False):
        if not path:
            continue
        seen = first.setdefault(id(module), path)
        if seen != path and seen not in shared and not any(seen.startswith(s + ".") for s in shared):
            shared.append(seen)
    return shared


def _shared_experts(found: list) -> list:
    """A dense MLP inside an MoE container, or beside one under the same block, is the layer's
    shared expert."""
    roles = {p: info.role for p, _, info in found}
    out = []
    for path, module, info in found:
        if info.role == "mlp":
            parent = path.rsplit(".", 1)[0]
            siblings = [i for p, _, i in found if p.rsplit(".", 1)[0] == parent and p != path]
            if roles.get(parent) == "moe" or (roles.get(parent) == "block" and any(i.role == "moe" for i in siblings)):
                info = ModuleInfo("moe_experts", info.layer_index, "experts", info.family, info.module_class,
                                  info.module_path)
        out.append((path, module, info))
    return out


def _config_typed(found: list, types: list, by_path: dict, kinds: list | None) -> tuple[list, list]:
    """A block whose structure shows no mixer it knows, where the config names exactly one mixer kind
    for its layer, is typed by the config and scoped as that mixer (live.layout): its unknown
    mixer's time is the block's own time."""
    if not kinds:
        return found, types
    out = []
    for k, (path, module, info) in enumerate(found):
        i = info.layer_index
        if info.role == "block" and i is not None and 0 <= i < len(kinds) and len(kinds[i]) == 1 \
                and not any(p.startswith(path + ".") and c.role in STRONG_ROLES for p, c in by_path.items()):
            (types[k],) = kinds[i]
            info = ModuleInfo(types[k], i, "mixer", info.family, info.module_class, info.module_path)
        out.append((path, module, info))
    return out, types


def _redundant(found: list) -> set[str]:
    """Paths of strong modules (mixer / attention / MoE) that are the only hooked child of their
    block: the block's scope already carries their layer type, index and time (plus the norm and
    residual around them), so hooking them too costs two hook calls per layer and adds no layer
    type. A block with two strong children (a parallel hybrid) keeps both."""
    children: dict[str, list] = {}
    blocks = {p for p, _, info in found if info.role == "block"}
    for path, _, info in found:
        parent = next((b for b in blocks if path.startswith(b + ".")), None)
        if parent is not None and "." not in path[len(parent) + 1:]:
            children.setdefault(parent, []).append((path, info))
    return {kids[0][0] for kids in children.values() if len(kids) == 1 and kids[0][1].role in STRONG_ROLES}


def _resolve_type(path: str, info, by_path: dict) -> str | None:
    if info.role == "block":  # a strong child's type, else the first typed child's (a dense MLP)
        children = [i for p, i in by_path.items() if p.startswith(path + ".") and i.layer_type]
        strong = [i for i in children if i.role in STRONG_ROLES]
        return (strong or children or [info])[0].layer_type
    if info.layer_type in WEAK_TYPES:
        parts = path.split(".")
        for k in range(len(parts) - 1, 0, -1):
            anc = by_path.get(".".join(parts[:k]))
            if anc is not None and anc.role in STRONG_ROLES and anc.layer_type:
                return anc.layer_type
    return info.layer_type


def _expert_count(module) -> int | None:
    n = expert_count(module)
    if n is not None:
        return n
    weight = getattr(module, "weight", None)
    if weight is not None and getattr(weight, "ndim", 0) == 2:
        return int(weight.shape[0])  # a gate Linear(hidden -> experts) stores [experts, hidden]
    return None
