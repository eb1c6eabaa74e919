"""Read the SASS of the compiled library's CUDA kernels (no GPU needed): per kernel and architecture, the
resource usage (registers, static shared memory, stack/local memory) and the main loop (the backward branch
whose body holds the most tensor-core instructions), its length and its instruction mix.

    python csrc/cuda_sass.py [lsvit_kernels/_C*.so]      # prints one line per kernel and architecture

Used by tests/kernels/test_native_build.py (the audit of the CUDA kernels) and documented in docs/native.md.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

# SM resources that bound CTAs per SM (CUDA occupancy rules for sm_80 / sm_90).
SM_REGISTERS = 65536
SM_MAX_THREADS = 2048
SM_SHARED_BYTES = {"sm_80": 164 * 1024, "sm_90": 228 * 1024}
# The runtime reserves 1 KiB of shared memory per CTA (sm_80 and newer); sm_90 cubins already count it in SHARED.
CTA_RESERVED_SHARED = {"sm_80": 1024, "sm_90": 0}

# Launch shapes of the forward kernels (csrc/cuda/patch_embed_cuda.cu): threads per block, dynamic shared bytes.
# The mma kernel: 256 threads, 3 stages of (128 + 128) rows x 40 16-bit elements.
LAUNCH = {"patch_embed_mma_kernel": (256, 3 * (128 + 128) * 40 * 2), "patch_embed_fma_kernel": (256, 0)}

_INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_BRANCH_TARGET = re.compile(r"\bBRA\b.*?0x([0-9a-f]+)")
_CALL_TARGET = re.compile(r"\bCALL\.\S+\s+0x([0-9a-f]+)")


def tool(name: str) -> str | None:
    """cuobjdump / nvdisasm from CUDA_HOME, /usr/local/cuda or the Triton wheel."""
    cuda_home = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"))
    candidates = [cuda_home / "bin" / name, Path("/usr/local/cuda/bin") / name]
    try:
        import triton

        candidates.append(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)
    except ImportError:
        pass
    found = [str(c) for c in candidates if c.exists()]
    return found[0] if found else shutil.which(name)


def demangle(names: list[str]) -> dict[str, str]:
    filt = shutil.which("c++filt")
    if filt is None or not names:
        return {n: n for n in names}
    out = subprocess.run([filt], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    return dict(zip(names, out.splitlines(), strict=True))


@dataclass
class Loop:
    start: int  # byte offset of the branch target
    end: int  # byte offset of the backward branch
    ops: Counter = field(default_factory=Counter)  # opcode (first word, predicate stripped) -> count
    lines: list[str] = field(default_factory=list)
    subroutine_calls: int = 0  # CALLs to code elsewhere (e.g. 64-bit division), not loop-exit constructs

    @property
    def instructions(self) -> int:
        return sum(self.ops.values())

    def count(self, prefix: str) -> int:
        return sum(n for op, n in self.ops.items() if op == prefix or op.startswith(prefix + "."))

    def has(self, text: str) -> bool:
        return any(text in line for line in self.lines)


@dataclass
class Kernel:
    arch: str
    mangled: str
    name: str  # demangled
    instructions: list[tuple[int, str]]
    registers: int = 0
    static_shared: int = 0
    stack: int = 0
    local: int = 0

    def loops(self) -> list[Loop]:
        loops = []
        for addr, text in self.instructions:
            target = _BRANCH_TARGET.search(text)
            if target and int(target.group(1), 16) <= addr:
                start = int(target.group(1), 16)
                body = [t for a, t in self.instructions if start <= a <= addr]
                calls = sum(_is_subroutine_call(t, start, addr) for t in body)
                loops.append(Loop(start, addr, Counter(_opcode(t) for t in body), body, calls))
        return loops

    def main_loop(self, mma: str = "HMMA") -> Loop | None:
        """The loop with the most `mma` instructions (ties: the shortest), or None."""
        candidates = [loop for loop in self.loops() if loop.count(mma) > 0]
        if not candidates:
            return None
        return max(candidates, key=lambda loop: (loop.count(mma), -loop.instructions))

    def ctas_per_sm(self, threads: int, dynamic_shared: int = 0) -> int:
        regs_per_thread = -(-max(self.registers, 1) // 8) * 8  # allocated in units of 8 per thread (256 per warp)
        warps = -(-threads // 32)
        by_regs = SM_REGISTERS // (regs_per_thread * 32 * warps)
        by_threads = SM_MAX_THREADS // threads
        per_cta_shared = self.static_shared + dynamic_shared + CTA_RESERVED_SHARED[self.arch]
        by_shared = SM_SHARED_BYTES[self.arch] // per_cta_shared
        return min(by_regs, by_threads, by_shared)


def _is_subroutine_call(text: str, loop_start: int, loop_end: int) -> bool:
    """A CALL into code outside the loop (e.g. 64-bit division). `CALL.REL.NOINC` to the instruction right
    after the loop's back-branch is how the compiler closes a loop that has an early exit (a convergence
    point), not a call."""
    target = _CALL_TARGET.search(text)
    return target is not None and not loop_start <= int(target.group(1), 16) <= loop_end + 16


def _opcode(text: str) -> str:
    words = text.split()
    if words and words[0].startswith("@"):
        words = words[1:]
    return words[0] if words else ""


def read(library: str | Path) -> list[Kernel]:
    """Every kernel of every architecture in `library` (a .so, .cubin or fatbinary)."""
    cuobjdump = tool("cuobjdump")
    if cuobjdump is None:
        raise FileNotFoundError("cuobjdump not found (CUDA_HOME/bin, /usr/local/cuda/bin or the triton wheel)")
    sass = subprocess.run([cuobjdump, "-sass", str(library)], capture_output=True, text=True, check=True).stdout
    usage = subprocess.run(
        [cuobjdump, "--dump-resource-usage", str(library)], capture_output=True, text=True, check=True
    ).stdout
    kernels: list[Kernel] = []
    arch = ""
    current: Kernel | None = None
    for line in sass.splitlines():
        if m := re.search(r"code for (sm_\d+a?)", line):
            arch = m.group(1)
        elif m := re.search(r"Function : (\S+)", line):
            current = Kernel(arch, m.group(1), m.group(1), [])
            kernels.append(current)
        elif current is not None and (m := _INSTR.search(line)):
            current.instructions.append((int(m.group(1), 16), m.group(2)))
    resources: dict[tuple[str, str], dict[str, int]] = {}
    arch = ""  # a lone cubin's resource dump names no architecture
    for line in usage.splitlines():
        if m := re.search(r"arch = (sm_\d+a?)", line):
            arch = m.group(1)
        elif m := re.search(r"Function (\S+):", line):
            name = m.group(1)
        elif "REG:" in line:
            resources[(arch, name)] = {k: int(v) for k, v in re.findall(r"(\w+):(\d+)", line)}
    names = demangle([k.mangled for k in kernels])
    for k in kernels:
        k.name = names[k.mangled]
        r = resources.get((k.arch, k.mangled)) or resources.get(("", k.mangled), {})
        k.registers, k.static_shared = r.get("REG", 0), r.get("SHARED", 0)
        k.stack, k.local = r.get("STACK", 0), r.get("LOCAL", 0)
    return kernels


def short_name(kernel: Kernel) -> str:
    """`patch_embed_mma_kernel<__nv_bfloat16, __nv_bfloat16, 8>` without namespaces and the ForwardArgs tail."""
    name = re.sub(r"lsvit::cuda::\(anonymous namespace\)::", "", kernel.name)
    return re.sub(r"\(.*\)$", "", name)


def loop_mma(kernel: Kernel) -> tuple[Loop | None, str]:
    """The main loop and its math opcode: HMMA (tensor cores), else FFMA (the fp32 kernel)."""
    for mma in ("HMMA", "FFMA"):
        loop = kernel.main_loop(mma)
        if loop is not None:
            return loop, mma
    return None, ""


def launch(kernel: Kernel) -> tuple[int, int] | None:
    """(threads, dynamic shared bytes) of a forward kernel, None for the others."""
    return next((shape for name, shape in LAUNCH.items() if name in kernel.name), None)


def summary(kernel: Kernel) -> str:
    loop, mma = loop_mma(kernel)
    line = f"{kernel.arch} {short_name(kernel)}: REG {kernel.registers}, SHARED {kernel.static_shared}"
    line += f", STACK {kernel.stack}, LOCAL {kernel.local}"
    if (shape := launch(kernel)) is not None:
        line += f", dynamic shared {shape[1]}, CTAs/SM {kernel.ctas_per_sm(*shape)}"
    if loop is not None:
        n = loop.count(mma)
        vector_copies = sum("LDGSTS" in t and ".128" in t for t in loop.lines)
        line += (
            f"; main loop {loop.instructions} instr, {n} {mma} ({loop.instructions / n:.2f}/{mma}), "
            f"LDSM {loop.count('LDSM')}, LDGSTS {loop.count('LDGSTS')} (.128: {vector_copies}), "
            f"LDG {loop.count('LDG')}, STS {loop.count('STS')}, BAR {loop.count('BAR')}, "
            f"STL/LDL {loop.count('STL') + loop.count('LDL')}, calls {loop.subroutine_calls}"
        )
    return line


def main(argv: list[str]) -> int:
    if argv:
        library = argv[0]
    else:
        library = str(next((Path(__file__).resolve().parents[1] / "lsvit_kernels").glob("_C*.so")))
    for kernel in read(library):
        print(summary(kernel))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
