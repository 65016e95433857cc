"""Argument types of the ``pyaeplus`` command: a bad value is refused at parse time with one line
naming the flag (``pyaeplus demo: error: argument --epochs: must be an integer >= 1, got '0'``) and exit
status 2, before anything runs."""

from __future__ import annotations

import argparse
import math


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block): ``pyaeplus demo: error: ...``, status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number_arg(cast, what: str, ok):
    """An argparse type: ``cast(text)`` that satisfies ``ok``, else an error saying ``what`` it must be."""
    def parse(text: str):
        try:
            v = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return v

    parse.__name__ = what
    return parse


def device_arg(text: str) -> str:
    """'auto' or a device that exists here (checked at parse time: no AssertionError from torch later)."""
    if text == "auto":
        return text
    from .runtime.devices import resolve_device

    try:
        resolve_device(text, name="the device")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def classes_arg(text: str) -> list[int]:
    try:
        return [int(c) for c in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated integer labels such as 0 or 1,7, got {text!r}") from None


def resume_arg(text: str):
    if text != "fallback":
        raise argparse.ArgumentTypeError(f"takes no value or 'fallback', got {text!r}")
    return text


POSITIVE_INT = _number_arg(int, "an integer >= 1", lambda v: v >= 1)
NONNEG_INT = _number_arg(int, "an integer >= 0", lambda v: v >= 0)
POSITIVE = _number_arg(float, "a finite number > 0", lambda v: math.isfinite(v) and v > 0)
NONNEG = _number_arg(float, "a finite number >= 0", lambda v: math.isfinite(v) and v >= 0)


def threshold_arg(text: str) -> str:
    """``--threshold`` checked at parse time, before any scoring: a NaN/Inf value, an unknown method
    or an out-of-range option such as ``percentile:q=200`` are refused here."""
    from .scoring.report import check_threshold_text

    try:
        check_threshold_text(text)
    except (ValueError, TypeError) as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text
