"""Where the maths runs: device choice, mixed precision, bf16 on CPUs and the memory allocator,
shared by train.py and predict.py."""
from __future__ import annotations

import ctypes
import os
import platform
from contextlib import nullcontext
from pathlib import Path

import torch

from vitclassifier.errors import UserError

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt() parameters, from <malloc.h>
KEEP_FREED_BYTES = 2**30  # keep_freed_memory: blocks up to this size come from the heap and stay there


def pick_device(name: str) -> torch.device:
    """``auto`` prefers CUDA, then Apple's MPS, then the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is visible to PyTorch; use --device cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("--device mps: Apple's Metal backend is not available here; use --device cpu")
    return torch.device(name)


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matrix instructions (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The dtype to autocast to, or None for plain fp32."""
    if precision == "fp32" or (precision == "auto" and device.type == "mps"):
        return None
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_supports_bf16() else None
    return torch.bfloat16 if precision == "bf16" else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """The mixed-precision context for ``dtype``, or a no-op for plain fp32."""
    return torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()


def configure_backends(device: torch.device) -> None:
    """Let fp32 matmuls use TF32 tensor cores on Ampere and newer GPUs (NVIDIA: several times faster, 10-bit
    mantissa) and let cuDNN pick the fastest kernels for our fixed input size."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


def keep_freed_memory() -> bool:
    """Make glibc serve big tensors from its heap and keep freed memory for reuse. By default it maps
    fresh pages from the OS for every block over 32 MB and unmaps them on free, so each forward pass
    page-faults its activations in anew, a sizeable share of the time of an int8 prediction batch
    and of a training step in a fresh process (benchmarks/levers.py; figures in docs/performance.md).
    The price: up to 1 GiB of freed memory stays with the process.
    Returns False, changing nothing, where the C library is not glibc (macOS, Windows, musl)."""
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(
        libc.mallopt(M_MMAP_THRESHOLD, KEEP_FREED_BYTES) and libc.mallopt(M_TRIM_THRESHOLD, KEEP_FREED_BYTES)
    )


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity where the system has one (taskset, a
    container's cpuset), else every core."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def loader_workers(requested: int | None, device: torch.device) -> int:
    """DataLoader worker processes: ``requested``, or by default none on a CPU with up to 4 cores
    (the model needs every core: a worker takes one from it and training slows down, see
    docs/performance.md), 2 on bigger CPUs, and up to 8 feeding a GPU."""
    if requested is not None:
        return requested
    cores = usable_cores()
    if device.type == "cpu":
        return 0 if cores <= 4 else 2
    return min(8, cores // 2)
