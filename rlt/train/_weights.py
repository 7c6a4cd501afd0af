"""Weights in the layouts users download, read into `VideoViT`, and a trained model written as Hugging Face's.

Read (`read_pretrained`, behind ``rlt-prep train --init``):
    - a Hugging Face transformers VideoMAE folder (``config.json`` with ``model.safetensors``, its
      shards, or ``pytorch_model.bin``), or its ``.safetensors`` file beside its ``config.json``: the
      config gives the model's shape, layer-norm epsilons and pooling;
    - VideoMAE / VideoMAE-v2 ``.pth`` files as their scripts save them (``{"model": ..., "args":
      Namespace, ...}``, or DeepSpeed's ``{"module": ...}``), pre-training checkpoints included (their
      decoder is left out);
    - the RLT authors' checkpoints: ``backbone.`` / ``encoder.`` prefixes, ``encoder.norm`` for
      ``fc_norm``, a learned run-length table ``length_embed``;
    - a run folder or ``step-*.pt`` file of `rlt-prep train`.

Written (`export_hf`, behind ``rlt-prep export RUN OUT --format hf``): a ``VideoMAEForVideoClassification``
folder that transformers loads with our logits on dense clips.

Shape legend: d model width, D values per token (ts*p*p*C), C channels, ts tubelet frames, p patch side.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from rlt.dataset import open_atomic
from rlt.dataset._format import parse_json
from rlt.train._checkpoint import CHECKPOINT_VERSION, find_checkpoint, list_checkpoints, read_weights
from rlt.train._model import VideoViT, ViTConfig, sinusoid_table

log = logging.getLogger(__name__)

HF_CONFIG = "config.json"
HF_WEIGHTS = "model.safetensors"
# Keys of a VideoMAE pre-training checkpoint (theirs and Hugging Face's) that belong to its decoder.
_PRETRAINING_ONLY = ("decoder.", "encoder_to_decoder.", "mask_token")
# Fields a file sets on the model it initialises; the others are the run's (preset, data) and are checked.
_FROM_WEIGHTS = ("norm_eps", "fc_norm_eps", "pooling", "layer_scale", "learned_length_embedding")
# Hugging Face's VideoMAEConfig defaults, used where its config.json leaves a field out (as transformers does).
_HF_DEFAULTS: dict[str, Any] = {
    "image_size": 224,
    "patch_size": 16,
    "num_channels": 3,
    "num_frames": 16,
    "tubelet_size": 2,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-12,
    "use_mean_pooling": True,
}
# Hugging Face's fc_norm is nn.LayerNorm(hidden_size): torch's default epsilon, whatever the config says.
_HF_FC_NORM_EPS = 1e-5
# Hugging Face key (after an optional "videomae.") -> VideoMAE key; \1 is the block's number.
_HF_TO_VIDEOMAE = [
    (r"embeddings\.patch_embeddings\.projection\.(weight|bias)", r"patch_embed.proj.\1"),
    (r"encoder\.layer\.(\d+)\.attention\.attention\.(q_bias|query\.bias)", r"blocks.\1.attn.q_bias"),
    (r"encoder\.layer\.(\d+)\.attention\.attention\.(v_bias|value\.bias)", r"blocks.\1.attn.v_bias"),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.(weight|bias)", r"blocks.\1.mlp.fc1.\2"),
    (r"encoder\.layer\.(\d+)\.output\.dense\.(weight|bias)", r"blocks.\1.mlp.fc2.\2"),
    (r"encoder\.layer\.(\d+)\.layernorm_before\.(weight|bias)", r"blocks.\1.norm1.\2"),
    (r"encoder\.layer\.(\d+)\.layernorm_after\.(weight|bias)", r"blocks.\1.norm2.\2"),
    (r"layernorm\.(weight|bias)", r"norm.\1"),
    (r"classifier\.(weight|bias)", r"head.\1"),
]
_HF_QKV = re.compile(r"(?:videomae\.)?encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.weight")


@dataclass(frozen=True)
class PretrainedWeights:
    """Weights read from a file, in `VideoViT`'s key names.

    Attributes:
        path: the file they came from.
        state: the state dict (``head.*`` absent for a pre-training checkpoint).
        fields: the `ViTConfig` fields the file states: from its config (Hugging Face, ours), or
            what its keys show (VideoMAE ``.pth`` files do not say their number of heads).
    """

    path: Path
    state: dict[str, torch.Tensor]
    fields: dict[str, Any]

    def __repr__(self) -> str:
        return f"PretrainedWeights(path={str(self.path)!r}, tensors={len(self.state)}, fields={self.fields})"

    def config_for(self, config: ViTConfig, *, what: str = "this model") -> ViTConfig:
        """``config`` with the fields these weights set (norms, pooling, layer scale, learned length
        embedding); the number of classes, frames and image size stay ``config``'s.

        Raises:
            ValueError: the weights are of another architecture (width, depth, heads, MLP, tubelet,
                patch or channels), naming both.
        """
        own = asdict(config)
        theirs, ours = _architecture(self.fields), _architecture(own)
        if any(theirs[k] != ours[k] for k in theirs):
            raise ValueError(f"{self.path} holds a model of {_describe(theirs)}; {what} is {_describe(ours)}")
        values = {**own, **{k: self.fields[k] for k in _FROM_WEIGHTS if k in self.fields}}
        if values["learned_length_embedding"] and values["run_length_embedding"]:
            raise ValueError(
                f"{self.path} has a learned run-length embedding (length_embed): train without --run-length-embedding"
            )
        return ViTConfig(**values)

    def load_into(self, model: VideoViT) -> list[str]:
        """Loads the weights, keeping ``model``'s head where they have none or one of another number
        of classes; returns the keys kept that way.

        Raises:
            ValueError: naming the file and the keys or shapes that do not fit.
        """
        own = model.state_dict()
        state = dict(self.state)
        kept = [k for k in ("head.weight", "head.bias") if k not in state or state[k].shape != own[k].shape]
        if "head.weight" not in state:  # pre-training weights: no classifier, and maybe no fc_norm
            kept += [k for k in ("fc_norm.weight", "fc_norm.bias") if k in own and k not in state]
        state.update({k: own[k] for k in kept})
        try:
            load_model_state(model, state)
        except ValueError as e:
            raise ValueError(f"{self.path}: {e}") from e
        return kept


def read_pretrained(path: str | Path) -> PretrainedWeights:
    """Reads weights for `VideoViT` from any layout the module docstring lists.

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: naming the file and the reason, for anything that is not such weights (a
            config of another model, damaged files, pickled code, keys or shapes that do not fit).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.is_dir():
        # A run folder has a config.json of its own: look for its checkpoints first.
        if list_checkpoints(path) or list_checkpoints(path / "ckpt"):
            path = find_checkpoint(path)
        elif (path / HF_CONFIG).is_file():
            return _read_hf(path, None)
        else:
            raise ValueError(
                f"{path} is neither a Hugging Face model folder ({HF_CONFIG} and {HF_WEIGHTS}) nor a run "
                "folder of rlt-prep train (ckpt/step-*.pt)"
            )
    if path.name == HF_CONFIG:
        return _read_hf(path.parent, None)
    if path.suffix == ".safetensors":
        if (path.parent / HF_CONFIG).is_file():
            return _read_hf(path.parent, path)
        state = _read_safetensors(path)
        if any(_is_hf_key(k) for k in state):
            raise ValueError(
                f"{path} holds Hugging Face weights without their {HF_CONFIG} beside them (it gives the "
                "number of heads, the layer-norm epsilon and the pooling)"
            )
        return _from_videomae(path, state)
    loaded = read_weights(path)
    if isinstance(loaded, dict) and "model_config" in loaded and "model" in loaded:  # rlt-prep train's
        if loaded.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"{path}: checkpoint version {loaded.get('version')!r} is not {CHECKPOINT_VERSION}")
        return PretrainedWeights(path, dict(loaded["model"]), dict(loaded["model_config"]))
    return _from_videomae(path, _state_dict(path, loaded))


def load_videomae_state_dict(model: VideoViT, state: Mapping[str, torch.Tensor], *, strict: bool = True) -> None:
    """Loads a VideoMAE / VideoMAE-v2 state dict, or the RLT authors' (which shares its names).

    Mapping: a ``module.``, ``model.`` or ``backbone.`` prefix is dropped, and ``encoder.`` too
    (``encoder.norm`` becomes ``fc_norm``, as the RLT authors load VideoMAE's pre-training
    checkpoints; its decoder is left out); ``patch_embed.proj.weight`` ``[d, C, ts, p, p]`` (Conv3d)
    becomes ``patch_embed.weight`` ``[d, ts*p*p*C]`` in the tokens' (t, y, x, c) order;
    ``patch_embed.proj.bias`` becomes ``patch_embed.bias``; a ``pos_embed`` must be VideoMAE's fixed
    table (this model builds it for its own grid); absent q/v biases (``qkv_bias=False``) are zeros;
    every other key loads as it is. ``model`` must have the file's pooling, layer scale and length
    embedding (`read_pretrained` finds them).

    Raises:
        ValueError: shapes that differ, and with ``strict`` keys missing or unexpected.
    """
    load_model_state(model, _videomae_to_model(state), strict=strict)


def load_model_state(model: VideoViT, state: Mapping[str, torch.Tensor], *, strict: bool = True) -> None:
    """``model.load_state_dict`` whose every failure is a ValueError listing what does not fit."""
    own = model.state_dict()
    wrong = [
        f"{k} {tuple(v.shape)} (the model's: {tuple(own[k].shape)})"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    if wrong:
        more = f" and {len(wrong) - 3} more" if len(wrong) > 3 else ""
        raise ValueError(f"the weights are of another model shape: {', '.join(wrong[:3])}{more}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if strict and (missing or unexpected):
        raise ValueError(f"state dict does not fit: missing {_some(missing)}, unexpected {_some(unexpected)}")


def _some(keys: list[str], shown: int = 6) -> str:
    keys = sorted(keys)
    return f"{keys[:shown]} and {len(keys) - shown} more" if len(keys) > shown else str(keys)


def export_hf(checkpoint: str | Path, out: str | Path) -> Path:
    """Writes a model trained here as a Hugging Face ``VideoMAEForVideoClassification`` folder.

    ``out`` gets ``model.safetensors`` and then ``config.json`` (written last, so an interrupted
    export does not look complete). transformers computes our logits on dense clips (every token
    kept), which is all it runs: layer scale is folded into the linear layer before it, and a
    run-length embedding into the patch embedding's bias (every run of a dense clip is 1 long).
    Hugging Face's ``fc_norm`` has epsilon 1e-5 whatever its config says, ours 1e-6 unless the
    weights came from Hugging Face: logits then differ by about 1e-6.

    Args:
        checkpoint: a run folder (its newest checkpoint) or a ``step-*.pt`` file.
        out: the folder to write; it must not exist or be empty.
    """
    from safetensors.torch import save as save_safetensors

    from rlt.train._eval import load_model

    model, spec, _ = load_model(checkpoint)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} already exists and is not an empty folder; export writes into a new folder")
    config = model.config
    if config.channels != 3:
        raise ValueError(f"{checkpoint}: a model of {config.channels} channels; VideoMAE's inputs are RGB")
    tensors = _model_to_hf(model)
    classes = spec.classes or [f"LABEL_{i}" for i in range(config.num_classes)]
    hf_config = {
        "architectures": ["VideoMAEForVideoClassification"],
        "model_type": "videomae",
        "image_size": config.image_size,
        "patch_size": config.patch_size,
        "num_channels": config.channels,
        "num_frames": config.num_frames,
        "tubelet_size": config.tubelet_size,
        "hidden_size": config.width,
        "num_hidden_layers": config.depth,
        "num_attention_heads": config.heads,
        "intermediate_size": int(config.width * config.mlp_ratio),
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "layer_norm_eps": config.norm_eps,
        # transformers 4 reads qkv_bias, 5 reads qv_bias (and renames the q_bias / v_bias keys).
        "qkv_bias": True,
        "qv_bias": True,
        "use_mean_pooling": config.pooling == "mean",
        "id2label": {str(i): name for i, name in enumerate(classes)},
        "label2id": {name: i for i, name in enumerate(classes)},
    }
    out.mkdir(parents=True, exist_ok=True)
    with open_atomic(out / HF_WEIGHTS, "wb") as f:
        f.write(save_safetensors(tensors, metadata={"format": "pt"}))
    with open_atomic(out / HF_CONFIG) as f:
        json.dump(hf_config, f, indent=2)
        f.write("\n")
    return out


def _read_hf(folder: Path, weights: Path | None) -> PretrainedWeights:
    fields = _hf_fields(folder / HF_CONFIG)
    if weights is None:
        names = (HF_WEIGHTS, f"{HF_WEIGHTS}.index.json", "pytorch_model.bin")
        weights = next((folder / n for n in names if (folder / n).is_file()), None)
        if weights is None:
            raise ValueError(f"{folder} has a {HF_CONFIG} but no {HF_WEIGHTS} (nor pytorch_model.bin)")
    if weights.name.endswith(".index.json"):
        shards = sorted(set(_read_json(weights).get("weight_map", {}).values()))
        state = {k: v for shard in shards for k, v in _read_safetensors(folder / shard).items()}
    elif weights.suffix == ".safetensors":
        state = _read_safetensors(weights)
    else:
        state = _state_dict(weights, read_weights(weights))
    read = _from_videomae(weights, _hf_to_videomae(state))
    keys_say = {k: v for k, v in read.fields.items() if k not in fields}
    return PretrainedWeights(weights, read.state, {**keys_say, **fields})


def _hf_fields(path: Path) -> dict[str, Any]:
    """The `ViTConfig` fields of a Hugging Face VideoMAE config.json."""
    values = {**_HF_DEFAULTS, **_read_json(path)}
    if values.get("model_type") != "videomae":
        raise ValueError(f"{path}: model_type {values.get('model_type')!r} is not 'videomae'; only VideoMAE loads")
    try:
        image, patch = (_square(values[k], k) for k in ("image_size", "patch_size"))
        width, intermediate = int(values["hidden_size"]), int(values["intermediate_size"])
        fields = {
            "width": width,
            "depth": int(values["num_hidden_layers"]),
            "heads": int(values["num_attention_heads"]),
            "mlp_ratio": intermediate / width,
            "num_frames": int(values["num_frames"]),
            "image_size": image,
            "tubelet_size": int(values["tubelet_size"]),
            "patch_size": patch,
            "channels": int(values["num_channels"]),
            "norm_eps": float(values["layer_norm_eps"]),
            "fc_norm_eps": _HF_FC_NORM_EPS,
            "pooling": "mean" if values["use_mean_pooling"] else "first",
        }
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from e
    if values["hidden_act"] != "gelu":
        raise ValueError(f"{path}: hidden_act {values['hidden_act']!r}; this model's MLP uses 'gelu'")
    if int(width * fields["mlp_ratio"]) != intermediate:
        raise ValueError(f"{path}: intermediate_size {intermediate} is not a whole multiple of hidden_size {width}")
    return fields


def _square(value: Any, name: str) -> int:
    if isinstance(value, list | tuple):
        if len(set(value)) != 1:
            raise ValueError(f"{name} {value} is not square; this model's patches and frames are")
        value = value[0]
    return int(value)


def _state_dict(path: Path, loaded: Any) -> dict[str, torch.Tensor]:
    """The tensors by name that a loaded ``.pth`` holds, itself or under a VideoMAE, DeepSpeed or Lightning key."""
    for key in ("model", "module", "state_dict"):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
            break
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ValueError(f"{path} holds no state dict (tensors by name, or under 'model', 'module' or 'state_dict')")
    return loaded


def _read_json(path: Path) -> dict[str, Any]:
    values = parse_json(path.read_bytes(), path)
    if not isinstance(values, dict):
        raise ValueError(f"{path} is not a JSON object")
    return values


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path} is not a readable safetensors file ({e})") from e


def _is_hf_key(key: str) -> bool:
    return key.startswith("videomae.") or ".attention.attention." in key or key.startswith("classifier.")


def _hf_to_videomae(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face's names (transformers 4 and 5) as VideoMAE's; q, k and v weights become one qkv."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if m := _HF_QKV.fullmatch(key):
            qkv.setdefault(int(m.group(1)), {})[m.group(2)] = value
            continue
        name = key.removeprefix("videomae.")
        for pattern, replacement in _HF_TO_VIDEOMAE:
            if re.fullmatch(pattern, name):
                name = re.sub(pattern, replacement, name)
                break
        else:
            name = key
        out[name] = value
    for i, parts in qkv.items():
        if set(parts) == {"query", "key", "value"} and len({p.shape for p in parts.values()}) == 1:
            out[f"blocks.{i}.attn.qkv.weight"] = torch.cat([parts["query"], parts["key"], parts["value"]])
        else:  # left as they were: the load names them as unexpected
            out.update({f"videomae.encoder.layer.{i}.attention.attention.{k}.weight": v for k, v in parts.items()})
    return out


def _from_videomae(path: Path, state: Mapping[str, torch.Tensor]) -> PretrainedWeights:
    """VideoMAE-named weights (any prefix), with the fields their keys show."""
    try:
        mapped = _videomae_to_model(state)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    fields: dict[str, Any] = {
        "pooling": "first" if "norm.weight" in mapped and "fc_norm.weight" not in mapped else "mean",
        "layer_scale": any(k.endswith(".gamma_1") for k in mapped),
        "learned_length_embedding": "length_embed" in mapped,
    }
    if fields["learned_length_embedding"]:
        # Only the RLT authors' model has length_embed, and it builds its norms with torch's default epsilon.
        fields.update(norm_eps=1e-5, fc_norm_eps=1e-5)
    conv = next((v for k, v in state.items() if k.endswith("patch_embed.proj.weight")), None)
    if conv is not None and conv.dim() == 5:
        width, channels, tubelet, patch, _ = conv.shape
        fields.update(width=width, channels=channels, tubelet_size=tubelet, patch_size=patch)
    blocks = {int(m.group(1)) for k in mapped if (m := re.match(r"blocks\.(\d+)\.", k))}
    if blocks:
        fields["depth"] = max(blocks) + 1
    fc1 = mapped.get("blocks.0.mlp.fc1.weight")
    if fc1 is not None and fc1.dim() == 2:
        fields["mlp_ratio"] = fc1.shape[0] / fc1.shape[1]
    return PretrainedWeights(path, mapped, fields)


def _strip(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drops container prefixes and the pre-training decoder; ``encoder.norm`` becomes ``fc_norm``."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for prefix in ("module.", "model.", "backbone."):
            key = key.removeprefix(prefix)
        if key.startswith("encoder."):
            key = key.removeprefix("encoder.")
            key = "fc_" + key if key.startswith("norm.") else key
        if not key.startswith(_PRETRAINING_ONLY):
            out[key] = value
    return out


def _videomae_to_model(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    mapped: dict[str, torch.Tensor] = {}
    for key, value in _strip(state).items():
        if key == "patch_embed.proj.weight":
            if value.dim() != 5:
                raise ValueError(f"patch_embed.proj.weight {tuple(value.shape)} is not a Conv3d tubelet embedding")
            d = value.shape[0]
            mapped["patch_embed.weight"] = value.permute(0, 2, 3, 4, 1).reshape(d, -1)
        elif key == "patch_embed.proj.bias":
            mapped["patch_embed.bias"] = value
        elif key == "pos_embed":
            if value.dim() < 2 or not _is_sinusoid_table(value):
                raise ValueError("pos_embed is learned, not VideoMAE's fixed sinusoid table, which this model uses")
        else:
            mapped[key] = value
    for key in [k for k in mapped if k.endswith(".attn.qkv.weight")]:
        for bias in ("q_bias", "v_bias"):  # VideoMAE with qkv_bias=False
            mapped.setdefault(key.replace("qkv.weight", bias), torch.zeros(mapped[key].shape[0] // 3))
    return mapped


def _is_sinusoid_table(pos_embed: torch.Tensor) -> bool:
    rows = pos_embed.reshape(-1, pos_embed.shape[-1]).float()
    return torch.allclose(rows, sinusoid_table(*rows.shape), atol=1e-4)


def _model_to_hf(model: VideoViT) -> dict[str, torch.Tensor]:
    """Our weights in Hugging Face's names (transformers 4's, which 5 also reads)."""
    config, state = model.config, {k: v.detach().float() for k, v in model.state_dict().items()}
    d, ts, p, c = config.width, config.tubelet_size, config.patch_size, config.channels
    bias = state["patch_embed.bias"].clone()
    if config.learned_length_embedding:
        bias += state["length_embed"][0, 0]
    if config.run_length_embedding:
        bias += model.length_table[1]
    out = {
        "videomae.embeddings.patch_embeddings.projection.weight": state["patch_embed.weight"]
        .reshape(d, ts, p, p, c)
        .permute(0, 4, 1, 2, 3),
        "videomae.embeddings.patch_embeddings.projection.bias": bias,
    }
    for i in range(config.depth):
        ours, theirs = f"blocks.{i}.", f"videomae.encoder.layer.{i}."
        query, key, value = state[ours + "attn.qkv.weight"].chunk(3)
        proj_w, proj_b = state[ours + "attn.proj.weight"], state[ours + "attn.proj.bias"]
        fc2_w, fc2_b = state[ours + "mlp.fc2.weight"], state[ours + "mlp.fc2.bias"]
        if config.layer_scale:  # gamma * (W x + b) = (gamma W) x + gamma b
            gamma_1, gamma_2 = state[ours + "gamma_1"], state[ours + "gamma_2"]
            proj_w, proj_b = gamma_1[:, None] * proj_w, gamma_1 * proj_b
            fc2_w, fc2_b = gamma_2[:, None] * fc2_w, gamma_2 * fc2_b
        out |= {
            theirs + "attention.attention.query.weight": query,
            theirs + "attention.attention.key.weight": key,
            theirs + "attention.attention.value.weight": value,
            theirs + "attention.attention.q_bias": state[ours + "attn.q_bias"],
            theirs + "attention.attention.v_bias": state[ours + "attn.v_bias"],
            theirs + "attention.output.dense.weight": proj_w,
            theirs + "attention.output.dense.bias": proj_b,
            theirs + "intermediate.dense.weight": state[ours + "mlp.fc1.weight"],
            theirs + "intermediate.dense.bias": state[ours + "mlp.fc1.bias"],
            theirs + "output.dense.weight": fc2_w,
            theirs + "output.dense.bias": fc2_b,
            theirs + "layernorm_before.weight": state[ours + "norm1.weight"],
            theirs + "layernorm_before.bias": state[ours + "norm1.bias"],
            theirs + "layernorm_after.weight": state[ours + "norm2.weight"],
            theirs + "layernorm_after.bias": state[ours + "norm2.bias"],
        }
    ours, theirs = ("fc_norm", "fc_norm") if config.pooling == "mean" else ("norm", "videomae.layernorm")
    out |= {
        f"{theirs}.weight": state[f"{ours}.weight"],
        f"{theirs}.bias": state[f"{ours}.bias"],
        "classifier.weight": state["head.weight"],
        "classifier.bias": state["head.bias"],
    }
    return {k: v.contiguous() for k, v in out.items()}


def _architecture(fields: Mapping[str, Any]) -> dict[str, int]:
    """The fields that must agree between weights and a model, those ``fields`` has."""
    if "mlp_ratio" in fields and "width" in fields:
        fields = {**fields, "mlp": int(fields["width"] * fields["mlp_ratio"])}
    names = ("width", "depth", "heads", "mlp", "tubelet_size", "patch_size", "channels")
    return {k: fields[k] for k in names if k in fields}


def _describe(arch: Mapping[str, int]) -> str:
    names = {"width": "width {}", "depth": "depth {}", "heads": "{} heads", "mlp": "MLP {}"}
    names |= {"tubelet_size": "tubelet {}", "patch_size": "patch {}", "channels": "{} channels"}
    return ", ".join(names[k].format(v) for k, v in arch.items())
