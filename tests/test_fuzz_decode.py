"""Property tests: hostile input only ever yields ValidationError; the typed and untyped
decoders agree; codecs round-trip."""

from __future__ import annotations

import copy
import json
import pathlib

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
from worker.validation import ValidationLimits, parse_request, parse_typed, validate_request

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
LIMITS = ValidationLimits()
SMALL = ValidationLimits(max_message_bytes=2048, max_history=6, history_keep=3,
                         max_candidates=5, num_surfaces=4, max_request_id_len=8)

pytestmark = pytest.mark.timeout(120)  # A hang fails the file instead of stalling the suite.


def check_outcome(data: bytes, limits: ValidationLimits) -> None:
    """parse_request either returns a consistent request or raises a ValidationError."""
    try:
        request = parse_request(data, limits)
    except ValidationError as error:
        assert error.code in {"not_msgpack", "too_large", "invalid"}
        assert isinstance(str(error), str) and str(error)
        assert error.field is None or isinstance(error.field, str)
        assert "worker bug" not in str(error)  # The fast and item-by-item checks agree.
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
    if isinstance(obj, dict):  # The validator alone, on the Python objects themselves.
        try:
            validate_request(obj, LIMITS)
        except ValidationError as error:
            assert error.code == "invalid"


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
        assert error.code == "invalid" and "worker bug" not in str(error)
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


# ------------------------------------------------- typed decoder vs the untyped validator

def untyped(data: bytes, limits: ValidationLimits) -> RankingRequest | None:
    """The request as msgpack's decode + validate_request build it, or None if they refuse."""
    try:
        return validate_request(codec.decode_request_bytes(data, limits), limits)
    except ValidationError:
        return None


def assert_same_request(got: RankingRequest, want: RankingRequest) -> None:
    for field in msgspec.structs.fields(RankingRequest):
        a, b = getattr(got, field.name), getattr(want, field.name)
        if isinstance(b, np.ndarray):
            assert a.dtype == b.dtype and a.shape == b.shape, field.name
            np.testing.assert_array_equal(a, b, err_msg=field.name)
        else:
            assert type(a) is type(b) and a == b, field.name


def check_paths_agree(data: bytes, limits: ValidationLimits, shortest: bool) -> None:
    """The typed path accepts only what the untyped one accepts, and builds the same request;
    on bytes in msgpack's shortest encoding (`shortest`) it takes every valid request."""
    typed, slow = parse_typed(data, limits), untyped(data, limits)
    if typed is None:
        assert not (shortest and slow is not None), "a valid request missed the typed path"
        return
    assert slow is not None, "the typed path accepted what the validator refuses"
    assert_same_request(typed, slow)


@FUZZ
@given(obj=REQUEST)
def test_typed_and_untyped_paths_agree_on_near_valid_requests(obj):
    data = msgpack.packb(obj, use_bin_type=True)  # msgpack-python writes the shortest form
    check_paths_agree(data, LIMITS, shortest=True)
    check_paths_agree(data, SMALL, shortest=True)


@FUZZ
@given(obj=VALID_REQUEST, nils=st.booleans())
def test_typed_path_takes_every_valid_request(obj, nils):
    if nils:  # Explicit nil and absent optional fields both mean "not given".
        obj = {"top_k": None, "timestamp_ms": None, "deadline_ms": None, **obj}
    data = msgpack.packb(obj, use_bin_type=True)
    assert parse_typed(data, LIMITS) is not None
    check_paths_agree(data, LIMITS, shortest=True)
    check_paths_agree(data, SMALL, shortest=True)


@FUZZ
@given(obj=STRUCTURES)
def test_typed_and_untyped_paths_agree_on_arbitrary_structures(obj):
    data = msgpack.packb(obj, use_bin_type=True)
    check_paths_agree(data, LIMITS, shortest=True)
    check_paths_agree(data, SMALL, shortest=True)


@FUZZ
@given(obj=REQUEST, cut=st.integers(min_value=0), flips=st.lists(
    st.tuples(st.integers(min_value=0), st.integers(0, 255)), max_size=4))
def test_typed_and_untyped_paths_agree_on_corrupted_bytes(obj, cut, flips):
    # Flipped bytes make longer-than-shortest encodings and repeated keys, among others.
    data = corrupted(obj, flips)
    check_paths_agree(bytes(data[: cut % (len(data) + 1)]), LIMITS, shortest=False)
    check_paths_agree(bytes(data), SMALL, shortest=False)


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
