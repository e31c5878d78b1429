"""``qfast quantize MODEL -o OUT ...``: the model form of the ``quantize`` command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .._qfast import QfastError
from ._common import PROG, CLIError, Threads, read_text

__all__ = ["resolve_model", "run_model"]

_CMD = f"{PROG} quantize"
#: Held-out paragraphs --eval draws from (enough text for 8+ windows of 512 tokens).
_EVAL_PARAGRAPHS = 400


def resolve_model(arg: str) -> Path:
    """A path that exists, or a registry asset's name (case-insensitive), fetched."""
    path = Path(arg)
    if path.exists():
        return path
    from .. import assets

    names = {n.lower(): n for n in assets.ASSETS}
    name = names.get(arg.lower())
    if name is None or assets.ASSETS[name].main is None:
        models = [n for n, a in assets.ASSETS.items() if a.main is not None]
        raise CLIError(
            f"{_CMD}: error: {arg}: no such file or folder (nor a model asset: {', '.join(models)})"
        )
    try:
        return assets.fetch(name)
    except assets.AssetError as e:
        raise CLIError(f"{_CMD}: error: cannot fetch {name}: {e}") from None


def _recipe(args: argparse.Namespace) -> Any:
    from ..model.recipe import Recipe

    base: dict[str, Any] = {}
    if args.recipe is not None:
        try:
            base = Recipe.from_json(Path(args.recipe).read_text(encoding="utf-8")).to_dict()
        except OSError as e:
            raise CLIError(f"{_CMD}: error: --recipe {args.recipe}: {e.strerror or e}") from None
        except (ValueError, TypeError) as e:
            raise CLIError(f"{_CMD}: error: --recipe {args.recipe}: {e}") from None
    fields: dict[str, Any] = {}
    if args.method is not None:
        fields["method"] = args.method
        # the recipe's method-dependent defaults follow the new method
        for key in ("bits", "group_size", "symmetric", "scale_dtype"):
            base.pop(key, None)
    if args.bits is not None:
        fields["bits"] = args.bits
    if args.asymmetric:
        fields["symmetric"] = False
    elif (args.method or base.get("method")) == "hqq":
        fields.setdefault("symmetric", False)
    if args.group_size is not None:
        fields["group_size"] = args.group_size
    if args.per_channel:
        fields["group_size"] = None
    if args.act_order:
        fields["act_order"] = True
    if args.static_groups:
        fields["static_groups"] = True
    if args.damp is not None:
        fields["damp"] = args.damp
    if args.scale_dtype is not None:
        fields["scale_dtype"] = args.scale_dtype
    if args.axis is not None or args.per_tensor:
        raise CLIError(
            f"{_CMD}: error: --axis / --per-tensor apply to one tensor file; a model's "
            "linears take --group-size G or --per-channel"
        )
    try:
        return Recipe.from_dict({**base, **fields})
    except (ValueError, TypeError) as e:
        raise CLIError(f"{_CMD}: error: {e}") from None


def _calibration(args: argparse.Namespace) -> Any:
    if args.calibration is None:
        return None
    return read_text(args.calibration, "--calibration", _CMD)


class _Bar:
    """A tqdm bar over the blocks (or nothing)."""

    def __init__(self, enabled: bool, header: str) -> None:
        self.bar: Any = None
        self.enabled = enabled
        self.header: str | None = header

    def __call__(self, done: int, total: int, desc: str) -> None:
        if self.header is not None:  # once the run has started (its checks passed)
            print(self.header, file=sys.stderr, flush=True)
            self.header = None
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm.auto import tqdm  # type: ignore[import-untyped, unused-ignore]

            self.bar = tqdm(total=total, unit="block", desc="quantize", file=sys.stderr)
        self.bar.set_postfix_str(desc, refresh=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_model(args: argparse.Namespace) -> int:
    """Runs ``qfast quantize MODEL -o OUT``; returns 0 (errors raise CLIError)."""
    from ..model.checkpoint import load_model
    from ..model.quantize import quantize_model

    recipe = _recipe(args)
    calibration = _calibration(args)
    source = resolve_model(args.input)
    out = Path(args.out)
    if out.exists() and not args.overwrite and (not out.is_dir() or any(out.iterdir())):
        raise CLIError(f"{_CMD}: error: {out} exists; pick a new folder or pass --overwrite")
    if not out.parent.is_dir():
        raise CLIError(f"{_CMD}: error: {out.parent}: no such folder to write {out.name} in")
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    try:
        model = load_model(source, compute="float")
    except MemoryError:
        raise
    except (OSError, ValueError, TypeError, ImportError, KeyError, QfastError) as e:
        raise CLIError(f"{_CMD}: error: cannot load {source}: {e}") from None
    kwargs: dict[str, Any] = {}
    if args.samples is not None:
        kwargs["samples"] = args.samples
    if args.seq_len is not None:
        kwargs["seq_len"] = args.seq_len
    bar = _Bar(progress, f"{_CMD}: {source} -> {out}: {recipe.describe()}")
    with Threads(args.threads):
        try:
            q = quantize_model(
                model,
                recipe,
                calibration,
                output=out,
                format=args.format or "qfast",
                checkpoint_format=args.checkpoint_format,
                overwrite=args.overwrite,
                progress=bar,
                **kwargs,
            )
        except (ValueError, TypeError) as e:
            raise CLIError(f"{_CMD}: error: {e}") from None
        except OSError as e:
            raise CLIError(f"{_CMD}: error: cannot write {out}: {e.strerror or e}") from None
        finally:
            bar.close()
        report = q.quantize_report
        print(report.table())
        if args.eval:
            print()
            print(_evaluate(q, source, args, progress).table())
    return 0


def _evaluate(q: Any, source: Path, args: argparse.Namespace, progress: bool) -> Any:
    from ..calibration.text import heldout_paragraphs
    from ..model.checkpoint import load_model
    from ..model.evaluate import evaluate

    reference = load_model(source, compute="float")
    if q.kind == "encoder":
        text: Any = heldout_paragraphs(32 * args.eval_windows)
        return evaluate(q, text, reference, progress=progress)
    text = "\n".join(heldout_paragraphs(_EVAL_PARAGRAPHS))
    return evaluate(
        q, text, reference, n_ctx=512, max_tokens=512 * args.eval_windows, progress=progress
    )
