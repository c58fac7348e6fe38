"""Unit tests: every validation rule of ranking-request.v1, with its field path and message."""

from __future__ import annotations

import copy
import math
import random

import numpy as np
import pytest

from phoenix.actions import ACTION_NAMES
from phoenix.config import RankerConfig
from worker import wire
from worker.codec import encode_request
from worker.errors import ValidationError
from worker.request import RankingRequest
from worker.validation import (check_typed, first_error, parse_request, parse_requests,
                               validate_request)
from worker.wire import ValidationLimits

LIMITS = ValidationLimits()


def random_id(rng: random.Random) -> int:
    # Small, above 2**63 (needs uint64 on the wire) and anywhere in range.
    return rng.choice([rng.randint(1, 1000), rng.randint(2**63, 2**64 - 1),
                       rng.randint(1, 2**64 - 1)])


def make_request(seed: int = 0, n_history: int = 3, n_candidates: int = 4, **extra) -> dict:
    """A valid ranking-request.v1 dict built from a seed (not by the code under test)."""
    rng = random.Random(seed)
    post_ids: set[int] = set()
    while len(post_ids) < n_candidates:
        post_ids.add(random_id(rng))
    request = {
        "schema": "ranking-request.v1",
        "request_id": f"req-{seed}",
        "user_id": random_id(rng),
        "history": [{"post_id": random_id(rng), "author_id": random_id(rng),
                     "actions": rng.sample(ACTION_NAMES, rng.randint(0, 6)),
                     "surface": rng.randrange(16)} for _ in range(n_history)],
        "candidates": [{"post_id": p, "author_id": random_id(rng), "surface": rng.randrange(16)}
                       for p in sorted(post_ids, key=lambda _: rng.random())],
    }
    request.update(extra)
    return request


def expected_masks(history: list[dict]) -> list[int]:
    """Each item's actions as an int with bit ACTION_NAMES.index(name) set per name."""
    return [sum(1 << ACTION_NAMES.index(name) for name in item["actions"]) for item in history]


# ------------------------------------------------------------------------- valid requests

def test_valid_request_becomes_arrays():
    raw = make_request(seed=3, n_history=5, n_candidates=7, top_k=2, timestamp_ms=1_700_000,
                       deadline_ms=1_700_500)
    request = validate_request(raw, LIMITS)
    assert isinstance(request, RankingRequest)
    assert request.request_id == "req-3" and request.user_id == raw["user_id"]
    # Exact uint64 round trip, including ids above 2**63.
    assert request.history_post_ids.dtype == np.uint64
    assert request.history_post_ids.tolist() == [h["post_id"] for h in raw["history"]]
    assert request.history_author_ids.tolist() == [h["author_id"] for h in raw["history"]]
    assert request.history_surfaces.dtype == np.int32
    assert request.history_surfaces.tolist() == [h["surface"] for h in raw["history"]]
    assert request.history_actions.dtype == np.uint32
    assert request.history_actions.tolist() == expected_masks(raw["history"])
    assert request.candidate_post_ids.dtype == np.uint64
    assert request.candidate_post_ids.tolist() == [c["post_id"] for c in raw["candidates"]]
    assert request.candidate_author_ids.tolist() == [c["author_id"] for c in raw["candidates"]]
    assert request.candidate_surfaces.dtype == np.int32
    assert request.candidate_surfaces.tolist() == [c["surface"] for c in raw["candidates"]]
    assert (request.top_k, request.timestamp_ms, request.deadline_ms) == (2, 1_700_000, 1_700_500)


def test_ids_at_both_ends_of_the_u64_range_are_kept_exactly():
    raw = make_request(user_id=2**64 - 1)
    raw["candidates"][0]["post_id"] = 1
    raw["candidates"][1]["post_id"] = 2**64 - 1
    request = validate_request(raw, LIMITS)
    assert request.user_id == 2**64 - 1
    assert request.candidate_post_ids[:2].tolist() == [1, 2**64 - 1]


def test_optional_fields_absent_or_nil_mean_not_given():
    for raw in (make_request(), make_request(top_k=None, timestamp_ms=None, deadline_ms=None)):
        request = validate_request(raw, LIMITS)
        assert (request.top_k, request.timestamp_ms, request.deadline_ms) == (None, None, None)


def test_empty_history_gives_empty_arrays_of_the_right_shape():
    request = validate_request(make_request(n_history=0), LIMITS)
    assert request.history_post_ids.shape == (0,)
    assert request.history_actions.shape == (0,)
    assert request.history_surfaces.shape == (0,)


def test_history_longer_than_keep_keeps_the_most_recent_items():
    raw = make_request(seed=5, n_history=40)
    request = validate_request(raw, LIMITS)  # history_keep defaults to S = 32
    tail = raw["history"][-32:]
    assert request.num_history == 32
    assert request.history_post_ids.tolist() == [h["post_id"] for h in tail]
    assert request.history_surfaces.tolist() == [h["surface"] for h in tail]
    assert request.history_actions.tolist() == expected_masks(tail)


def test_dropped_history_items_are_still_validated():
    # The schema has no notion of "dropped"; validating everything keeps us in agreement with it.
    raw = make_request(n_history=40)
    raw["history"][0]["surface"] = 99
    with pytest.raises(ValidationError, match=r"history\[0\]\.surface must be") as info:
        validate_request(raw, LIMITS)
    assert info.value.field == "history[0].surface"


def test_repeated_history_posts_are_allowed():
    raw = make_request(n_history=3)
    for item in raw["history"]:
        item["post_id"] = 7
    assert validate_request(raw, LIMITS).history_post_ids.tolist() == [7, 7, 7]


def test_validation_does_not_change_its_input():
    raw = make_request(seed=9, n_history=40)
    before = copy.deepcopy(raw)
    validate_request(raw, LIMITS)
    assert raw == before


def test_parse_request_decodes_and_validates():
    raw = make_request(seed=11, n_history=4, n_candidates=9)
    request = parse_request(encode_request(raw), LIMITS)
    assert request.candidate_post_ids.tolist() == [c["post_id"] for c in raw["candidates"]]
    assert request.history_actions.tolist() == expected_masks(raw["history"])


# ------------------------------------------------------------------- every rule, one by one

DELETE = object()  # Sentinel: remove the key at the path.


def set_at(request: dict, path: tuple, value) -> None:
    target = request
    for step in path[:-1]:
        target = target[step]
    if value is DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value(request) if callable(value) else value


NAN, INF = math.nan, math.inf
FLOAT_RULE = r"got the float {}: floats \(including NaN and infinity\) are never accepted"
ID_RULE = r"must be an unsigned 64-bit integer in 1\.\.18446744073709551615; got "

RULES = [
    # schema
    ("schema-v2", ("schema",), "ranking-request.v2", "schema",
     r"schema must be the exact string 'ranking-request.v1'; got the string 'ranking-request.v2'"),
    ("schema-int", ("schema",), 1, "schema", r"exact string .*; got 1;"),
    ("schema-missing", ("schema",), DELETE, "schema", r"schema is required but missing"),
    # request_id
    ("request_id-missing", ("request_id",), DELETE, "request_id", "request_id is required"),
    ("request_id-int", ("request_id",), 5, "request_id",
     r"request_id must be a string of 1\.\.128 characters; got 5"),
    ("request_id-bytes", ("request_id",), b"r-1", "request_id", r"got a binary of 3 bytes"),
    ("request_id-empty", ("request_id",), "", "request_id",
     r"request_id must have 1\.\.128 characters; got 0"),
    ("request_id-129-chars", ("request_id",), "x" * 129, "request_id", r"got 129"),
    # user_id: range, floats, NaN/inf, bool, wrong type
    ("user_id-zero", ("user_id",), 0, "user_id", ID_RULE + r"0; 0 is reserved for padding"),
    ("user_id-negative", ("user_id",), -5, "user_id", ID_RULE + "-5"),
    ("user_id-2**64", ("user_id",), 2**64, "user_id", ID_RULE + "18446744073709551616"),
    ("user_id-float", ("user_id",), 3.0, "user_id", FLOAT_RULE.format(r"3\.0")),
    ("user_id-nan", ("user_id",), NAN, "user_id", FLOAT_RULE.format("nan")),
    ("user_id-inf", ("user_id",), INF, "user_id", FLOAT_RULE.format("inf")),
    ("user_id-minus-inf", ("user_id",), -INF, "user_id", FLOAT_RULE.format("-inf")),
    ("user_id-bool", ("user_id",), True, "user_id",
     r"got the boolean true \(booleans are not integers\)"),
    ("user_id-str", ("user_id",), "42", "user_id", ID_RULE + "the string '42'"),
    ("user_id-nil", ("user_id",), None, "user_id", ID_RULE + "nil"),
    ("user_id-missing", ("user_id",), DELETE, "user_id", "user_id is required but missing"),
    # history list and items
    ("history-missing", ("history",), DELETE, "history", "history is required but missing"),
    ("history-map", ("history",), {}, "history",
     r"history must be an array of engagement maps; got a map of 0 keys"),
    ("history-nil", ("history",), None, "history", r"history must be an array .*; got nil"),
    ("history-item-int", ("history", 1), 7, "history[1]",
     r"history\[1\] must be a map \(a history item\); got 7"),
    ("history-item-missing-post_id", ("history", 1, "post_id"), DELETE, "history[1].post_id",
     r"history\[1\]\.post_id is required but missing"),
    ("history-item-unknown-key", ("history", 1, "surfce"), 1, "history[1].surfce",
     r"history\[1\]\.surfce is not a field of a history item \(did you mean 'surface'\?\)"),
    ("history-item-bin-key", ("history", 0, b"post_id"), 1, "history[0].post_id",
     r"history\[0\]\.post_id: the key is a msgpack bin, but keys must be msgpack str"),
    ("history-post_id-zero", ("history", 2, "post_id"), 0, "history[2].post_id", ID_RULE + "0"),
    ("history-author_id-negative", ("history", 0, "author_id"), -1, "history[0].author_id",
     ID_RULE + "-1"),
    ("history-author_id-float", ("history", 0, "author_id"), 2.5, "history[0].author_id",
     FLOAT_RULE.format(r"2\.5")),
    ("history-actions-str", ("history", 1, "actions"), "favorite", "history[1].actions",
     r"history\[1\]\.actions must be an array of action names; got the string 'favorite'"),
    ("history-actions-missing", ("history", 1, "actions"), DELETE, "history[1].actions",
     r"history\[1\]\.actions is required but missing"),
    ("action-unknown", ("history", 1, "actions"), ["favorite", "lik"], "history[1].actions[1]",
     r"history\[1\]\.actions\[1\] is not a known action name; got the string 'lik'"),
    ("action-wrong-case", ("history", 1, "actions"), ["Favorite"], "history[1].actions[0]",
     r"did you mean 'favorite'\?"),
    ("action-int", ("history", 1, "actions"), [3], "history[1].actions[0]",
     r"must be an action name \(a string\); got 3"),
    ("action-duplicate", ("history", 1, "actions"), ["reply", "favorite", "reply"],
     "history[1].actions[2]",
     r"repeats the action 'reply' \(already at history\[1\]\.actions\[0\]\)"),
    ("history-surface-negative", ("history", 0, "surface"), -1, "history[0].surface",
     r"history\[0\]\.surface must be an integer product surface in 0\.\.15; got -1"),
    ("history-surface-out-of-vocab", ("history", 0, "surface"), 16, "history[0].surface",
     r"in 0\.\.15; got 16; map it into the model's vocabulary of 16 surfaces"),
    ("history-surface-float", ("history", 0, "surface"), 1.0, "history[0].surface",
     FLOAT_RULE.format(r"1\.0")),
    ("history-surface-bool", ("history", 0, "surface"), False, "history[0].surface",
     "the boolean false"),
    # candidates
    ("candidates-missing", ("candidates",), DELETE, "candidates", "candidates is required"),
    ("candidates-empty", ("candidates",), [], "candidates",
     r"candidates must have 1\.\.1024 items; got 0 items; send at least one"),
    ("candidates-str", ("candidates",), "x", "candidates",
     r"candidates must be an array of candidate maps; got the string 'x'"),
    ("candidate-nil", ("candidates", 0), None, "candidates[0]",
     r"candidates\[0\] must be a map \(a candidate\); got nil"),
    ("candidate-missing-surface", ("candidates", 2, "surface"), DELETE, "candidates[2].surface",
     r"candidates\[2\]\.surface is required but missing"),
    ("candidate-unknown-key", ("candidates", 2, "actions"), ["favorite"], "candidates[2].actions",
     r"candidates\[2\]\.actions is not a field of a candidate; remove it"),
    ("candidate-post_id-zero", ("candidates", 3, "post_id"), 0, "candidates[3].post_id",
     ID_RULE + "0"),
    ("candidate-post_id-nan", ("candidates", 3, "post_id"), NAN, "candidates[3].post_id",
     FLOAT_RULE.format("nan")),
    ("candidate-post_id-2**64", ("candidates", 3, "post_id"), 2**64, "candidates[3].post_id",
     ID_RULE + "18446744073709551616"),
    ("candidate-author_id-str", ("candidates", 1, "author_id"), "7", "candidates[1].author_id",
     ID_RULE + "the string '7'"),
    ("candidate-author_id-inf", ("candidates", 1, "author_id"), -INF, "candidates[1].author_id",
     FLOAT_RULE.format("-inf")),
    ("candidate-surface-out-of-vocab", ("candidates", 3, "surface"), 16, "candidates[3].surface",
     r"in 0\.\.15; got 16"),
    ("candidate-duplicate-post_id", ("candidates", 3, "post_id"),
     lambda r: r["candidates"][1]["post_id"], "candidates[3].post_id",
     r"candidates\[3\]\.post_id repeats the post id \d+ \(already at candidates\[1\]\); "
     r"candidate post ids must be distinct"),
    # optional fields
    ("top_k-zero", ("top_k",), 0, "top_k", r"top_k must be an integer in 1\.\.2147483647; got 0"),
    ("top_k-negative", ("top_k",), -1, "top_k", r"got -1"),
    ("top_k-too-big", ("top_k",), 2**31, "top_k", r"got 2147483648"),
    ("top_k-float", ("top_k",), 2.0, "top_k", FLOAT_RULE.format(r"2\.0")),
    ("top_k-bool", ("top_k",), True, "top_k", "the boolean true"),
    ("top_k-str", ("top_k",), "5", "top_k", "the string '5'"),
    ("timestamp_ms-negative", ("timestamp_ms",), -1, "timestamp_ms",
     r"timestamp_ms must be an integer epoch time in milliseconds, 0\.\.9223372036854775807"),
    ("timestamp_ms-float", ("timestamp_ms",), 1.7e12, "timestamp_ms",
     FLOAT_RULE.format(r"1700000000000\.0")),
    ("deadline_ms-nan", ("deadline_ms",), NAN, "deadline_ms", FLOAT_RULE.format("nan")),
    ("deadline_ms-str", ("deadline_ms",), "soon", "deadline_ms", "the string 'soon'"),
    # unknown top-level keys
    ("unknown-key-typo", ("topk",), 3, "topk",
     r"topk is not a field of a ranking request \(did you mean 'top_k'\?\); remove it"),
    ("unknown-key", ("extra",), 1, "extra", r"extra is not a field of a ranking request; remove"),
    ("bin-key", (b"top_k",), 1, "top_k", r"top_k: the key is a msgpack bin, but keys must be"),
]


@pytest.mark.parametrize("path, value, field, match",
                         [pytest.param(*case[1:], id=case[0]) for case in RULES])
def test_rule(path, value, field, match):
    raw = make_request(seed=1)
    set_at(raw, path, value)
    with pytest.raises(ValidationError, match=match) as info:
        validate_request(raw, LIMITS)
    assert info.value.code == "invalid"
    assert info.value.field == field
    if isinstance(value, int) and value > 2**64 - 1:
        return  # msgpack cannot carry it; only direct callers can send it.
    # The same verdict after a real msgpack round trip (what the worker sees).
    with pytest.raises(ValidationError) as sent:
        parse_request(encode_request(raw), LIMITS)
    assert (sent.value.code, sent.value.field) == ("invalid", field)


@pytest.mark.parametrize("value", [
    pytest.param([1, 2], id="array"),
    pytest.param("x", id="str"),
    pytest.param(None, id="nil"),
])
def test_top_level_must_be_a_map(value):
    with pytest.raises(ValidationError, match="must be a msgpack map") as info:
        validate_request(value, LIMITS)
    assert (info.value.code, info.value.field) == ("invalid", None)


# ------------------------------------------------------------------------------------ caps

@pytest.mark.parametrize("n, ok", [pytest.param(512, True, id="512-ok"),
                                   pytest.param(513, False, id="513-refused")])
def test_history_cap(n, ok):
    raw = make_request(n_history=n)
    if ok:
        assert validate_request(raw, LIMITS).num_history == 32
    else:
        with pytest.raises(ValidationError,
                           match=r"history must have 0\.\.512 items; got 513 items; send only "
                                 r"the most recent 512 items \(the model uses the last 32\)"):
            validate_request(raw, LIMITS)


@pytest.mark.parametrize("n, ok", [pytest.param(1024, True, id="1024-ok"),
                                   pytest.param(1025, False, id="1025-refused")])
def test_candidate_cap(n, ok):
    raw = make_request(n_candidates=n)
    if ok:
        assert validate_request(raw, LIMITS).num_candidates == n
    else:
        with pytest.raises(ValidationError, match=r"candidates must have 1\.\.1024 items; got "
                                                  r"1025 items") as info:
            validate_request(raw, LIMITS)
        assert info.value.field == "candidates"


def test_configured_caps_are_applied():
    limits = ValidationLimits(max_history=4, history_keep=2, max_candidates=3, num_surfaces=4,
                              max_request_id_len=5)
    ok = make_request(n_history=4, n_candidates=3, request_id="abcde")
    for item in ok["history"] + ok["candidates"]:
        item["surface"] %= 4
    for item in ok["history"]:  # The untyped decoder caps every list at 4 items here.
        item["actions"] = item["actions"][:4]
    request = validate_request(ok, limits)
    assert request.num_history == 2 and request.num_candidates == 3
    cases = [
        (("history",), ok["history"] * 2, "history", r"0\.\.4 items; got 8"),
        (("candidates",), ok["candidates"] + [{"post_id": 9, "author_id": 9, "surface": 0}],
         "candidates", r"1\.\.3 items; got 4"),
        (("candidates", 0, "surface"), 4, "candidates[0].surface", r"in 0\.\.3; got 4"),
        (("request_id",), "abcdef", "request_id", r"1\.\.5 characters; got 6"),
        (("history", 0, "actions"), list(ACTION_NAMES[:5]), "history[0].actions",
         r"0\.\.4 items; got 5 items; send at most 4 actions per item"),
    ]
    for path, value, field, match in cases:
        raw = copy.deepcopy(ok)
        set_at(raw, path, value)
        with pytest.raises(ValidationError, match=match) as info:
            validate_request(raw, limits)
        assert info.value.field == field


def test_limits_from_model_config():
    config = RankerConfig(history_seq_len=8, product_surface_vocab_size=4)
    limits = ValidationLimits.from_config(config, max_candidates=64)
    assert (limits.history_keep, limits.num_surfaces, limits.max_candidates) == (8, 4, 64)
    assert limits.max_history == 512


@pytest.mark.parametrize("field", ["max_message_bytes", "max_history", "history_keep",
                                   "max_candidates", "num_surfaces", "max_request_id_len"])
def test_limits_must_be_positive_ints(field):
    with pytest.raises(ValueError, match=f"ValidationLimits.{field} must be a positive int"):
        ValidationLimits(**{field: 0})


# ------------------------------------------------------------------ which error is reported

def test_first_bad_item_in_order_is_reported():
    raw = make_request(n_candidates=6)
    raw["candidates"][4]["post_id"] = 0
    raw["candidates"][1]["surface"] = -3
    with pytest.raises(ValidationError) as info:
        validate_request(raw, LIMITS)
    assert info.value.field == "candidates[1].surface"


def test_error_deep_in_a_long_list_is_located():
    raw = make_request(n_history=500, n_candidates=1000)
    raw["history"][400]["actions"] = ["dwell", "click", "dwel"]
    with pytest.raises(ValidationError, match="did you mean 'dwell'") as info:
        validate_request(raw, LIMITS)
    assert info.value.field == "history[400].actions[2]"
    raw = make_request(n_history=500, n_candidates=1000)
    raw["candidates"][999]["post_id"] = raw["candidates"][17]["post_id"]
    with pytest.raises(ValidationError, match=r"already at candidates\[17\]") as info:
        validate_request(raw, LIMITS)
    assert info.value.field == "candidates[999].post_id"


def test_foreign_schema_is_reported_before_other_differences():
    raw = make_request(schema="ranking-request.v2", new_field=1)
    del raw["user_id"]
    with pytest.raises(ValidationError) as info:
        validate_request(raw, LIMITS)
    assert info.value.field == "schema"


def test_history_errors_come_before_candidate_errors():
    raw = make_request()
    raw["candidates"] = []
    raw["history"][2]["surface"] = 100
    with pytest.raises(ValidationError) as info:
        validate_request(raw, LIMITS)
    assert info.value.field == "history[2].surface"


def test_error_carries_the_request_id_when_readable():
    raw = make_request(request_id="r-77", user_id=0)
    with pytest.raises(ValidationError) as info:
        validate_request(raw, LIMITS)
    assert info.value.request_id == "r-77"
    raw = make_request(request_id="", user_id=0)
    with pytest.raises(ValidationError) as info:
        validate_request(raw, LIMITS)
    assert info.value.request_id is None and info.value.field == "request_id"


def test_messages_do_not_quote_huge_values():
    raw = make_request(request_id="x" * 100_000)
    with pytest.raises(ValidationError) as info:
        validate_request(raw, LIMITS)
    assert len(str(info.value)) < 400
    raw = make_request(user_id=list(range(100_000)))
    with pytest.raises(ValidationError, match="got an array of 100000 items") as info:
        validate_request(raw, LIMITS)
    assert len(str(info.value)) < 400


# ---------------------------------------------------------------------- the typed decoder

def _same_arrays(a: RankingRequest, b: RankingRequest) -> bool:
    return all(np.array_equal(getattr(a, name), getattr(b, name)) for name in (
        "history_post_ids", "history_author_ids", "history_actions", "history_surfaces",
        "candidate_post_ids", "candidate_author_ids", "candidate_surfaces"))


def test_typed_decoder_takes_valid_requests_and_the_walker_names_nothing():
    raw = make_request(seed=4, n_history=40, n_candidates=6, top_k=3, deadline_ms=None)
    assert check_typed(encode_request(raw), LIMITS) is not None
    assert first_error(raw, LIMITS) is None
    typed = parse_request(encode_request(raw), LIMITS)
    assert _same_arrays(typed, validate_request(raw, LIMITS))
    assert typed.history_post_ids.tolist() == [h["post_id"] for h in raw["history"][-32:]]
    assert (typed.top_k, typed.timestamp_ms, typed.deadline_ms) == (3, None, None)


def test_a_batch_parses_as_each_message_alone_with_errors_in_place():
    """parse_requests builds the arrays of a batch's typed requests together; each request
    must still get exactly its own items, and a bad message its own error, in order."""
    raws = [make_request(seed=i, n_history=[0, 3, 40, 7][i], n_candidates=[1, 9, 4, 2][i])
            for i in range(4)]
    bad = make_request(seed=9)
    bad["candidates"][0]["surface"] = -1
    raws[3]["candidates"][0]["surface"] = 5
    # Valid, but 5 written as a uint8: longer than msgpack's shortest encoding.
    wide = encode_request(raws[3]).replace(b"\xa7surface\x05", b"\xa7surface\xcc\x05", 1)
    assert wide != encode_request(raws[3]) and check_typed(wide, LIMITS) is not None
    values = [encode_request(raws[0]), encode_request(raws[1]), encode_request(bad),
              encode_request(raws[2]), wide]
    parsed = parse_requests(values, LIMITS)
    assert len(parsed) == 5 and isinstance(parsed[2], ValidationError)
    assert parsed[2].field == "candidates[0].surface"
    for got, raw in zip([parsed[0], parsed[1], parsed[3], parsed[4]], raws):
        alone = validate_request(raw, LIMITS)
        assert got.request_id == raw["request_id"] and _same_arrays(got, alone)
        assert got.num_history == alone.num_history and got.num_candidates == len(
            raw["candidates"])
    assert parse_requests([], LIMITS) == []


@pytest.mark.parametrize("with_history", [True, False], ids=["history", "no_history"])
def test_typed_path_reads_v2_requests_as_the_validator_does(with_history):
    raw = make_request(seed=5, n_history=6, n_candidates=3, schema=wire.REQUEST_SCHEMA_V2)
    if not with_history:
        del raw["history"]
    data = encode_request(raw)
    assert check_typed(data, LIMITS) is None  # v1 only unless the caller reads v2
    assert check_typed(data, LIMITS, wire.REQUEST_SCHEMAS) is not None
    (typed,) = parse_requests([data], LIMITS, wire.REQUEST_SCHEMAS)
    untyped = validate_request(raw, LIMITS, wire.REQUEST_SCHEMAS)
    assert _same_arrays(typed, untyped) and typed.num_history == (6 if with_history else 0)
    assert (typed.version, typed.history_source) == (untyped.version, untyped.history_source)
    assert typed.version == 2 and typed.history_source == ("request" if with_history
                                                           else "table")


def _repeat_candidate_key(data: bytes) -> bytes:
    return data.replace(b"\x83\xa7post_id", b"\x84\xa7surface\x01\xa7post_id", 1)


def _repeat_top_level_key(data: bytes) -> bytes:
    assert data[0] == 0x85  # fixmap of the 5 required keys
    return b"\x86" + data[1:] + b"\xa7user_id\x05"


@pytest.mark.parametrize("repeat, key", [
    pytest.param(_repeat_candidate_key, "'surface'", id="candidate"),
    pytest.param(_repeat_top_level_key, "'user_id'", id="top-level"),
])
def test_repeated_keys_never_pass_the_typed_path(repeat, key):
    # msgspec keeps the last of a repeated key; the length check hands these to msgpack.
    data = repeat(encode_request(make_request(n_candidates=1)))
    assert check_typed(data, LIMITS) is None
    with pytest.raises(ValidationError, match=f"has the key {key} more than once") as info:
        parse_request(data, LIMITS)
    assert info.value.code == "invalid"


def test_repeated_actions_and_candidates_never_pass_the_typed_path():
    raw = make_request()
    raw["history"][1]["actions"] = ["reply", "favorite", "reply"]
    assert check_typed(encode_request(raw), LIMITS) is None
    raw = make_request()
    raw["candidates"][2]["post_id"] = raw["candidates"][0]["post_id"]
    assert check_typed(encode_request(raw), LIMITS) is None
    assert first_error(raw, LIMITS).field == "candidates[2].post_id"


def test_valid_requests_in_a_longer_encoding_are_accepted():
    raw = make_request(n_history=2, n_candidates=1, user_id=5)
    data = encode_request(raw)
    wide = data.replace(b"\xa7user_id\x05", b"\xa7user_id\xcf" + (5).to_bytes(8, "big"), 1)
    assert wide != data and check_typed(wide, LIMITS) is not None
    request = parse_request(wide, LIMITS)
    assert request.user_id == 5 and _same_arrays(request, parse_request(data, LIMITS))


def test_typed_path_respects_the_configured_caps():
    limits = ValidationLimits(max_history=4, history_keep=2, max_candidates=3, num_surfaces=4,
                              max_request_id_len=5, max_message_bytes=4096)
    ok = make_request(n_history=4, n_candidates=3, request_id="abcde")
    for item in ok["history"] + ok["candidates"]:
        item["surface"] %= 4
    for item in ok["history"]:  # The untyped decoder caps every list at 4 items here.
        item["actions"] = item["actions"][:4]
    assert parse_request(encode_request(ok), limits).num_history == 2
    five_actions = list(ACTION_NAMES[:5])
    for path, value in [(("request_id",), "abcdef"), (("candidates", 0, "surface"), 4),
                        (("history",), ok["history"] * 2),
                        (("history", 0, "actions"), five_actions)]:
        raw = copy.deepcopy(ok)
        set_at(raw, path, value)
        assert check_typed(encode_request(raw), limits) is None
    big = make_request(n_history=60)
    assert len(encode_request(big)) > 4096 and check_typed(encode_request(big), limits) is None
