"""`generate --batch-size auto` (the default): the largest candidate batch that fits this machine.

A video depends, by float rounding, on its batch-mates, so the batch size is part of a generation's request:
it is chosen once, recorded in the manifest, and a re-run of the folder takes the recorded one (free memory
may have changed since). With several processes, each measures its own device and all take the smallest.

On a GPU: one video is sampled and judged on its own while the allocator's peak is measured, and the batch is
as many such videos as fit in a share of the free memory. On the CPU, memory is rarely what limits and every
core is busy from a small batch on (benchmarks/NOTES.md): two videos per core. Never more than --n, so that
a class's first batch does not sample far more candidates than it can keep.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

GPU_MEMORY_SHARE = 0.85  # of the free memory: headroom for the allocator's fragmentation
VIDEOS_PER_CPU_CORE = 2
MAX_BATCH = 64  # beyond this a batch only delays the first written video


def batch_for_memory(free_bytes: int, bytes_per_video: int, cap: int) -> int:
    """How many videos of `bytes_per_video` fit in GPU_MEMORY_SHARE of `free_bytes`: at least 1, at most `cap`."""
    fits = int(free_bytes * GPU_MEMORY_SHARE) // max(1, bytes_per_video)
    return max(1, min(cap, fits))


def automatic_batch_size(device: torch.device, sample_one: Callable[[], None], n: int) -> int:
    """The batch for `device`; `sample_one()` samples and judges one video there (run only on a GPU)."""
    cap = min(MAX_BATCH, n)
    if device.type != "cuda":
        return max(1, min(cap, VIDEOS_PER_CPU_CORE * torch.get_num_threads()))
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    sample_one()
    torch.cuda.synchronize(device)
    per_video = torch.cuda.max_memory_allocated(device) - before
    torch.cuda.empty_cache()  # the probe's blocks, cached by the allocator, count as free for the batch
    free, _ = torch.cuda.mem_get_info(device)
    return batch_for_memory(free, per_video, cap)
