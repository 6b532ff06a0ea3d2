"""What a module is, from what it holds: the structural half of the recognizer (capture only).

Class names trail the model zoo (a new hybrid family ships every few weeks), so capture first asks
the module itself, and only then `attribute.recognize.classify_module` (class and path names):

- **recurrent mixer** (`mamba`: Mamba 1/2, Gated DeltaNet and other delta-rule / linear attention,
  lightning attention, RG-LRU, RWKV time-mix, mLSTM, short causal convolutions): the module holds a
  decay / state parameter of its own (`A_log`, `dt_bias`, `time_decay`, `recurrent_param`,
  `slope_rate`, ... `RECURRENT_PARAMS`), or input and forget gates (`igate*` and `fgate*`
  children: mLSTM), or q/k/v projections together with a child that holds a decay (a delta rule's
  forget gate: Kimi's KDA, Bailing's and GLM-5-Next's linear attention), or -- without q/k/v -- a
  depthwise `Conv1d` beside two or more `Linear` projections (LFM2's short convolution). Softmax
  attention never holds a decay, so these win over the projections' names.
- **attention**: query and key (or fused qkv, or MLA's low-rank q/kv) projection children.
- **MoE container**: a router child (a 2-D weight of [experts, hidden]) and an experts child (3-D
  weights with experts leading, or a ModuleList of that many experts). The router and experts are
  typed as such; the expert count comes from the model's config (or the module's attributes).
- **dense MLP**: two or more `Linear` children and nothing else with parameters.

`layer_lists(model)` finds the decoder stacks: ModuleLists whose items hold a typed mixer; their
items are the blocks, their position the layer index, whatever their class is called.
"""

from __future__ import annotations

RECURRENT_PARAMS = frozenset({
    "A_log", "dt_bias", "time_decay", "time_first", "recurrent_param", "slope_rate", "query_decay",
    "key_decay", "A_logs", "decay", "lambda_log",
})
Q_NAMES = frozenset({"q_proj", "q", "query", "q_a_proj", "q_b_proj", "wq", "qkv_proj", "query_key_value", "c_attn",
                     "Wqkv", "wqkv", "qkv", "in_proj_qkv"})
K_NAMES = frozenset({"k_proj", "k", "key", "kv_a_proj_with_mqa", "kv_b_proj", "wk", "kv_proj", "qkv_proj",
                     "query_key_value", "c_attn", "Wqkv", "wqkv", "qkv", "in_proj_qkv"})
EXPERT_COUNT_ATTRS = ("num_experts", "n_routed_experts", "num_local_experts", "n_experts")
_PLAIN = ("Linear", "Dropout", "Identity", "ModuleList", "Sequential")


def expert_count(obj) -> int | None:
    """The routed-expert count an object (config or module) declares, or None."""
    for attr in EXPERT_COUNT_ATTRS:
        value = getattr(obj, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 1:
            return value
    return None


class Structure:
    """Structural roles of one model's modules; `n_experts` from its config where it has one."""

    def __init__(self, model):
        config = getattr(model, "config", None)
        text = config
        if config is not None and hasattr(config, "get_text_config"):
            try:
                text = config.get_text_config()
            except ValueError:  # several text configs: the top one says what it knows
                text = config
        self.n_experts = expert_count(text) if text is not None else None
        hidden = getattr(text, "hidden_size", None)
        self.hidden = hidden if isinstance(hidden, int) else None  # a router reads the residual stream
        self.memo: dict[int, tuple[str, str] | None] = {}

    def role(self, module) -> tuple[str, str] | None:
        """(role, layer_type) from the module's own parameters and children, or None."""
        key = id(module)
        if key not in self.memo:
            self.memo[key] = self._role(module)
        return self.memo[key]

    def _role(self, module) -> tuple[str, str] | None:
        own = {n for n, _ in module.named_parameters(recurse=False)} | {n for n, _ in module.named_buffers(recurse=False)}
        kids = dict(module.named_children())
        n_exp = self.n_experts or expert_count(module)
        if n_exp is not None and _router_weight(module, n_exp, self.hidden):
            return ("router", "moe_router")  # a gate Linear(hidden -> experts) too
        if type(module).__name__ in _PLAIN or (not kids and not own):
            return None
        if own & RECURRENT_PARAMS or _gated_memory(kids):
            return ("mixer", "mamba")
        qkv = bool(Q_NAMES & kids.keys()) and bool(K_NAMES & kids.keys())
        conv = any(_short_conv(c) for c in kids.values())
        if qkv and any(_holds_decay(c) for c in kids.values()):
            return ("mixer", "mamba")
        if qkv:
            return ("attention", "attention")
        if conv and sum(type(c).__name__ == "Linear" for c in kids.values()) >= 2:
            return ("mixer", "mamba")
        if n_exp is not None:
            if _expert_weights(module, n_exp):
                return ("experts", "moe_experts")
            roles = [self.role(c) for c in kids.values()]
            if ("router", "moe_router") in roles and ("experts", "moe_experts") in roles:
                return ("moe", "moe_experts")
        if kids and not own and all(_plain(c) for c in kids.values()) \
                and sum(type(c).__name__ == "Linear" for c in kids.values()) >= 2:
            return ("mlp", "mlp")
        if own and "weight" not in own and not any(c for c in kids.values() if next(c.parameters(), None) is not None) \
                and sum(type(c).__name__ == "Linear" for c in kids.values()) >= 2:
            return ("mlp", "mlp")  # RWKV channel-mix: token-shift mixing weights and Linear projections
        return None


def _holds_decay(module) -> bool:
    """A helper child holding a decay (a delta rule's forget gate: `forget_gate.A_log`)."""
    own = {n for n, _ in module.named_parameters(recurse=False)}
    return bool(own & RECURRENT_PARAMS)


def _gated_memory(kids: dict) -> bool:
    """Input and forget gates (mLSTM: `igate_preact`, `fgate_preact`)."""
    return any(k.startswith("igate") for k in kids) and any(k.startswith("fgate") for k in kids)


def _short_conv(module) -> bool:
    """A depthwise 1-D convolution (groups == channels): the short causal conv of SSM / linear mixers."""
    if type(module).__name__ != "Conv1d":
        return False
    return module.groups > 1 and module.groups == module.in_channels


def _router_weight(module, n: int, hidden: int | None) -> bool:
    w = getattr(module, "weight", None)
    if getattr(w, "ndim", 0) != 2 or w.shape[0] != n or (hidden is not None and w.shape[1] != hidden):
        return False
    return not any(True for _ in module.children()) or type(module).__name__ == "Linear"


def _expert_weights(module, n: int) -> bool:
    params = list(module.parameters(recurse=False))
    if params and all(p.ndim == 3 and p.shape[0] == n for p in params):
        return True
    kids = list(module.children())
    return len(kids) == 1 and type(kids[0]).__name__ == "ModuleList" and len(kids[0]) == n


def _plain(module) -> bool:
    name = type(module).__name__
    if name in ("ModuleList", "Sequential"):
        return all(_plain(c) for c in module.children())
    return name in _PLAIN or not any(True for _ in module.children()) and next(module.parameters(), None) is None


def layer_lists(model, structure: Structure) -> dict[int, int]:
    """id(block) -> layer index for the items of every decoder stack in `model` (see module doc)."""
    out: dict[int, int] = {}
    for _, lst in model.named_modules():
        if type(lst).__name__ != "ModuleList" or len(lst) == 0:
            continue
        items = list(lst)
        if any(_holds_mixer(item, structure) for item in items):
            for i, item in enumerate(items):
                out.setdefault(id(item), i)
    return out


def _holds_mixer(item, structure: Structure) -> bool:
    if structure.role(item) is not None:
        return False  # the list holds experts or mixers themselves, not blocks
    return any((structure.role(m) or ("",))[0] in ("mixer", "attention") for m in item.modules())
