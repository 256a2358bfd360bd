"""`survgen info`: versions, device, kernel backends, and a preset's parameters, sampling cost and training memory."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer
from rich.table import Table

from survgen import __version__
from survgen.cli.common import AsJson, app, user_errors
from survgen.console import show, text


@app.command()
@user_errors
def info(
    preset: Annotated[Optional[str], typer.Option(help="Also report parameter counts of this preset (tiny | sd15).")] = None,
    arch: Annotated[Optional[str], typer.Option(help="With --preset: video model of those counts: survgen | lvdm | endora.", show_default="survgen")] = None,
    memory: Annotated[bool, typer.Option("--memory", help="Also count each training stage's memory at --preset (bytes on the meta device).")] = False,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1, help="--memory: frames (stage 1) or clips (stage 2) per step.", show_default="1")] = None,
    image_size: Annotated[Optional[int], typer.Option(min=8, help="--memory: frame size.", show_default="the preset's: sd15 256, tiny 64")] = None,
    mixed_precision: Annotated[Optional[str], typer.Option("--mixed-precision", help="--memory: bf16 | fp16 | no.", show_default="bf16")] = None,
    as_json: AsJson = False,
):
    """Versions, device, kernel backends (and why not), parameter counts and sampling FLOPs of a preset.

    Examples:
      survgen info --arch endora --preset sd15
      survgen info --preset sd15 --memory --batch-size 2
    """
    if arch is not None and not preset:
        raise ValueError(f"--arch {arch} picks the model whose parameters --preset counts: add --preset tiny or sd15")
    unused = [flag for flag, value in (("--batch-size", batch_size), ("--image-size", image_size),
                                       ("--mixed-precision", mixed_precision)) if value is not None]
    if unused and not memory:
        raise ValueError(f"{', '.join(unused)} only shape the --memory count: add --memory --preset tiny|sd15")
    report = _environment()
    if preset:
        report.update(_preset_cost(preset, arch or "survgen"))
    if memory:
        if not preset:
            raise ValueError("--memory counts a preset's training memory: add --preset tiny or --preset sd15")
        from survgen.training.memory import training_memory

        report["memory"] = training_memory(preset, batch_size=batch_size or 1, image_size=image_size,
                                           mixed_precision=mixed_precision or "bf16")
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    counted = report.pop("memory", None)
    show(_info_table(report))
    if counted:
        show(_memory_table(counted))
        show(text("\n".join(f"  - {a}" for a in counted["assumptions"])))


def _environment() -> dict:
    """Versions, the device, the attention backend each device and use picks (and why the others cannot run or are
    passed over), the decoder."""
    import diffusers
    import torch
    import transformers

    from survgen.data.video import video_backend
    from survgen.kernels.backends import BackendUnavailableError, backend_report, describe_choice

    attention = {}
    for device in ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",):
        probe = torch.empty(1, 1, 1, 1, device=device)
        for use, training in (("inference", False), ("training", True)):
            try:
                attention[f"{device} {use}"] = describe_choice(probe, training)
            except BackendUnavailableError as e:  # $SURVGEN_ATTENTION names one that cannot run here
                attention[f"{device} {use}"] = str(e).splitlines()[0]
    return {
        "survgen": __version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (no CUDA device)",
        "attention_backend": attention,
        "attention_backends": {name: (reasons or "available") for name, reasons in backend_report().items()},
        "video_backend": video_backend(),
    }


def _preset_cost(preset: str, arch: str) -> dict:
    """Parameter counts and sampling FLOPs of a preset's video model, counted on the meta device (a cost
    model, not a timing)."""
    from survgen.diffusion.cost import sampling_flops
    from survgen.models.counts import preset_parameter_counts

    cost = sampling_flops(arch, preset)
    return {"parameters": {"arch": arch, "preset": preset, **preset_parameter_counts(preset, arch)},
            "sampling_cost": {
                "published_sampling": _sampling_words(cost),
                "guided_steps": cost["guided_steps"], "steps_reusing_deep_features": cost["reused_steps"],
                "tflop_per_step": round(cost["flops_per_step"] / 1e12, 3),
                "tflop_per_video": round(cost["flops_per_video"] / 1e12, 2)}}


def _sampling_words(cost: dict) -> str:
    """e.g. "dpm++ 8 steps, guidance on 5 of them, deep features reused on 4, at 256 px, 16 frames"."""
    words = f"{cost['sampler']} {cost['steps']} steps, guidance on {cost['guided_steps']} of them"
    if cost["reused_steps"]:
        words += f", deep features reused on {cost['reused_steps']}"
    return words + f", at {cost['image_size']} px, {cost['frames']} frames"


def _info_table(report: dict) -> Table:
    table = Table(title="survgen info", show_header=False)
    for key, value in report.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                shown = f"{v:,}" if isinstance(v, int) else ("; ".join(v) if isinstance(v, list) else str(v))
                table.add_row(text(f"{key}.{sub}"), text(shown))
        else:
            table.add_row(text(key), text(value))
    return table


def _memory_table(memory: dict) -> Table:
    from survgen.training.memory import GiB

    table = Table(title=f"training memory in GiB, counted: {memory['preset']}, batch {memory['batch_size']}, "
                        f"{memory['image_size']} px, {memory['mixed_precision']}")
    stages = {"stage 1: frames": memory["spatial"], f"stage 2: {memory['temporal']['frames']}-frame clips": memory["temporal"]}
    table.add_column("")
    for name in stages:
        table.add_column(name, justify="right")
    rows = [("frozen weights", "frozen_weights"), ("trainable weights", "trainable_weights"),
            ("gradients", "gradients"), ("AdamW moments", "optimizer_state"), ("EMA", "ema"),
            ("AdamW step temporaries", "adamw_step_temporaries")]
    for label, key in rows:
        table.add_row(label, *(f"{s[key] / GiB:.2f}" for s in stages.values()))
    for checkpointing, label in (("no_checkpointing", ""), ("checkpointing", ", checkpointed")):
        table.add_row(f"saved activations{label}",
                      *(f"{s['saved_activations'][checkpointing] / GiB:.2f}" for s in stages.values()))
        table.add_row(f"[bold]total{label}", *(f"[bold]{s['total'][checkpointing] / GiB:.2f}" for s in stages.values()))
    return table
