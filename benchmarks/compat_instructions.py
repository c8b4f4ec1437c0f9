"""The one-pass Captum drop-ins against Captum in executed instructions (valgrind's callgrind):
``PYTHONPATH=. python benchmarks/compat_instructions.py [--calls N]`` (needs valgrind; about
5 minutes, most of it Python and torch starting under the simulator).

Wall and CPU time of these classes move by a few percent between rounds on a shared machine
(``compat_interleaved.py`` gives their spread); the number of instructions a call executes
barely does: it moves by less than 0.05% between runs (the interpreter's and allocator's state),
on a busy machine too. It counts the work each library does
(the model's kernels, identical in both, and each library's own Python), not memory stalls or the
kernel's page faults, so it says whose call does more work, not by itself whose is faster.

One process runs under callgrind with collection off; per case (the cases, models and inputs
of ``compat_interleaved.py``) both classes are called twice to warm up, then collection is
switched on for ``--calls`` calls of one class and the counts are dumped, then the same for
the other. Printed per case: instructions per call of each and their ratio Captum / fastxai
(above 1: fastxai executes fewer).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path


def _inner(calls: int) -> None:
    """Runs under callgrind: collection is switched on around each class's calls."""
    import captum.attr as captum_attr
    import torch
    from compat_interleaved import CASES, case_calls

    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    for case in CASES:
        methods, _ = case_calls(case, captum_attr)
        for method in methods:
            method()
            method()
        for method in methods:
            torch._C._valgrind_toggle()
            for _ in range(calls):
                method()
            torch._C._valgrind_toggle_and_dump_stats()


def _totals(prefix: Path) -> list[int]:
    """The instruction totals of the dumps ``prefix.1``, ``prefix.2``, ... in dump order."""
    dumps = sorted(prefix.parent.glob(prefix.name + ".*"), key=lambda path: int(path.suffix[1:]))
    totals = []
    for dump in dumps:
        found = re.search(r"^(?:summary|totals): (\d+)", dump.read_text(), re.MULTILINE)
        if found is None:
            raise RuntimeError(f"no instruction total in {dump}")
        totals.append(int(found.group(1)))
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3, help="counted calls per class and case")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        _inner(args.calls)
        return
    if shutil.which("valgrind") is None:
        sys.exit("compat_instructions.py needs valgrind (callgrind) on the PATH")
    from compat_interleaved import CASES

    with tempfile.TemporaryDirectory() as folder:
        prefix = Path(folder) / "callgrind.out"
        command = [
            "valgrind", "--tool=callgrind", "--collect-atstart=no", f"--callgrind-out-file={prefix}",
            sys.executable, str(Path(__file__).resolve()), "--inner", f"--calls={args.calls}",
        ]  # fmt: skip
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        totals = _totals(prefix)
    if len(totals) != 2 * len(CASES):
        sys.exit(f"expected {2 * len(CASES)} dumps, got {len(totals)}")
    print(f"instructions per call (callgrind, {args.calls} calls each, one thread)")
    for index, (name, _, shape, batch, _) in enumerate(CASES):
        ours, theirs = totals[2 * index] / args.calls, totals[2 * index + 1] / args.calls
        print(
            f"{name:26s} {str(batch) + 'x' + 'x'.join(map(str, shape)):11s} fastxai {ours / 1e6:9.3f} M  "
            f"captum {theirs / 1e6:9.3f} M  captum / fastxai {theirs / ours:.4f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
