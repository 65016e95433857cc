"""Run settings read from a file: JSON, or YAML when PyYAML is installed (``pyaeplus train --config``)."""

from __future__ import annotations

import json
import pathlib


def read_settings(path) -> dict:
    """The mapping of settings in ``path`` (``.json``; ``.yaml``/``.yml`` with PyYAML).

    Raises:
        FileNotFoundError when the file is missing; ValueError when it is not valid JSON, needs PyYAML
        that is not installed, or does not hold a mapping.
    """
    p = pathlib.Path(path)
    if not p.exists():
        raise FileNotFoundError(f"config file {p} not found")
    text = p.read_text()
    if p.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ValueError(f"{p} is YAML but PyYAML is not installed "
                             "(pip install pyyaml, or write the same keys as JSON)") from None
        cfg = yaml.safe_load(text)
    else:
        try:
            cfg = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{p} is not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{p} must hold a mapping of settings, got {type(cfg).__name__}")
    return cfg


# flag (argparse dest) -> run-config key of pyaeplus.train.run
_FLAGS = {"model": "model", "data": "data", "split": "split", "val_data": "val_data", "val_split": "val_split",
          "normalize": "normalize", "epochs": "epochs", "batch_size": "batch_size", "lr": "lr",
          "optimizer": "optimizer", "weight_decay": "weight_decay", "device": "device", "seed": "seed",
          "out": "checkpoint_dir", "log_dir": "log_dir", "patience": "patience", "num_workers": "num_workers",
          "grad_clip": "grad_clip"}


def run_settings(path, flags: dict, data_options=None) -> dict:
    """The run config of :func:`pyaeplus.train.run`: the settings of ``path`` (or none), with the
    flags given (not None) winning, as ``pyaeplus train`` reads them.

    Args:
        path: settings file (:func:`read_settings`) or None.
        flags: ``pyaeplus train``'s parsed flags (argparse dests: ``model``, ``out``, ``model_config`` as
            JSON text, ``classes``, ``amp`` ``"auto"|"off"|"bf16"|"fp16"``, ``resume``, ``no_progress`` ...).
        data_options: ``KEY=VALUE`` loader options (JSON values), merged over the file's ``data_options``.

    Returns:
        dict for ``pyaeplus.train.run``; ``checkpoint_dir`` defaults to ``runs/<model>``.
    """
    from .data.spec import json_value, parse_options

    cfg = read_settings(path) if path else {}
    opts = {**(cfg.get("data_options") or {}), **parse_options(data_options)}
    cfg.update({key: flags[flag] for flag, key in _FLAGS.items() if flags.get(flag) is not None})
    if flags.get("model_config") is not None:
        mc = json_value(flags["model_config"])
        if not isinstance(mc, dict):
            raise ValueError(f"--model-config must be a JSON object, got {flags['model_config']!r}")
        cfg["model_config"] = {**cfg.get("model_config", {}), **mc}
    if flags.get("classes") is not None:
        opts["classes"] = flags["classes"]
    if opts:
        cfg["data_options"] = opts
    if flags.get("amp") is not None:
        cfg["amp"] = {"auto": True, "off": False}.get(flags["amp"], flags["amp"])
    if flags.get("resume"):
        cfg["resume"] = flags["resume"]
    if flags.get("no_progress"):
        cfg["progress"] = False
    cfg.setdefault("checkpoint_dir", "runs/" + str(cfg.get("model", "model")))
    return cfg
