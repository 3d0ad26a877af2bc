"""``python -m benchmarks``: skate's microbenchmarks, optionally side by side with Ray.

See ``skate/_private/microbenchmark.py`` for the workloads and options.
"""

from __future__ import annotations

import importlib.util
import os
import sys


def _load_main():
    try:
        from skate._private.microbenchmark import main
    except ImportError:
        # skate itself does not import (yet): load the harness by path, so that
        # `--framework ray` still works and skate's failure is reported per metric.
        path = os.path.join(
            os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
            "skate", "_private", "microbenchmark.py",
        )  # fmt: skip
        spec = importlib.util.spec_from_file_location("skate_microbenchmark", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        main = module.main
    return main


if __name__ == "__main__":
    sys.exit(_load_main()(sys.argv[1:]))
