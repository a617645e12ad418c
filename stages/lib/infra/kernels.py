"""Which CPU kernels torch computes with (`base.kernels`), fixed before torch loads.

The same params give other bits on another CPU unless three libraries inside torch are told
which code to run; each picks the fastest its CPU has, and each rounds its own way:
- MKL (matrix products: the linear layers, their gradients): by default it picks kernels by
  the CPU's vendor and instruction set. `MKL_CBWR=AVX2` (even `AVX2,STRICT`) still gives an
  Intel and an AMD CPU other bits for training; only `COMPATIBLE` is vendor-neutral.
- oneDNN (the convolutions): AVX-512 kernels where the CPU has them. `ONEDNN_MAX_CPU_ISA=AVX2`
  caps it at AVX2, whose kernels give the same bits on every CPU that has AVX2, Intel or AMD.
- ATen (torch's own element-wise kernels and reductions): AVX-512 or AVX2 builds of the same
  code, chosen by the CPU; `ATEN_CPU_CAPABILITY=avx2` takes the AVX2 build everywhere.

`portable` (the default) sets all three, so that every x86-64 CPU with AVX2 (Intel or AMD,
with or without AVX-512) computes the committed dvc.lock, given the same thread count.
`native` leaves each library its own choice: faster on some CPUs, and bits that only this
kind of CPU reproduces. docs/performance.md measures both, and docs/design.md says how this
was found.

Each library reads its variable once, at its first use, so `pin_for_project` runs in
`stages/__init__.py`, before any stage, tool or test imports torch; `use_kernels` checks, in
a stage, that the libraries really run what the setting asks (each library's own verbose
output says so), and refuses to compute under a record that would not be true.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import platform
import re
import sys
import tempfile
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

SETTINGS = ("portable", "native")
DEFAULT = "portable"
# What `portable` sets, and what each library then reports (kernels_in_effect) when it runs.
PORTABLE_ENV = {"MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "AVX2",
                "ATEN_CPU_CAPABILITY": "avx2"}
PORTABLE_IN_EFFECT = {"mkl": "COMPATIBLE", "onednn": "Intel AVX2", "aten": "AVX2"}
# The CPU features the AVX2 kernels use: an x86-64 CPU without them cannot run portable mode.
PORTABLE_CPU_FLAGS = ("avx2", "fma")
PARAMS_FILE = Path("params.yaml")


@dataclass(frozen=True)
class Kernels:
    setting: str              # base.kernels: portable | native
    in_effect: dict[str, str]  # what MKL, oneDNN and ATen said they run

    def __str__(self) -> str:
        libraries = ", ".join(f"{name} {value}" for name, value in (
            ("MKL", self.in_effect["mkl"]), ("oneDNN", self.in_effect["onednn"]),
            ("ATen", self.in_effect["aten"])))
        return f"{self.setting} kernels ({libraries})"


def kernels_setting(params_file: Path = PARAMS_FILE) -> str:
    """base.kernels as params.yaml says it; the default where the file is missing or the
    value is not valid (check_params then says what is wrong, before any stage runs)."""
    from .files import read_yaml

    try:
        setting = ((read_yaml(params_file, "params") or {}).get("base") or {}).get("kernels")
    except (UserError, AttributeError):
        return DEFAULT
    return setting if setting in SETTINGS else DEFAULT


def pin(setting: str, environ: MutableMapping[str, str] = os.environ) -> None:
    """Set (portable) or clear (native) the variables the three libraries read at their
    first use; a value already in the environment is replaced, so the setting decides."""
    for name, value in PORTABLE_ENV.items():
        if setting == "portable":
            environ[name] = value
        else:
            environ.pop(name, None)


def pin_for_project() -> None:
    """stages/__init__.py: the kernels params.yaml asks for, in this process and the ones it
    starts, before torch computes anything."""
    pin(kernels_setting())


def _cpuinfo() -> str | None:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return None


def _cpu_field(cpuinfo: str, name: str) -> str | None:
    found = re.search(rf"^{name}\s*:(.*)$", cpuinfo, re.M)
    return found.group(1).strip() if found else None


def cpu_name(cpuinfo: str | None = None) -> str:
    """The CPU as the OS names it, with its widest vector instructions, e.g. "AMD EPYC
    (AVX-512)": what every measurement and every run of the tests names. Under qemu-user it
    is the host's, not the emulated CPU's."""
    cpuinfo = _cpuinfo() if cpuinfo is None else cpuinfo
    name = (cpuinfo and _cpu_field(cpuinfo, "model name")) or platform.processor() \
        or platform.machine()
    flags = set(((cpuinfo and _cpu_field(cpuinfo, "flags")) or "").split())
    widest = next((label for flag, label in (("avx512f", "AVX-512"), ("avx2", "AVX2"))
                   if flag in flags), None)
    return f"{name} ({widest})" if widest else name


def portable_problem(machine: str | None = None, cpuinfo: str | None = None) -> str | None:
    """Why this CPU cannot run the portable kernels (None: it can)."""
    machine = machine or platform.machine()
    if machine not in ("x86_64", "AMD64"):
        return f"they are x86-64 kernels and this CPU is {machine}"
    cpuinfo = _cpuinfo() if cpuinfo is None else cpuinfo
    if cpuinfo is None:
        return None  # no way to tell here: the libraries' own report decides
    flags = set((_cpu_field(cpuinfo, "flags") or "").split())
    missing = [flag for flag in PORTABLE_CPU_FLAGS if flag not in flags]
    return f"this CPU lacks {' and '.join(flag.upper() for flag in missing)}" if missing else None


def check_setting(setting: str) -> None:
    """check_params: portable kernels on a CPU that has none is an error, before any stage."""
    if setting == "portable" and (problem := portable_problem()):
        raise UserError(f"base.kernels: portable needs an x86-64 CPU with AVX2 and FMA, and "
                        f"{problem}; set base.kernels: native in params.yaml (the numbers "
                        f"are then reproducible on this kind of CPU only)")


@contextlib.contextmanager
def _captured_stdout() -> Iterator[list[str]]:
    """What C code writes to file descriptor 1 inside the block (MKL and oneDNN print their
    verbose lines there, through C's own buffer): appended to the list as the block ends."""
    lines: list[str] = []
    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    libc.fflush(None)
    saved = os.dup(1)
    with tempfile.TemporaryFile(mode="w+") as captured:
        os.dup2(captured.fileno(), 1)
        try:
            yield lines
        finally:
            libc.fflush(None)
            os.dup2(saved, 1)
            os.close(saved)
            captured.seek(0)
            lines.extend(captured.read().splitlines())


@functools.cache
def kernels_in_effect() -> dict[str, str]:
    """What MKL, oneDNN and ATen compute with in this process, as each reports it: MKL's
    conditional-numerical-reproducibility branch (CNR), oneDNN's instruction set, ATen's
    CPU capability. Fixed for the life of the process at each library's first use."""
    import torch
    import torch.nn.functional as F

    with _captured_stdout() as lines:
        with torch.backends.mkl.verbose(torch.backends.mkl.VERBOSE_ON):
            torch.mm(torch.ones(2, 2), torch.ones(2, 2))
        with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
            F.conv2d(torch.ones(16, 3, 8, 8), torch.ones(8, 3, 3, 3))
    text = "\n".join(lines)
    mkl = re.search(r"^MKL_VERBOSE .* CNR:(\S+)", text, re.M)
    onednn = re.search(r"^onednn_verbose,.*,info,cpu,isa:(.+)$", text, re.M)
    return {"mkl": mkl.group(1) if mkl else "unknown",
            "onednn": onednn.group(1).strip() if onednn else "unknown",
            "aten": torch.backends.cpu.get_cpu_capability()}


def use_kernels(setting: str) -> Kernels:
    """The kernels this stage computes with: `setting` (base.kernels), checked against what
    the libraries report. Portable kernels that are not in effect (torch computed something
    before stages/__init__.py pinned them, or this CPU has no AVX2) are an error: the outputs
    would say `portable` and not be."""
    in_effect = kernels_in_effect()
    if setting == "portable" and in_effect != PORTABLE_IN_EFFECT:
        check_setting(setting)  # the CPU's own reason, when it has one
        differ = ", ".join(f"{name} {in_effect[name]} (not {want})"
                           for name, want in PORTABLE_IN_EFFECT.items()
                           if in_effect[name] != want)
        raise UserError(f"base.kernels: portable, but this process computes with {differ}: "
                        f"torch ran before the kernels were pinned (run stages as `python -m "
                        f"stages.NAME`, and import stages before torch)")
    if setting == "native" and in_effect["mkl"] != "OFF":
        raise UserError(f"base.kernels: native, but MKL computes with its {in_effect['mkl']} "
                        f"branch in this process: torch ran before the kernels were chosen")
    return Kernels(setting, in_effect)
