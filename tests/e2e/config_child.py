# SPDX-License-Identifier: Apache-2.0
"""Child process for the pre-spawn configuration tests: build `LLM(**kwargs)` for each case and report the
error.

`python -m tests.e2e.config_child '<json list of {"name", "llm"}>'` prints, per case, one line
`CASE {"name", "error_type", "message", "seconds", "started"}`. Starting any process (the engine core or a
worker) is refused here: `multiprocessing`'s `Process.start` (how vLLM starts both) raises
`ProcessStartRefused`, so a configuration that is only caught after spawning shows up as `started` (with the
name of what it tried to start) instead of spending a minute starting an engine. (vLLM's model-registry probe
runs through `subprocess` and is allowed.) Nothing here changes what vLLM validates.
"""

from __future__ import annotations

import json
import multiprocessing.process
import sys
import time


class ProcessStartRefused(RuntimeError):
    pass


_STARTED: list[str] = []


def _refuse_process_start(self, *args, **kwargs):
    _STARTED.append(getattr(self, "name", type(self).__name__))
    raise ProcessStartRefused(f"process start refused: {_STARTED[-1]}")


def main(cases: list[dict]) -> None:
    multiprocessing.process.BaseProcess.start = _refuse_process_start
    started = time.monotonic()
    from vllm import LLM

    print(f"IMPORTED {time.monotonic() - started:.1f}", flush=True)
    for case in cases:
        _STARTED.clear()
        print(f"START {case['name']}", flush=True)
        t0 = time.monotonic()
        error_type, message = None, ""
        try:
            LLM(**case["llm"])
        except BaseException as e:  # noqa: BLE001 — report every outcome to the test
            error_type, message = type(e).__name__, str(e)
        print(
            "CASE "
            + json.dumps(
                {
                    "name": case["name"],
                    "error_type": error_type,
                    "message": message,
                    "seconds": round(time.monotonic() - t0, 2),
                    "started": list(_STARTED),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
