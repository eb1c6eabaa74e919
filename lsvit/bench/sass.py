"""Read compiled GPU code without a GPU: ptxas advisories and resources, the SASS main loop, occupancy.

Tools: ``ptxas``, ``cuobjdump`` from the Triton wheel (``<site-packages>/triton/backends/nvidia/bin``), else from
``$CUDA_HOME/bin``. Nothing here knows about a particular kernel: give it PTX (or a cubin) and it says

- ``ptxas_compile``: the cubin and the ``-v`` log (registers, spills, stack) plus every advisory ptxas prints
  (``(C7515) Potential Performance Loss: ...``);
- ``disassemble`` / ``main_loop``: the SASS instructions, the loops (backward branches), and the loop that
  holds the most MMA instructions, with its instruction mix (``LoopStats``: instructions per MMA, local-memory
  traffic, load widths, slow-path calls);
- ``read_library``: every kernel of every architecture in a binary with several (a fatbinary, or a library such
  as the compiled extension's ``.so``), with its resources from ``cuobjdump --dump-resource-usage``;
- ``ctas_per_sm``: resident CTAs per SM from registers, shared memory and threads (the occupancy rules of the
  CUDA programming guide for sm_80 and sm_90).

Used by ``lsvit.bench.gpu_audit`` for the Triton kernels and ``lsvit.bench.cuda_audit`` for the library's CUDA
kernels.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional


def tool(name: str) -> str:
    """Path of a CUDA binary tool (``ptxas``, ``cuobjdump``, ``nvdisasm``): the Triton wheel's, else CUDA_HOME's."""
    try:
        import triton

        bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
        if bundled.exists():
            return str(bundled)
    except ImportError:
        pass
    home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    found = Path(home) / "bin" / name
    if found.exists():
        return str(found)
    on_path = shutil.which(name)
    if on_path:
        return on_path
    raise FileNotFoundError(f"{name} not found: install triton (it ships {name}) or set CUDA_HOME to a CUDA toolkit")


def _cache_dir() -> Path:
    root = Path(os.environ.get("LSVIT_SASS_CACHE", Path.home() / ".cache" / "lsvit" / "sass"))
    root.mkdir(parents=True, exist_ok=True)
    return root


# ----------------------------------------------------------------------------------------------------------------
# ptxas


@dataclass(frozen=True)
class PtxasReport:
    cubin: bytes
    log: str
    registers: int
    stack_bytes: int
    spill_store_bytes: int
    spill_load_bytes: int
    advisories: tuple[str, ...]  # one line per ptxas performance advisory or warning


# The flags Triton 3.8 gives ptxas (backends/nvidia/compiler.py make_cubin), so the cubin matches Triton's.
TRITON_PTXAS_FLAGS = ("-lineinfo", "-v", "--regAllocOptLevel=2")


def ptxas_compile(ptx: str, arch: str, flags: tuple[str, ...] = TRITON_PTXAS_FLAGS) -> PtxasReport:
    """Assemble ``ptx`` for ``arch`` (``"sm_90a"``, ``"sm_80"``) with ``-v``; cached on disk by content."""
    key = hashlib.sha256("\0".join((ptx, arch, *flags, tool("ptxas"))).encode()).hexdigest()[:32]
    cached_cubin, cached_log = _cache_dir() / f"{key}.cubin", _cache_dir() / f"{key}.log"
    if cached_cubin.exists() and cached_log.exists():
        return parse_ptxas_log(cached_log.read_text(), cached_cubin.read_bytes())
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "kernel.ptx", Path(tmp) / "kernel.cubin"
        src.write_text(ptx)
        proc = subprocess.run(
            [tool("ptxas"), *flags, f"--gpu-name={arch}", str(src), "-o", str(out)], capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise RuntimeError(f"ptxas failed for {arch}:\n{proc.stderr[-4000:]}")
        cubin, log = out.read_bytes(), proc.stdout + proc.stderr
    cached_cubin.write_bytes(cubin)
    cached_log.write_text(log)
    return parse_ptxas_log(log, cubin)


def parse_ptxas_log(log: str, cubin: bytes = b"") -> PtxasReport:
    """Registers, stack, spills and advisories from a ``ptxas -v`` log (one entry function)."""

    def number(pattern: str) -> int:
        found = re.search(pattern, log)
        return int(found.group(1)) if found else 0

    advisories = tuple(
        line.split(":", 1)[-1].strip()
        for line in log.splitlines()
        if re.search(r"\(C\d{4}\)|Performance|warning", line, flags=re.IGNORECASE)
    )
    return PtxasReport(
        cubin=cubin,
        log=log,
        registers=number(r"Used (\d+) registers"),
        stack_bytes=number(r"(\d+) bytes stack frame"),
        spill_store_bytes=number(r"(\d+) bytes spill stores"),
        spill_load_bytes=number(r"(\d+) bytes spill loads"),
        advisories=advisories,
    )


# ----------------------------------------------------------------------------------------------------------------
# SASS


@dataclass(frozen=True)
class Instruction:
    address: int
    predicate: str  # "@P0", "@!PT", or ""
    opcode: str  # with modifiers: "HGMMA.64x128x16.F32.BF16", "LDGSTS.E.BYPASS.128"
    operands: str
    target: Optional[int] = None  # branch or call target address (BRA, CALL)

    @property
    def base(self) -> str:
        """The opcode without modifiers: ``LDGSTS``, ``HGMMA``."""
        return self.opcode.split(".", 1)[0]


_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.x]*)\s*([^;]*);")


def cuobjdump(flag: str, binary: bytes) -> str:
    """``cuobjdump <flag>`` of a cubin, fatbinary or library given as bytes; cached on disk by content."""
    key = hashlib.sha256(binary).hexdigest()[:32]
    cached = _cache_dir() / (f"{key}.sass" if flag == "-sass" else f"{key}{flag.replace('-', '_')}.txt")
    if cached.exists():
        return cached.read_text()
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(binary)
        f.flush()
        text = subprocess.run([tool("cuobjdump"), flag, f.name], check=True, capture_output=True, text=True).stdout
    cached.write_text(text)
    return text


def disassemble(cubin: bytes) -> list[Instruction]:
    """SASS instructions of the (single) kernel in ``cubin``, from ``cuobjdump -sass``."""
    return parse_sass(cuobjdump("-sass", cubin))


def parse_sass_functions(text: str) -> dict[tuple[str, str], list[Instruction]]:
    """``{(arch, mangled name): instructions}`` of a ``cuobjdump -sass`` listing with several kernels."""
    out: dict[tuple[str, str], list[Instruction]] = {}
    arch = ""
    marks = list(re.finditer(r"code for (sm_\w+)|Function : (\S+)", text))
    for i, mark in enumerate(marks):
        if mark.group(1):
            arch = mark.group(1)
            continue
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        out[(arch, mark.group(2))] = parse_sass(text[mark.end() : end])
    return out


def parse_sass(text: str) -> list[Instruction]:
    out = []
    for match in _LINE.finditer(text):
        address, predicate, opcode, operands = match.groups()
        target = None
        if opcode.startswith(("BRA", "BRX", "CALL")):
            found = re.search(r"0x([0-9a-f]+)", operands)
            target = int(found.group(1), 16) if found else None
        out.append(Instruction(int(address, 16), (predicate or "").strip(), opcode, operands.strip(), target))
    return out


def parse_resource_usage(text: str) -> dict[tuple[str, str], dict[str, int]]:
    """``{(arch, mangled name): {"REG": .., "SHARED": .., "STACK": .., "LOCAL": ..}}`` from
    ``cuobjdump --dump-resource-usage``; arch is "" for a lone cubin (its dump names none)."""
    out: dict[tuple[str, str], dict[str, int]] = {}
    arch, name = "", ""
    for line in text.splitlines():
        if found := re.search(r"arch = (sm_\w+)", line):
            arch = found.group(1)
        elif found := re.search(r"Function (\S+):", line):
            name = found.group(1)
        elif "REG:" in line:
            out[(arch, name)] = {key: int(value) for key, value in re.findall(r"(\w+):(\d+)", line)}
    return out


def demangle(names: list[str]) -> dict[str, str]:
    """C++ names as ``c++filt`` prints them; the mangled names where it is missing."""
    filt = shutil.which("c++filt")
    if filt is None or not names:
        return {n: n for n in names}
    out = subprocess.run([filt], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    return dict(zip(names, out.splitlines(), strict=True))


# Shared memory the driver reserves per resident CTA (sm_80 and newer). sm_90 cubins already list it in the
# kernel's static shared size (SHARED:1024 for a kernel that declares none); sm_80 cubins do not.
RESERVED_SHARED_PER_CTA = 1024


@dataclass
class KernelCode:
    """One kernel of one architecture in a binary, as ``cuobjdump`` reads it."""

    arch: str  # "sm_80", "sm_90", "sm_90a"
    mangled: str
    name: str  # demangled
    instructions: list[Instruction]
    registers: int = 0
    shared_bytes: int = 0  # static shared memory as the cubin lists it
    stack_bytes: int = 0
    local_bytes: int = 0

    @property
    def sm(self) -> int:
        """The architecture as a number: 80, 90."""
        return int(re.match(r"sm_(\d+)", self.arch).group(1))

    def launch_shared(self, dynamic_bytes: int = 0) -> int:
        """Shared memory one CTA takes with ``dynamic_bytes`` at launch, without the driver's reservation
        (``ctas_per_sm`` adds it)."""
        static = self.shared_bytes
        if self.sm >= 90:
            static = max(0, static - RESERVED_SHARED_PER_CTA)
        return static + dynamic_bytes


def read_library(path: str | Path) -> list[KernelCode]:
    """Every kernel of every architecture in ``path`` (a cubin, fatbinary, or a library such as the compiled
    extension's ``.so``), with its SASS and resources."""
    binary = Path(path).read_bytes()
    code = parse_sass_functions(cuobjdump("-sass", binary))
    resources = parse_resource_usage(cuobjdump("--dump-resource-usage", binary))
    names = demangle([mangled for _, mangled in code])
    kernels = []
    for (arch, mangled), instructions in code.items():
        r = resources.get((arch, mangled)) or resources.get(("", mangled), {})
        kernels.append(
            KernelCode(
                arch,
                mangled,
                names[mangled],
                instructions,
                registers=r.get("REG", 0),
                shared_bytes=r.get("SHARED", 0),
                stack_bytes=r.get("STACK", 0),
                local_bytes=r.get("LOCAL", 0),
            )
        )
    return kernels


def loops(instructions: list[Instruction]) -> list[tuple[int, int]]:
    """(first, last) instruction index of every loop: a branch back to an earlier address."""
    index = {ins.address: i for i, ins in enumerate(instructions)}
    found = []
    for i, ins in enumerate(instructions):
        if ins.base == "BRA" and ins.target is not None and ins.target <= ins.address and ins.target in index:
            if ins.target == ins.address:  # the trailing `BRA self` that pads every kernel
                continue
            found.append((index[ins.target], i))
    return found


MMA_OPCODES = ("HGMMA", "HMMA", "IMMA")  # tensor-core instructions; FFMA when a kernel has none


@dataclass
class LoopStats:
    instructions: int  # SASS instructions in the loop body, NOPs excluded
    mma: int  # tensor-core instructions (or FFMA for a kernel without any)
    mma_opcode: str  # e.g. "HGMMA.64x128x16.F32.BF16"
    local: int  # STL / LDL: local-memory (spill) traffic
    calls: int  # CALLs to code outside the loop: slow-path subroutines (64-bit division, ...)
    opcodes: Counter = field(default_factory=Counter)  # full opcode -> count
    body: list[Instruction] = field(default_factory=list)  # the loop's instructions in order, NOPs excluded

    @property
    def per_mma(self) -> float:
        return self.instructions / self.mma if self.mma else float("inf")

    def count(self, opcode: str) -> int:
        """Instructions with this opcode and any modifiers: ``"LDG"`` counts ``LDG.E.64`` but not ``LDGSTS``;
        ``"LDGSTS.E.BYPASS.128"`` counts only those."""
        return sum(n for op, n in self.opcodes.items() if op == opcode or op.startswith(opcode + "."))

    def widths(self, base: str) -> dict[int, int]:
        """Bits per access -> count for a memory opcode (``LDGSTS``, ``LDG``, ``STG``); 32 when unsuffixed."""
        out: Counter = Counter()
        for op, n in self.opcodes.items():
            parts = op.split(".")
            if parts[0] != base:
                continue
            sizes = {"U8": 8, "S8": 8, "U16": 16, "S16": 16, "64": 64, "128": 128}
            bits = [sizes[p] for p in parts[1:] if p in sizes]
            out[bits[-1] if bits else 32] += n
        return dict(out)


def loop_stats(instructions: list[Instruction], first: int, last: int, mma_opcodes=MMA_OPCODES) -> LoopStats:
    """The loop from instruction ``first`` to its back-branch at ``last``; MMAs are ``mma_opcodes``."""
    start, end = instructions[first].address, instructions[last].address + 16
    body = [ins for ins in instructions[first : last + 1] if ins.base != "NOP"]
    mma = [ins for ins in body if ins.base in mma_opcodes]
    # ptxas leaves some loops with `@P CALL.REL.NOINC <just past the back-branch>`: a structured exit, not a
    # subroutine call. A call into the loop or to right after it is that; anything else is a real call.
    calls = [ins for ins in body if ins.base == "CALL" and not (ins.target is not None and start <= ins.target <= end)]
    return LoopStats(
        instructions=len(body),
        mma=len(mma),
        mma_opcode=mma[0].opcode if mma else "",
        local=sum(1 for ins in body if ins.base in ("STL", "LDL")),
        calls=len(calls),
        opcodes=Counter(ins.opcode for ins in body),
        body=body,
    )


def all_loops(instructions: list[Instruction]) -> list[LoopStats]:
    """Every loop of the kernel; its MMAs are tensor-core instructions, or FFMA when the kernel has none."""
    tensor = any(ins.base in MMA_OPCODES for ins in instructions)
    mma_opcodes = MMA_OPCODES if tensor else ("FFMA",)
    return [loop_stats(instructions, a, b, mma_opcodes) for a, b in loops(instructions)]


def main_loop(instructions: list[Instruction]) -> Optional[LoopStats]:
    """The loop with the most MMA instructions (the shortest of equals); for a kernel without MMAs in any loop,
    the loop with the most instructions. None when the kernel has no loop."""
    candidates = all_loops(instructions)
    if not candidates:
        return None
    if any(loop.mma for loop in candidates):
        return max(candidates, key=lambda loop: (loop.mma, -loop.instructions))
    return max(candidates, key=lambda loop: loop.instructions)


def outside_loop(instructions: list[Instruction], opcode_base: str) -> int:
    """How many ``opcode_base`` instructions lie outside every loop (e.g. epilogue spills: STL)."""
    inside = set()
    for a, b in loops(instructions):
        inside.update(range(a, b + 1))
    return sum(1 for i, ins in enumerate(instructions) if ins.base == opcode_base and i not in inside)


# ----------------------------------------------------------------------------------------------------------------
# Occupancy


@dataclass(frozen=True)
class SmLimits:
    registers: int = 65536  # 32-bit registers per SM
    max_warps: int = 64
    max_ctas: int = 32
    shared_bytes: int = 233472  # usable shared memory per SM (sm_90: 228 KB)
    reserved_shared_per_cta: int = RESERVED_SHARED_PER_CTA
    register_unit: int = 256  # registers are allocated per warp in units of 256


SM_LIMITS = {90: SmLimits(), 80: SmLimits(max_warps=64, shared_bytes=167936)}  # A100: 164 KB per SM


def ctas_per_sm(registers: int, shared_bytes: int, warps: int, arch: int) -> dict[str, int]:
    """Resident CTAs per SM and what limits it: ``{"ctas", "by_registers", "by_shared", "by_warps"}``."""
    lim = SM_LIMITS[arch]
    per_warp = -(-max(registers, 1) * 32 // lim.register_unit) * lim.register_unit
    by_registers = (lim.registers // per_warp) // warps
    by_shared = lim.shared_bytes // (shared_bytes + lim.reserved_shared_per_cta)
    by_warps = lim.max_warps // warps
    ctas = min(by_registers, by_shared, by_warps, lim.max_ctas)
    return {"ctas": ctas, "by_registers": by_registers, "by_shared": by_shared, "by_warps": by_warps}
