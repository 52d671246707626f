"""What the training runs in: bf16 weights where the hardware computes them natively (train.precision),
and the memory it took."""

from pathlib import Path

from edgetune.core.config import TrainParams


def bf16_supported() -> bool:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:  # bf16 matmuls are fast only with native support (AVX-512 BF16 or AMX)
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(p: TrainParams) -> bool:
    return p.precision == "bf16" or (p.precision == "auto" and bf16_supported())


def peak_memory() -> dict:
    """This process's peak resident memory and, on a GPU, the peak memory torch allocated there."""
    import resource

    import torch

    peak = {"peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}  # Linux reports KiB
    if torch.cuda.is_available():
        peak["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return peak
