"""Process-group set-up under torchrun: ranks from the environment, device choice, timeouts, logging.

Once the group exists, the collectives and DDP helpers are t2t.engine.collectives'. Everything here
is a no-op in a single process, so callers never branch on world size themselves.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Optional

import torch
import torch.distributed as dist

from ..errors import EXIT_FAILED, T2TError
from .collectives import first_collective, set_collective_device

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job: rank, world size, local rank, device and backend."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def env_int(name: str, default: int) -> int:
    """An integer environment variable (torchrun's RANK, TORCHELASTIC_RESTART_COUNT, ...); `default` if unset."""
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


class DeviceError(T2TError, ValueError):
    """A device that does not exist or cannot be used here."""


# Where the NVIDIA kernel driver says which version it is (present whenever it is loaded).
NVIDIA_DRIVER_FILE = "/proc/driver/nvidia/version"
# The oldest Linux driver each CUDA major version of the torch wheels runs on (NVIDIA's CUDA release notes,
# minor-version compatibility), newest first: which wheel to suggest for the driver found.
_WHEEL_FOR_DRIVER = ((580, "cu130", "13.0"), (525, "cu126", "12.6"), (450, "cu118", "11.8"))


def nvidia_driver_version() -> Optional[str]:
    """The NVIDIA driver's version when one is installed here (its /proc file, else nvidia-smi); None otherwise."""
    try:
        with open(NVIDIA_DRIVER_FILE, encoding="utf-8", errors="replace") as f:
            found = re.search(r"Kernel Module(?: for \S+)?\s+(\d+(?:\.\d+)+)", f.read())
        return found.group(1) if found else "unknown (see " + NVIDIA_DRIVER_FILE + ")"
    except OSError:
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        return f"unknown (nvidia-smi failed: {e})"
    lines = out.stdout.split()
    return lines[0] if out.returncode == 0 and lines else f"unknown (nvidia-smi exited {out.returncode})"


def check_nvidia_gpu_usable() -> None:
    """DeviceError when an NVIDIA GPU is installed here but this torch cannot use it (an old driver, a CPU build).

    Without this, device 'auto' would quietly train in float32 on the CPU of a GPU node.
    """
    if torch.cuda.is_available():
        return
    driver = nvidia_driver_version()
    if driver is None:
        return
    cuda = torch.version.cuda
    built = f"built for CUDA {cuda}" if cuda else "a CPU-only build"
    major = re.match(r"\d+", driver)
    wheel = next((w for w in _WHEEL_FOR_DRIVER if major and int(major.group()) >= w[0]), None)
    fix = (f"pip install torch --index-url https://download.pytorch.org/whl/{wheel[1]} (CUDA {wheel[2]} runs on "
           f"drivers >= {wheel[0]})" if wheel else "upgrade the NVIDIA driver, then install a CUDA build of torch")
    raise DeviceError(f"device 'auto': an NVIDIA GPU is installed (driver {driver}) but torch {torch.__version__} "
                      f"({built}) cannot use it: install a torch that matches the driver, e.g. {fix}; or set the "
                      f"device to cpu (train.device=cpu, --device cpu) to run on the CPU on purpose")


def resolve_device(device: str = "auto", local_rank: int = 0, local_world_size: int = 1) -> torch.device:
    """'auto' -> cuda if available else cpu; 'cuda' -> the visible GPU for this LOCAL_RANK; anything else as given.

    'auto' on a machine with an NVIDIA GPU that torch cannot use is refused (check_nvidia_gpu_usable).

    With 'cuda' the ordinal is LOCAL_RANK % (visible devices): one process per GPU of the node when
    every process sees all of them, and cuda:0 when the launcher shows each task only its own GPU
    (`srun --gpus-per-task=1`, one-GPU containers), where cuda:LOCAL_RANK would not exist. A node
    whose processes would have to share GPUs (more local processes than visible devices, but more
    than one device) is refused, as is an explicit cuda:N that is not visible.
    """
    if device == "auto":
        check_nvidia_gpu_usable()
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise DeviceError(f"device {device!r} is not a device name; expected auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {device!r} requested but CUDA is not available; use cpu")
        count = torch.cuda.device_count()
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "(unset)")
        if dev.index is None:
            if 1 < count < local_world_size:
                raise DeviceError(
                    f"LOCAL_WORLD_SIZE={local_world_size} processes on this node but {count} visible CUDA devices "
                    f"(CUDA_VISIBLE_DEVICES={visible}): start one process per GPU (--nproc_per_node={count}) "
                    f"or give each task its own GPU")
            dev = torch.device("cuda", local_rank % count)
        elif dev.index >= count:
            raise DeviceError(f"device {device!r}: only {count} CUDA devices are visible "
                              f"(CUDA_VISIBLE_DEVICES={visible}); expected cuda:0 to cuda:{count - 1}")
    return dev


class DistributedSetupError(T2TError, RuntimeError):
    """The process group could not be formed: which rank waited for what, and for how long."""

    exit_status = EXIT_FAILED


def _attempt_prefix() -> str:
    """A store namespace of its own for each torchrun attempt.

    Under torchrun (torch >= 2.4) the workers' store is the elastic agent's TCPStore, and the agent
    keeps the same store server across restarts of the worker group. Without a namespace per attempt,
    the keys that gloo and NCCL write while a group forms (each rank's address, NCCL's unique id)
    are still there from the attempt before: a restarted rank reads a dead peer's address and fails
    to connect ('connectFullMesh failed ... Connection refused'), or waits for peers that are gone.
    The restart count is the same on every worker of one agent, so single-node restarts always
    agree; across nodes an agent that restarts only because another node failed keeps its count,
    which is why multi-node launches set TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 (a fresh store per
    rendezvous round; see scripts/slurm_train.sbatch).
    """
    return f"t2t/{os.environ.get('TORCHELASTIC_RUN_ID', 'run')}/attempt-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"


def _create_store(rank: int, world_size: int, timeout: timedelta) -> dist.Store:
    """The rendezvous store from MASTER_ADDR / MASTER_PORT, namespaced per torchrun attempt."""
    addr = os.environ.get("MASTER_ADDR", "127.0.0.1")
    port = env_int("MASTER_PORT", 29500)
    agent_hosts_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    try:
        store = dist.TCPStore(addr, port, world_size=world_size, is_master=rank == 0 and not agent_hosts_store,
                              timeout=timeout, wait_for_workers=False)
    except (RuntimeError, OSError) as e:
        raise DistributedSetupError(
            f"rank {rank} of {world_size} could not reach the rendezvous store at {addr}:{port} within "
            f"{timeout.total_seconds():.0f} s (dist.init_timeout_minutes): {e}") from None
    return dist.PrefixStore(_attempt_prefix(), store)


def init_distributed(device: str = "auto", *, timeout_minutes: float = 15.0,
                     init_timeout_minutes: float = 10.0, always_group: bool = False) -> DistInfo:
    """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK, pick the device and join the process group.

    The group is created when WORLD_SIZE > 1 (or `always_group`): NCCL for CUDA devices, gloo on the CPU. Forming
    the group may take `init_timeout_minutes` (peers that do not come make it fail with a message
    naming this rank); each later collective may wait `timeout_minutes`, which must cover the
    slowest checkpoint write of rank 0.
    """
    rank = env_int("RANK", 0)
    world_size = env_int("WORLD_SIZE", 1)
    local_rank = env_int("LOCAL_RANK", 0)
    dev = resolve_device(device, local_rank, env_int("LOCAL_WORLD_SIZE", 1))
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        # TF32 tensor cores for fp32 matmuls and convolutions (Ampere and newer; ignored elsewhere).
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True
    backend = None
    if world_size > 1 or always_group:
        backend = "nccl" if dev.type == "cuda" else "gloo"
        set_collective_device(dev if backend == "nccl" else torch.device("cpu"))
        if not dist.is_initialized():
            init_timeout = timedelta(minutes=init_timeout_minutes)
            store = _create_store(rank, world_size, init_timeout)
            started = time.monotonic()
            try:
                # Every rank checks in through the store first, within the set-up timeout: gloo and NCCL
                # would otherwise wait for a missing peer as long as any collective may (the group's
                # timeout, sized for the slowest checkpoint write).
                _wait_for_peers(store, world_size, init_timeout)
                dist.init_process_group(
                    backend=backend, store=store, rank=rank, world_size=world_size,
                    timeout=timedelta(minutes=timeout_minutes), device_id=dev if dev.type == "cuda" else None)
                first_collective()
            except (RuntimeError, dist.DistError) as e:
                waited = time.monotonic() - started
                raise DistributedSetupError(
                    f"rank {rank} of {world_size} waited {waited:.0f} s for the other ranks to form the {backend} "
                    f"process group (rendezvous {os.environ.get('MASTER_ADDR', '?')}:"
                    f"{os.environ.get('MASTER_PORT', '?')}, limit dist.init_timeout_minutes={init_timeout_minutes:g}) "
                    f"and gave up: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        _logger.debug("Joined process group: rank %d of %d, backend %s, device %s", rank, world_size, backend, dev)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev, backend=backend)


def _wait_for_peers(store: dist.Store, world_size: int, timeout: timedelta) -> None:
    """Return once all `world_size` ranks have reached this point (keys live in this attempt's namespace)."""
    if store.add("joined", 1) == world_size:
        store.set("all_joined", "1")
    try:
        store.wait(["all_joined"], timeout)
    except (RuntimeError, dist.DistError) as e:
        joined = store.add("joined", 0)
        raise RuntimeError(f"only {joined} of {world_size} ranks joined") from e


def cleanup_distributed() -> None:
    """Leave the process group, if one was created."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def setup_logging(is_main: bool, log_file: str | None = None) -> None:
    """Configure the root logger: INFO on rank 0, WARNING and above on the other ranks.

    Messages go to stdout; `log_file`, when given, receives the same records.
    """
    level = logging.INFO if is_main else logging.WARNING
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s" if is_main else \
        f"%(asctime)s %(levelname)s [rank {os.environ.get('RANK', '?')}] %(name)s: %(message)s"
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if log_file:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    formatter = logging.Formatter(fmt, datefmt="%Y-%m-%d %H:%M:%S")
    for handler in handlers:
        handler.setFormatter(formatter)
    logging.basicConfig(level=level, handlers=handlers, force=True)
