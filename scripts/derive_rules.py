#!/usr/bin/env python3
"""Derives ShardKit split rules from transformers' tensor-parallel plans.

Writes Sources/ShardKit/Rules/DerivedRulesTable.swift: for every transformers configuration
class with a `base_model_tp_plan`, either the rules of its checkpoints' tensors or the reason
it is refused. Architectures.rules(for:) uses the table for a model_type without a preset.

Regenerate (transformers 5.24.0, torch, the fixtures' Python environment; nothing is downloaded):

    /tmp/tf5venv/bin/python scripts/derive_rules.py          # rewrite the table
    /tmp/tf5venv/bin/python scripts/derive_rules.py --check  # exit 1 if the table is stale

How (docs/rules.md, "Derived rule sets"): each model class (the *ForCausalLM class, else the base
model) is built from the default configuration on the meta device (no memory, no weights). Its
merged `tp_plan` (base_model_tp_plan with the checkpoint prefix, `embed_tokens` added by
transformers, the head's `_tp_plan`) is matched against its state-dict names the way transformers
matches them (a parameter's own entry, else its module's), the names are taken to the layout
`save_pretrained` writes (transformers' reverse weight conversion: renamings, and the two expert
conversions, stacking per-expert weights and concatenating gate/up), and each planned tensor gets
the ShardKit rule of its plan kind. ShardKit adds what the plan leaves out: query / key-value heads
for q/k/v projections and o_proj-like projections (so KV heads are replicated when there are fewer
than G), fused even parts for packed gate_up projections, vocab padding for token embeddings and
LM heads. Unplanned tensors: buffers and 1-D parameters (norms, biases, scales) are replicated, as
transformers keeps them, and so are two named 2-D roles (an MoE block's router, [E, H]; MLA's
q_a_proj); any other unplanned parameter of 2 or more dimensions refuses the architecture (no
guessing). So does a plan kind or module role that has no exact ShardKit rule; the reason is
recorded.
"""
import argparse
import json
import os
import re
import sys
import warnings

warnings.filterwarnings("ignore")
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers.core_model_loading import WeightRenaming  # noqa: E402
from transformers.conversion_mapping import get_model_conversion_mapping  # noqa: E402
from transformers.core_model_loading import revert_weight_conversion  # noqa: E402
from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES  # noqa: E402
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_MAPPING_NAMES  # noqa: E402

transformers.logging.set_verbosity_error()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "Sources", "ShardKit", "Rules", "DerivedRulesTable.swift")

COLWISE = {"colwise", "colwise_gather_output", "colwise_rep"}
ROWWISE = {"rowwise", "rowwise_split_input", "rowwise_rep"}
# Plan kinds that hook a module's forward (or its gradient) but keep its parameters whole.
WHOLE = {"replicated_with_grad_allreduce", "replicate", "mla_kv_a_proj", "local_params", "all_reduce"}
REFUSED_KINDS = {
    "moe_identity_expert": "an identity expert whose input is divided by G has no ShardKit rule",
    "packed_rowwise": "a weight packed along its input features has no ShardKit rule",
    "sequence_parallel": "sequence parallelism splits activations, not weights",
}
ATTENTION = {"self_attn", "attn", "attention", "self_attention", "cross_attn", "encoder_attn"}
Q_NAMES = {"q_proj", "query", "q_b_proj"}
KV_NAMES = {"k_proj", "v_proj", "key", "value"}
O_NAMES = {"o_proj", "out_proj", "dense", "c_proj", "proj", "wo"}


class Refuse(Exception):
    pass


def wildcard(name):
    """transformers' replace_layer_number_by_wildcard: `.3.` -> `.*.`."""
    return re.sub(r"\.\d+(\.|$)", lambda m: ".*" + m.group(1), name)


def plan_regex(key):
    return re.compile(re.escape(key).replace(r"\*", r"[^.]+"))


def model_for(model_type, config_cls):
    name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type) or MODEL_MAPPING_NAMES.get(model_type)
    if not name or not hasattr(transformers, name):
        raise Refuse(f"{config_cls.__name__} is a sub-configuration with no model class of its own in the auto "
                     "mappings: its checkpoints carry the composite model's model_type and names")
    return getattr(transformers, name)


def build(model_cls, config_cls):
    """The model on the meta device, from the default configuration (head_dim / KV heads filled when the default
    leaves them None, as the classes' own defaults do)."""
    config = config_cls()
    try:
        with torch.device("meta"):
            return model_cls(config), config
    except Exception as first:
        for key, value in (("head_dim", lambda c: c.hidden_size // c.num_attention_heads),
                           ("num_key_value_heads", lambda c: c.num_attention_heads)):
            try:
                if getattr(config, key, 0) is None:
                    setattr(config, key, value(config))
            except Exception:
                pass
        try:
            with torch.device("meta"):
                return model_cls(config), config
        except Exception:
            raise Refuse(f"{model_cls.__name__} does not build from the default {config_cls.__name__} "
                         f"({type(first).__name__}: {str(first).splitlines()[0][:120]})")


def conversion_kind(converter):
    """The two expert conversions transformers uses, which the derivation follows exactly: "merge" (per-expert
    [out, in] weights stacked into [E, out, in]) and "merge+concat" (two per-expert weights, e.g. gate and up,
    stacked and concatenated along dim 1 into [E, 2·out, in]); None for anything else."""
    ops = [(type(o).__name__, getattr(o, "dim", None)) for o in converter.operations]
    if ops == [("MergeModulelist", 0)] and len(converter.source_patterns) == 1:
        return "merge"
    if ops == [("MergeModulelist", 0), ("Concatenate", 1)] and len(converter.source_patterns) == 2:
        return "merge+concat"
    return None


def saved_names(model, state):
    """state-dict name -> (conversion kind or None, [names save_pretrained writes for it]). Renamings are
    followed; of the converters only conversion_kind's two."""
    conversions = get_model_conversion_mapping(model, add_legacy=False)
    conversions = [c for c in conversions if type(c).__name__ != "PrefixChange"]
    converters = [c for c in conversions if not isinstance(c, WeightRenaming)]
    for c in converters:
        if conversion_kind(c) is None:
            raise Refuse("save_pretrained reverts a weight conversion (" + type(c).__name__ + " of "
                         + ", ".join(c.target_patterns[:2]) + "): checkpoint tensors are not the module's")
    out = {}
    for k, tensor in state.items():
        renamed = revert_weight_conversion(model, {k: tensor})
        matches = [c for c in converters if any(t.strip(".") in k for t in c.target_patterns)]
        if not matches and len(renamed) == 1:
            out[k] = (None, list(renamed))
            continue
        if len(matches) != 1 or any(v.dim() != tensor.dim() - 1 for v in renamed.values()):
            raise Refuse(f"{wildcard(k)}: save_pretrained writes it as {len(renamed)} tensors by a conversion "
                         "the derivation does not follow")
        out[k] = (conversion_kind(matches[0]), list(renamed))
    return out


def heads_keys(config_cls):
    amap = getattr(config_cls, "attribute_map", {}) or {}
    return amap.get("num_attention_heads", "num_attention_heads"), amap.get("num_key_value_heads",
                                                                           "num_key_value_heads")


def derive(model_type, config_cls):
    model_cls = model_for(model_type, config_cls)
    model, config = build(model_cls, config_cls)
    text = config.get_text_config()
    plan = dict(model.tp_plan)
    for key, kind in plan.items():
        if kind in REFUSED_KINDS:
            raise Refuse(f"plan kind {kind} ({key}): {REFUSED_KINDS[kind]}")
        if kind not in COLWISE | ROWWISE | WHOLE | {"packed_colwise", "embedding_rowwise", "embedding_colwise",
                                                     "moe_tp_experts"}:
            raise Refuse(f"plan kind {kind} ({key}) has no ShardKit rule")
    matchers = [(plan_regex(k), k, v) for k, v in plan.items()]
    params = dict(model.named_parameters(remove_duplicate=False))
    state = model.state_dict()
    names = {id(m): n for n, m in model.named_modules()}
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    out_name = names.get(id(out_emb)) if out_emb is not None else None
    try:
        in_name = names.get(id(model.get_input_embeddings()))
    except Exception:
        in_name = None
    # Head settings that vary by layer (transformers 5's per_layer_config; Gemma 4's global layers, say):
    # refused, since their checkpoints may give some layers other KV head counts.
    spec = text.__dict__.get("_heterogeneity_spec")
    varying = sorted(set(getattr(spec, "per_layer_attributes", None) or [])
                     & {"num_attention_heads", "num_key_value_heads", "head_dim"})
    if varying:
        raise Refuse(f"the default {type(text).__name__} sets {', '.join(varying)} per layer (per_layer_config; "
                     "key/value heads may differ between layers): the derived rules take one head count per model")
    hkey, kvkey = heads_keys(type(text))
    try:
        H = getattr(text, "num_attention_heads", None)
        KV = getattr(text, "num_key_value_heads", None) or H
    except Exception as e:
        raise Refuse(f"the head counts are not one number per model ({type(e).__name__})")
    saved = saved_names(model, state)

    def lookup(key):
        w = wildcard(key)
        for rx, k, v in matchers:
            if rx.fullmatch(w):
                return k, v
        parent = w.rsplit(".", 1)[0]
        for rx, k, v in matchers:
            if rx.fullmatch(parent):
                return k, v
        return None, None

    def need_heads(what):
        if not isinstance(H, int) or H <= 0:
            raise Refuse(f"{what} needs the query head count, and {config_cls.__name__} has no num_attention_heads")

    # MoE blocks whose experts transformers splits like dense MLPs (moe_tp_experts): their routers, [E, H]
    # parameters of the block the plan leaves out, stay whole on every rank, as transformers keeps them.
    experts = {}  # wildcard block (the experts module's parent) -> number of experts
    for rx, k, v in matchers:
        for key, tensor in state.items():
            module = wildcard(key).rpartition(".")[0]
            if v == "moe_tp_experts" and tensor.dim() == 3 and rx.fullmatch(module):
                experts[module.rpartition(".")[0]] = tensor.shape[0]

    rules = {}  # saved wildcard name -> (rule, dim, source)
    for key, tensor in state.items():
        shape = list(tensor.shape)
        w = wildcard(key)
        module, _, leaf = w.rpartition(".")
        segs = module.split(".")
        last = segs[-1] if segs else ""
        in_attention = any(s in ATTENTION for s in segs)
        pkey, kind = lookup(key)
        is_param = key in params
        where = f"{w} {shape}"
        conversion, names = saved[key]
        if conversion or len(shape) == 3 and kind is not None and kind not in WHOLE:
            # Experts [E, out, in]: saved per expert as [out, in] (a conversion), or as they are.
            if kind == "packed_colwise" and conversion == "merge+concat":
                rule = ("column", 0, kind + " experts")  # each of the two packed halves split evenly
            elif kind in ROWWISE and conversion == "merge":
                rule = ("row", 1, kind + " experts")
            elif kind == "packed_colwise" and conversion is None and shape[1] % 2 == 0:
                rule = ("fused:even,even", 1, kind + " experts")  # transformers' _StridedShard(dim 1, 2)
            elif kind in ROWWISE and conversion is None:
                rule = ("row", 2, kind + " experts")
            else:
                raise Refuse(f"{where}: {kind or 'not in the plan'} on experts saved by "
                             f"{conversion or 'no'} conversion has no exact ShardKit rule")
        elif kind == "moe_tp_experts":
            raise Refuse(f"{where}: an expert parameter with no plan entry of its own")
        elif kind is None and is_param and len(shape) == 2 and experts.get(module.rpartition(".")[0]) == shape[0]:
            rule = ("replicated", 0, "router, not in plan")
        elif kind is None and last == "q_a_proj" and lookup(key.replace(".q_a_proj.", ".q_b_proj."))[1] in COLWISE:
            # MLA's query down-projection: replicated input to replicated output (q_a_layernorm, then the
            # head-split q_b_proj), as transformers keeps it.
            rule = ("replicated", 0, "MLA q_a_proj, not in plan")
        elif kind is None or kind in WHOLE:
            if is_param and len(shape) >= 2 and kind is None:
                covered = "" if len(plan) > 3 else " (the plan names only " + ", ".join(sorted(plan)) + ")"
                raise Refuse(f"{w} {shape} is not in the plan{covered}")
            rule = ("replicated", 0, "not in plan" if kind is None else kind)
        elif kind == "embedding_rowwise":
            if len(shape) != 2:
                raise Refuse(f"{where}: embedding_rowwise on a tensor that is not 2-D")
            rule = ("vocab", 0, kind)
        elif kind == "embedding_colwise":
            if len(shape) != 2:
                raise Refuse(f"{where}: embedding_colwise on a tensor that is not 2-D")
            rule = ("column", 1, kind)
        elif kind == "packed_colwise":
            if len(shape) not in (1, 2) or shape[0] % 2:
                raise Refuse(f"{where}: packed_colwise on a tensor that is not a 1-D or 2-D even packing")
            rule = ("fused:even,even", 0, kind)
        elif kind in COLWISE:
            if len(shape) not in (1, 2):
                raise Refuse(f"{where}: {kind} on a {len(shape)}-D tensor")
            if out_name is not None and module == wildcard(out_name):
                rule = ("vocab", 0, kind)
            elif leaf == "sinks" or pkey.endswith(".sinks"):
                need_heads(where)
                if shape != [H]:
                    raise Refuse(f"{where}: attention sinks are not one per query head ({H})")
                rule = ("heads", 0, kind)
            elif last in Q_NAMES or last == "kv_b_proj":
                need_heads(where)
                if shape[0] % H:
                    raise Refuse(f"{where}: {shape[0]} output features are not whole heads of {H}")
                rule = ("heads", 0, kind)
            elif last in KV_NAMES:
                need_heads(where)
                if not isinstance(KV, int) or shape[0] % KV:
                    raise Refuse(f"{where}: {shape[0]} output features are not whole heads of {KV} KV heads")
                rule = ("kv_heads", 0, kind)
            elif last == "gate_up_proj":
                if shape[0] % 2:
                    raise Refuse(f"{where}: a gate_up projection with an odd number of rows")
                rule = ("fused:even,even", 0, kind)
            elif in_attention:
                raise Refuse(f"{where}: {kind} inside attention on a module whose head layout is not known "
                             f"({last}: not a q/k/v projection)")
            else:
                rule = ("column", 0, kind)
        elif kind in ROWWISE:
            if len(shape) == 1:
                rule = ("replicated", 0, kind + " bias")
            elif len(shape) != 2:
                raise Refuse(f"{where}: {kind} on a {len(shape)}-D tensor")
            elif in_attention and last in O_NAMES:
                need_heads(where)
                if shape[1] % H:
                    raise Refuse(f"{where}: {shape[1]} input features are not whole heads of {H}")
                rule = ("out_projection", 1, kind)
            elif in_attention:
                raise Refuse(f"{where}: {kind} inside attention on a module that is not an output projection "
                             f"({last}): its input's head layout is not known")
            else:
                rule = ("row", 1, kind)
        else:
            raise Refuse(f"{where}: plan kind {kind} has no ShardKit rule")
        for name in sorted({wildcard(n) for n in names}):
            if name in rules and rules[name] != rule:
                raise Refuse(f"{name}: two rules ({rules[name][0]}, {rule[0]}) for one checkpoint name")
            rules[name] = rule
    # Plan entries for linear modules the default configuration does not build (dense MLPs of MoE models in
    # mlp_only_layers, say): the same rules by name, for the checkpoints whose configuration builds them.
    seen = {wildcard(k).rpartition(".")[0] for k in state} | {wildcard(k) for k in state}
    for key, kind in plan.items():
        if key in seen or "*" in key.replace("layers.*", ""):
            continue
        module, _, last = key.rpartition(".")
        in_attention = any(s in ATTENTION for s in key.split("."))
        if kind in COLWISE and not in_attention and last not in Q_NAMES | KV_NAMES:
            weight = ("fused:even,even", 0, kind) if last == "gate_up_proj" else ("column", 0, kind)
            bias = weight
        elif kind == "packed_colwise":
            weight = bias = ("fused:even,even", 0, kind)
        elif kind in ROWWISE and not in_attention:
            weight, bias = ("row", 1, kind), ("replicated", 0, kind + " bias")
        else:
            continue
        for leaf, rule in (("weight", weight), ("bias", bias)):
            name = f"{key}.{leaf}"  # the plan's name, as save_pretrained renames it
            renamed = list(revert_weight_conversion(model, {name: torch.empty(0, device="meta")}))
            rules.setdefault(renamed[0] if len(renamed) == 1 else name, rule)
    # A planned linear module's bias follows its weight (colwise: split with it; rowwise: whole), also where
    # the default configuration has no biases.
    modules = dict(model.named_modules())
    for key in list(state):
        module, _, leaf = key.rpartition(".")
        if leaf != "weight" or not isinstance(modules.get(module), torch.nn.Linear) or key[:-6] + "bias" in state:
            continue
        name = wildcard(saved[key][1][0])
        rule = rules.get(name)
        if rule and rule[0] != "replicated":
            bias = rule if rule[0] in ("heads", "kv_heads", "column", "vocab", "fused:even,even") else \
                ("replicated", 0, rule[2] + " bias")
            rules.setdefault(name[:-6] + "bias", bias)
    if not rules:
        raise Refuse("no tensors")
    check_head_sizes(state, H, KV)
    uses_heads = any(r[0] in ("heads", "kv_heads", "out_projection") or r[0].startswith("fused:heads")
                     for r in rules.values())
    entries = []
    embed = wildcard(saved[in_name + ".weight"][1][0]) if in_name and (in_name + ".weight") in saved else None
    for name, (rule, dim, source) in rules.items():
        entries.append([name, rule, dim, source] + (["required"] if name == embed else []))
    result = {"config": config_cls.__name__, "model": model_cls.__name__, "rules": entries}
    if uses_heads:
        # Read from config.json (save_pretrained writes them); a class without KV heads has KV = H.
        result["heads"] = [hkey, H]
        result["kv_heads"] = [kvkey, KV] if hasattr(text, "num_key_value_heads") else [hkey, H]
    return result


def check_head_sizes(state, H, KV):
    """Per layer (not per pattern: configurations may vary by layer), the query and key/value projections must
    give one head size: q rows / H == k rows / KV == v rows / KV == o_proj columns / H. Otherwise the head
    counts of config.json do not describe every layer, and a heads rule would cut heads."""
    sizes = {}
    for key, tensor in state.items():
        module, _, leaf = key.rpartition(".")
        parent, _, last = module.rpartition(".")
        if leaf != "weight" or tensor.dim() != 2 or last not in Q_NAMES | KV_NAMES | {"o_proj"}:
            continue
        if last == "q_b_proj":
            continue
        rows = tensor.shape[1] if last == "o_proj" else tensor.shape[0]
        sizes.setdefault(parent, {})[last] = rows / (KV if last in KV_NAMES else H)
    for parent, s in sizes.items():
        if len(set(s.values())) > 1:
            detail = ", ".join(f"{k} {v:g}" for k, v in sorted(s.items()))
            raise Refuse(f"{wildcard(parent)}: head sizes differ ({detail} features per head with {H} heads, "
                         f"{KV} KV heads): the config's head counts do not hold for every layer")


def chunks(text, width=96):
    words, lines, line = text.split(" "), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line + " ")
            line = word
        else:
            line = (line + " " + word) if line else word
    lines.append(line)
    return lines


def render(table):
    """The Swift file: the table as JSON inside a raw string, one rule per line (lines under 120 columns)."""
    mapped = sorted(k for k, v in table.items() if "rules" in v)
    refused = sorted(k for k, v in table.items() if "refused" in v)
    out = ["// Generated by scripts/derive_rules.py from transformers " + transformers.__version__
           + "'s base_model_tp_plan: do not edit.",
           "// Regenerate: /tmp/tf5venv/bin/python scripts/derive_rules.py (docs/rules.md, \"Derived rule sets\").",
           f"// {len(table)} configuration classes with a plan: {len(mapped)} derived, {len(refused)} refused.",
           "",
           "extension DerivedRules {",
           "    static let transformersVersion = \"" + transformers.__version__ + "\"",
           "",
           "    /// {model_type: {config, model, heads: [key, default], kv_heads: [key, default],",
           "    ///  rules: [[pattern, rule, dim, plan kind, \"required\"?]]} or {config, refused: [text pieces]}}",
           "    static let json = #\"\"\"",
           "    {"]
    items = sorted(table.items())
    for i, (mt, v) in enumerate(items):
        end = "," if i + 1 < len(items) else ""
        head = {k: v[k] for k in ("config", "model") if k in v}
        out.append("    " + json.dumps(mt) + ": " + json.dumps(head)[:-1] + ",")
        counts = {k: v[k] for k in ("heads", "kv_heads") if k in v}
        prefix = "     " + json.dumps(counts)[1:-1] + ("," if counts else "")
        if "refused" in v:
            pieces = chunks(v["refused"])
            out.append("    " + prefix + " \"refused\": [")
            for j, p in enumerate(pieces):
                out.append("      " + json.dumps(p) + ("," if j + 1 < len(pieces) else "]}" + end))
        else:
            out.append("    " + prefix + " \"rules\": [")
            for j, r in enumerate(v["rules"]):
                line = "      " + json.dumps(r) + ("," if j + 1 < len(v["rules"]) else "]}" + end)
                if len(line) > 120:
                    cut = line.index(", ", len(json.dumps(r[0])) + 6)
                    out += [line[:cut + 1], "       " + line[cut + 2:]]
                else:
                    out.append(line)
    out += ["    }", "    \"\"\"#", "}", ""]
    for line in out:
        if len(line) > 120:
            raise SystemExit(f"line over 120 columns: {line}")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true", help="exit 1 if the checked-in table differs")
    ap.add_argument("--only", nargs="*", help="derive only these model types and print them")
    a = ap.parse_args()
    if transformers.__version__ != "5.24.0":
        raise SystemExit(f"transformers {transformers.__version__}: the table is derived from 5.24.0")
    table = {}
    for mt, cname in sorted(CONFIG_MAPPING_NAMES.items()):
        if a.only and mt not in a.only:
            continue
        config_cls = getattr(transformers, cname, None)
        if config_cls is None or not getattr(config_cls, "base_model_tp_plan", None):
            continue
        try:
            table[mt] = derive(mt, config_cls)
        except Refuse as e:
            table[mt] = {"config": cname, "refused": str(e)}
    if a.only:
        print(json.dumps(table, indent=1))
        return
    text = render(table)
    if a.check:
        with open(OUT) as f:
            if f.read() != text:
                raise SystemExit(f"{OUT} is stale: rerun scripts/derive_rules.py")
        print("up to date")
        return
    with open(OUT, "w") as f:
        f.write(text)
    mapped = sum("rules" in v for v in table.values())
    print(f"{len(table)} configuration classes with a plan: {mapped} derived, {len(table) - mapped} refused")


if __name__ == "__main__":
    sys.exit(main())
