"""The Faust and aiokafka versions every fix in this package was written against.

Checked at import of any fix that overrides their internals: a different version fails before
an app exists, naming what to do, instead of misbehaving at the first fetch.
"""

from __future__ import annotations

import aiokafka
import faust

from worker.errors import WorkerError

SUPPORTED_FAUST_VERSION = "0.15.3"
SUPPORTED_AIOKAFKA_VERSION = "0.14.0"

UPGRADE_HINT = (
    "worker/upstream/ overrides Faust's and aiokafka's internals and is written for "
    f"faust-streaming=={SUPPORTED_FAUST_VERSION} with aiokafka=={SUPPORTED_AIOKAFKA_VERSION}; "
    "install the pinned versions (`make venv`), or re-check each fix in worker/upstream/ "
    "against the new version (faust/transport/drivers/aiokafka.py first) and update the pins, "
    "tests/test_kafka_tuning.py and tests/test_exactly_once.py together."
)


class KafkaTuningError(WorkerError, RuntimeError):
    """A fix in worker/upstream/ cannot apply (library versions, broker scheme or values)."""


def check_versions() -> None:
    """Raise `KafkaTuningError` unless the pinned Faust and aiokafka versions are installed."""
    found = {"faust-streaming": faust.__version__, "aiokafka": aiokafka.__version__}
    wanted = {"faust-streaming": SUPPORTED_FAUST_VERSION, "aiokafka": SUPPORTED_AIOKAFKA_VERSION}
    wrong = [f"{n} {found[n]} (need {wanted[n]})" for n in found if found[n] != wanted[n]]
    if wrong:
        raise KafkaTuningError(f"Unsupported library version: {', '.join(wrong)}. {UPGRADE_HINT}")


check_versions()  # at import: fail before any app exists, not at the first fetch
