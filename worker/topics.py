"""Default Kafka topic names of the wire contract: the one place they are spelled.

The settings object takes its defaults from here; the broker CLI creates exactly these.
"""

from __future__ import annotations

REQUESTS_TOPIC = "ranking-requests"  # input: msgpack ranking-request.v1, keyed by user id
RESULTS_TOPIC = "ranking-results"  # output: msgpack ranking-result.v1, same key as the request
DEAD_LETTER_TOPIC = "ranking-dead-letter"  # msgpack dead-letter.v1 for input we could not answer

DEFAULT_TOPICS: tuple[str, ...] = (REQUESTS_TOPIC, RESULTS_TOPIC, DEAD_LETTER_TOPIC)
