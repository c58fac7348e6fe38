"""Property tests: hostile input only ever yields ValidationError, naming its field; the typed
decoder (the acceptor) and the walker (which names errors) agree; codecs round-trip."""

from __future__ import annotations

import copy
import json
import pathlib
import re

import jsonschema
import msgpack
import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phoenix.actions import ACTION_NAMES, NUM_ACTIONS
from worker import codec
from worker.errors import DEAD_LETTER_CODES, ValidationError
from worker.request import RankingRequest
from worker.validation import (check_typed, first_error, parse_request, to_requests,
                               validate_request)
from worker.wire import ValidationLimits

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
LIMITS = ValidationLimits()
SMALL = ValidationLimits(max_message_bytes=2048, max_history=6, history_keep=3,
                         max_candidates=5, num_surfaces=4, max_request_id_len=8)

pytestmark = pytest.mark.timeout(120)  # A hang fails the file instead of stalling the suite.


def field_paths(obj: object, prefix: str = "", depth: int = 4) -> set[str]:
    """Every field path in a decoded request (to the request's depth), spelled as errors
    spell them: `candidates[3].post_id`; a bin key by its text."""
    paths = {prefix}
    if depth and isinstance(obj, dict):
        for key, value in obj.items():
            name = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
            paths |= field_paths(value, f"{prefix}.{name}" if prefix else name, depth - 1)
    elif depth and isinstance(obj, list):
        for i, value in enumerate(obj):
            paths |= field_paths(value, f"{prefix}[{i}]", depth - 1)
    return paths


def assert_names_its_field(error: ValidationError, obj: object) -> None:
    """An "invalid" error about one field names it: the message starts with its path, and the
    decoded request `obj` has a value there (or, for a missing key, the map that lacks it).
    Only a message that is not a map, or repeats a key, is about no one field."""
    message = str(error)
    if error.field is None:
        assert error.code != "invalid" or re.search(
            r"must be a msgpack map|has the key .* more than once", message), message
        return
    assert error.code == "invalid"
    assert re.match(re.escape(error.field) + "[ :]", message), (error.field, message)
    if "is required but missing" in message:
        parent = error.field.rsplit(".", 1)[0] if "." in error.field else ""
        assert parent in field_paths(obj) and error.field not in field_paths(obj), error
    else:
        assert error.field in field_paths(obj), error


def check_outcome(data: bytes, limits: ValidationLimits) -> None:
    """parse_request either returns a consistent request or raises a ValidationError."""
    try:
        request = parse_request(data, limits)
    except ValidationError as error:
        assert error.code in {"not_msgpack", "too_large", "invalid"}
        if error.field is not None:  # The walker named it on msgpack's decode of `data`.
            assert_names_its_field(error, codec.decode_request_bytes(data, limits))
        else:
            assert_names_its_field(error, None)
        return
    assert isinstance(request, RankingRequest)
    c = request.num_candidates
    assert 1 <= c <= limits.max_candidates
    assert request.history_actions.shape == (request.num_history,)
    assert int(request.history_actions.max(initial=0)) < 1 << NUM_ACTIONS
    assert request.num_history <= limits.history_keep
    assert np.unique(request.candidate_post_ids).size == c
    assert (request.candidate_surfaces < limits.num_surfaces).all()


# ------------------------------------------------------------------------------- raw bytes

@FUZZ
@given(data=st.binary(max_size=4096))
def test_arbitrary_bytes(data):
    check_outcome(data, LIMITS)
    check_outcome(data, SMALL)


# Msgpack type bytes make random input reach deeper than uniform noise does.
HEADERS = st.sampled_from([b"\x80", b"\x81", b"\x8f", b"\x90", b"\x91", b"\x9f", b"\xa1",
                           b"\xc0", b"\xc1", b"\xc2", b"\xc3", b"\xc4\x01", b"\xc7\x00\x05",
                           b"\xca", b"\xcb", b"\xcf", b"\xd3", b"\xd4\x01", b"\xd9\x05",
                           b"\xdc\x00\x02", b"\xdd\xff\xff\xff\xff", b"\xde\x00\x02",
                           b"\xdf\xff\xff\xff\xff", b"\xa6schema", b"\xa7user_id"])


@FUZZ
@given(parts=st.lists(st.one_of(HEADERS, st.binary(max_size=8)), max_size=60))
def test_msgpack_shaped_bytes(parts):
    data = b"".join(parts)
    check_outcome(data, LIMITS)
    check_outcome(data, SMALL)


# -------------------------------------------------------------------- arbitrary structures

SCALARS = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20), st.binary(max_size=20),
    st.sampled_from(ACTION_NAMES), st.integers(min_value=-2, max_value=20),
)
KEYS = st.one_of(st.sampled_from(["schema", "request_id", "user_id", "history", "candidates",
                                  "top_k", "timestamp_ms", "deadline_ms", "post_id",
                                  "author_id", "actions", "surface"]),
                 st.text(max_size=8))
STRUCTURES = st.recursive(
    SCALARS,
    lambda children: st.one_of(st.lists(children, max_size=6),
                               st.dictionaries(KEYS, children, max_size=6)),
    max_leaves=40)


@FUZZ
@given(obj=STRUCTURES)
def test_arbitrary_msgpack_structures(obj):
    data = msgpack.packb(obj, use_bin_type=True)
    check_outcome(data, LIMITS)
    check_outcome(data, SMALL)
    if isinstance(obj, dict):  # The Python objects themselves, without the decoder's caps.
        try:
            validate_request(obj, LIMITS)
        except ValidationError as error:
            assert error.code == "invalid"
            assert_names_its_field(error, obj)


# ---------------------------------------------------- near-valid requests (reach every rule)

IDS = st.integers(min_value=1, max_value=2**64 - 1)
VALID_REQUEST = st.fixed_dictionaries(
    {"schema": st.just("ranking-request.v1"),
     "request_id": st.text(min_size=1, max_size=8),
     "user_id": IDS,
     "history": st.lists(st.fixed_dictionaries(
         {"post_id": IDS, "author_id": IDS,
          "actions": st.lists(st.sampled_from(ACTION_NAMES), max_size=6, unique=True),
          "surface": st.integers(0, 3)}), max_size=6),
     "candidates": st.lists(st.fixed_dictionaries(
         {"post_id": IDS, "author_id": IDS, "surface": st.integers(0, 3)}),
         min_size=1, max_size=5, unique_by=lambda c: c["post_id"])},
    optional={"top_k": st.integers(1, 100), "timestamp_ms": st.integers(0, 2**63 - 1),
              "deadline_ms": st.integers(0, 2**63 - 1)})


def containers(obj, found=None) -> list:
    found = [] if found is None else found
    found.append(obj)
    for value in (obj.values() if isinstance(obj, dict) else obj):
        if isinstance(value, (dict, list)):
            containers(value, found)
    return found


# Values one rule away from valid: type confusions at the edges of the ranges. Each draw is a
# fresh copy: `near_valid_requests` edits containers in place, and a shared `[]` edited in one
# example would change what later draws hand out (Hypothesis then reports a flaky strategy).
NEAR_MISSES = st.sampled_from([0, -1, 1, 3, 4, 15, 16, 2**63, 2**64 - 1, 1.0, 2.5, float("nan"),
                               float("inf"), True, False, None, "1", b"1", "", [], {},
                               ["favorite", "favorite"], ["favourite"], "ranking-request.v2"]
                              ).map(copy.deepcopy)


@st.composite
def near_valid_requests(draw) -> dict:
    """A valid request (within SMALL's limits) with 0..3 random edits anywhere in it."""
    request = draw(VALID_REQUEST)
    for _ in range(draw(st.integers(0, 3))):
        target = draw(st.sampled_from(containers(request)))
        keys = list(target) if isinstance(target, dict) else list(range(len(target)))
        op = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        kind = draw(st.sampled_from(["near_miss", "near_miss", "scalar", "structure"]))
        value = draw({"near_miss": NEAR_MISSES, "scalar": SCALARS, "structure": STRUCTURES}[kind])
        if op == "add" and isinstance(target, dict):
            target[draw(KEYS)] = value
        elif op == "add":
            target.append(value)
        elif keys and op == "delete":
            del target[draw(st.sampled_from(keys))]
        elif keys:
            target[draw(st.sampled_from(keys))] = value
    return request


REQUEST = near_valid_requests()


# An independent oracle: the schema file, with "integer" meaning a msgpack int (schemas/README.md).
_TYPES = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
    "integer", lambda _checker, value: type(value) is int)
SCHEMA = jsonschema.validators.extend(jsonschema.Draft202012Validator, type_checker=_TYPES)(
    json.loads((pathlib.Path(__file__).resolve().parents[1] / "schemas"
                / "ranking-request.v1.json").read_text()))


@FUZZ
@given(obj=REQUEST)
def test_near_valid_requests(obj):
    data = msgpack.packb(obj, use_bin_type=True)
    check_outcome(data, LIMITS)
    check_outcome(data, SMALL)
    try:
        validate_request(obj, LIMITS)
    except ValidationError as error:
        assert_names_its_field(error, obj)
        # Rejected: the schema must reject it too, unless it is the rule the schema cannot state.
        assert not SCHEMA.is_valid(obj) or "repeats the post id" in str(error), error
    else:
        assert SCHEMA.is_valid(obj)  # Accepted: the schema accepts it too.


def corrupted(obj, flips: list[tuple[int, int]]) -> bytearray:
    """`obj` packed, then each (position, value) written over one of its bytes."""
    data = bytearray(msgpack.packb(obj, use_bin_type=True))
    for position, value in flips:
        data[position % len(data)] = value
    return data


@FUZZ
@given(obj=REQUEST, cut=st.integers(min_value=0), flips=st.lists(
    st.tuples(st.integers(min_value=0), st.integers(0, 255)), max_size=4))
def test_truncated_and_corrupted_requests(obj, cut, flips):
    data = corrupted(obj, flips)
    check_outcome(bytes(data[: cut % (len(data) + 1)]), LIMITS)
    check_outcome(bytes(data), SMALL)


# ------------------------------------------- the acceptor and the walker read one rule book

def expected_request(obj: dict, limits: ValidationLimits) -> RankingRequest:
    """The request a valid ranking-request.v1 map describes, built here item by item."""
    kept = obj["history"][len(obj["history"]) - min(len(obj["history"]), limits.history_keep):]
    candidates = obj["candidates"]

    def column(items: list, key: str, dtype) -> np.ndarray:
        return np.array([item[key] for item in items], dtype=dtype)

    return RankingRequest(
        request_id=obj["request_id"], user_id=obj["user_id"],
        history_post_ids=column(kept, "post_id", np.uint64),
        history_author_ids=column(kept, "author_id", np.uint64),
        history_actions=np.array([sum(1 << ACTION_NAMES.index(a) for a in item["actions"])
                                  for item in kept], dtype=np.uint32),
        history_surfaces=column(kept, "surface", np.int32),
        candidate_post_ids=column(candidates, "post_id", np.uint64),
        candidate_author_ids=column(candidates, "author_id", np.uint64),
        candidate_surfaces=column(candidates, "surface", np.int32),
        top_k=obj.get("top_k"), timestamp_ms=obj.get("timestamp_ms"),
        deadline_ms=obj.get("deadline_ms"))


def assert_same_request(got: RankingRequest, want: RankingRequest) -> None:
    for field in msgspec.structs.fields(RankingRequest):
        a, b = getattr(got, field.name), getattr(want, field.name)
        if isinstance(b, np.ndarray):
            assert a.dtype == b.dtype and a.shape == b.shape, field.name
            np.testing.assert_array_equal(a, b, err_msg=field.name)
        else:
            assert type(a) is type(b) and a == b, field.name


def check_readers_agree(data: bytes, limits: ValidationLimits) -> None:
    """The typed decoder accepts exactly the messages msgpack decodes and the walker finds no
    broken rule in, and turns each into the request its map describes."""
    checked = check_typed(data, limits)
    try:
        obj = codec.decode_request_bytes(data, limits)
    except ValidationError:
        assert checked is None, "the typed decoder took what msgpack's decoder refuses"
        return
    error = first_error(obj, limits)
    if checked is None:
        assert error is not None, "the typed decoder refused what the walker finds valid"
        assert_names_its_field(error, obj)
    else:
        assert error is None, f"the walker refuses what the typed decoder took: {error!r}"
        assert_same_request(to_requests([checked])[0], expected_request(obj, limits))


@FUZZ
@given(obj=REQUEST)
def test_acceptor_and_walker_agree_on_near_valid_requests(obj):
    data = msgpack.packb(obj, use_bin_type=True)
    check_readers_agree(data, LIMITS)
    check_readers_agree(data, SMALL)


@FUZZ
@given(obj=VALID_REQUEST, nils=st.booleans())
def test_typed_path_takes_every_valid_request(obj, nils):
    if nils:  # Explicit nil and absent optional fields both mean "not given".
        obj = {"top_k": None, "timestamp_ms": None, "deadline_ms": None, **obj}
    data = msgpack.packb(obj, use_bin_type=True)
    assert check_typed(data, LIMITS) is not None
    check_readers_agree(data, LIMITS)
    check_readers_agree(data, SMALL)


@FUZZ
@given(obj=STRUCTURES)
def test_acceptor_and_walker_agree_on_arbitrary_structures(obj):
    data = msgpack.packb(obj, use_bin_type=True)
    check_readers_agree(data, LIMITS)
    check_readers_agree(data, SMALL)


@FUZZ
@given(obj=REQUEST, cut=st.integers(min_value=0), flips=st.lists(
    st.tuples(st.integers(min_value=0), st.integers(0, 255)), max_size=4))
def test_acceptor_and_walker_agree_on_corrupted_bytes(obj, cut, flips):
    # Flipped bytes make longer-than-shortest encodings and repeated keys, among others.
    data = corrupted(obj, flips)
    check_readers_agree(bytes(data[: cut % (len(data) + 1)]), LIMITS)
    check_readers_agree(bytes(data), SMALL)


# -------------------------------------------------------------------------- round trips

FINITE32 = st.floats(allow_nan=False, allow_infinity=False, width=32)  # Model outputs are f32.
RESULT = st.fixed_dictionaries({
    "schema": st.just("ranking-result.v1"),
    "request_id": st.text(min_size=1, max_size=128),
    "user_id": IDS,
    "model_version": st.text(min_size=1, max_size=20),
    "worker_id": st.text(min_size=1, max_size=20),
    "ranked": st.lists(st.fixed_dictionaries({
        "post_id": IDS, "author_id": IDS, "score": FINITE32,
        "probabilities": st.fixed_dictionaries(
            {name: st.floats(0, 1) for name in ACTION_NAMES})}), min_size=1, max_size=8),
    "timings": st.fixed_dictionaries({"queue_wait_ms": st.floats(0, 1e6),
                                      "model_ms": st.floats(0, 1e6)}),
    "request_timestamp_ms": st.none() | st.integers(0, 2**63 - 1),
    "produced_at_ms": st.integers(0, 2**63 - 1),
})


@FUZZ
@given(result=RESULT)
def test_result_round_trip(result):
    assert codec.decode_message(codec.encode_result(result)) == result


@FUZZ
@given(result=RESULT)
def test_result_round_trip_with_numpy_scalars(result):
    # What the worker really hands the encoder: float32 model outputs and uint64 ids.
    as_numpy = dict(result, user_id=np.uint64(result["user_id"]), ranked=[
        dict(item, post_id=np.uint64(item["post_id"]), score=np.float32(item["score"]))
        for item in result["ranked"]])
    decoded = codec.decode_message(codec.encode_result(as_numpy))
    assert decoded["user_id"] == result["user_id"]
    for got, sent in zip(decoded["ranked"], result["ranked"]):
        assert got["post_id"] == sent["post_id"]
        assert got["score"] == sent["score"]  # float32 -> float64 is exact.


@FUZZ
@given(original=st.binary(max_size=2048), partition=st.integers(0, 2**31 - 1),
       offset=st.integers(0, 2**63 - 1), code=st.sampled_from(
           list(DEAD_LETTER_CODES)),
       message=st.text(max_size=300), field=st.none() | st.text(max_size=40),
       request_id=st.none() | st.text(min_size=1, max_size=128))
def test_dead_letter_round_trip(original, partition, offset, code, message, field, request_id):
    data = codec.encode_dead_letter(original, topic="ranking-requests", partition=partition,
                                    offset=offset, code=code, message=message, field=field,
                                    request_id=request_id, time_ms=5)
    assert codec.decode_message(data) == {
        "schema": "dead-letter.v2", "original": original,
        "original_size": len(original), "original_truncated": False,
        "source": {"topic": "ranking-requests", "partition": partition, "offset": offset},
        "error": {"code": code, "message": message, "field": field},
        "request_id": request_id, "time_ms": 5}
