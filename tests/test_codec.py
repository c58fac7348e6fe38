"""Unit tests: msgpack decoding caps, encoders, record keys and the error tree."""

from __future__ import annotations

import pathlib
import re
import tracemalloc

import msgpack
import numpy as np
import pytest

from worker import codec
from worker.errors import (
    DEAD_LETTER_CODES,
    ExpiredError,
    ModelError,
    BrokerUnavailableError,
    ValidationError,
    WorkerError,
)
from worker.validation import parse_request
from worker.wire import ValidationLimits

README = pathlib.Path(__file__).resolve().parents[1] / "schemas" / "README.md"
LIMITS = ValidationLimits()


def minimal_request(**overrides) -> dict:
    request = {"schema": "ranking-request.v1", "request_id": "a", "user_id": 1, "history": [],
               "candidates": [{"post_id": 2, "author_id": 3, "surface": 0}]}
    request.update(overrides)
    return request


def decode_error(data, limits: ValidationLimits = LIMITS) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        codec.decode_request_bytes(data, limits)
    return info.value


# ------------------------------------------------------------------------------ record keys

@pytest.mark.parametrize("user_id, key", [
    pytest.param(1, b"\x00" * 7 + b"\x01", id="one"),
    pytest.param(42, b"\x00\x00\x00\x00\x00\x00\x00\x2a", id="42"),
    pytest.param(2**64 - 1, b"\xff" * 8, id="u64-max"),
    pytest.param(0x0102030405060708, bytes(range(1, 9)), id="byte-order"),
])
def test_user_key_is_8_bytes_big_endian(user_id, key):
    assert codec.user_key(user_id) == key


def test_user_key_accepts_numpy_uint64():
    assert codec.user_key(np.uint64(2**63 + 1)) == (2**63 + 1).to_bytes(8, "big")


@pytest.mark.parametrize("bad, error", [
    pytest.param(0, ValueError, id="zero"),
    pytest.param(-1, ValueError, id="negative"),
    pytest.param(2**64, ValueError, id="too-big"),
    pytest.param(True, TypeError, id="bool"),
    pytest.param(1.0, TypeError, id="float"),
])
def test_user_key_rejects_non_ids(bad, error):
    with pytest.raises(error):
        codec.user_key(bad)


# --------------------------------------------------------------------- decoder: byte cap first

def test_byte_cap_is_checked_before_parsing():
    # Garbage that would be "not_msgpack" if parsed: the size verdict must come first.
    limits = ValidationLimits(max_message_bytes=64)
    error = decode_error(b"\xc1" * 65, limits)
    assert error.code == "too_large" and error.field is None
    assert "65 bytes, over the 64-byte cap" in str(error)


def test_message_at_byte_cap_is_accepted():
    data = codec.encode_request(minimal_request())
    limits = ValidationLimits(max_message_bytes=len(data))
    assert codec.decode_request_bytes(data, limits) == minimal_request()


def test_valid_request_over_a_lowered_byte_cap_is_too_large():
    data = codec.encode_request(minimal_request())
    error = decode_error(data, ValidationLimits(max_message_bytes=len(data) - 1))
    assert error.code == "too_large"


# ------------------------------------------------------------ decoder: per-object caps (item 7)

HOSTILE_HEADERS = [
    pytest.param(b"\xdd\xff\xff\xff\xff", "max_array_len", id="array32-4G-items"),
    pytest.param(b"\xdc\xff\xff", "max_array_len", id="array16-65535-items"),
    pytest.param(b"\xdf\xff\xff\xff\xff", "max_map_len", id="map32-4G-keys"),
    pytest.param(b"\x81\xa1a\xdd\x7f\xff\xff\xff", "max_array_len", id="nested-array-2G"),
]


@pytest.mark.parametrize("data, cap", HOSTILE_HEADERS)
def test_length_headers_over_caps_fail_before_allocating(data, cap):
    tracemalloc.start()
    try:
        error = decode_error(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert error.code == "too_large"
    assert cap in str(error)
    # The headers announce up to gigabytes; refusing them must cost next to nothing. (msgpack's
    # unpackb also bounds lengths by len(data) by default; our caps are tighter, see below.)
    assert peak < 256 * 1024, f"decoding a {len(data)}-byte header peaked at {peak} bytes"


def test_array_cap_follows_configured_limits():
    limits = ValidationLimits(max_history=4, max_candidates=6)
    ok = codec.encode_request({"x": list(range(6))})
    assert codec.decode_request_bytes(ok, limits) == {"x": list(range(6))}
    error = decode_error(codec.encode_request({"x": list(range(7))}), limits)
    assert error.code == "too_large" and "7 exceeds max_array_len(6)" in str(error)


def test_map_over_32_keys_is_too_large():
    ok = {f"k{i}": i for i in range(codec.MAX_MAP_KEYS)}
    assert codec.decode_request_bytes(codec.encode_request(ok), LIMITS) == ok
    too_many = {f"k{i}": i for i in range(codec.MAX_MAP_KEYS + 1)}
    assert decode_error(codec.encode_request(too_many)).code == "too_large"


@pytest.mark.parametrize("value", [
    pytest.param("x" * 513, id="str"),
    pytest.param(b"x" * 513, id="bin"),
])
def test_strings_and_binaries_over_512_bytes_are_too_large(value):
    # 512 = 4 bytes per character of the 128-character request id cap.
    assert decode_error(codec.encode_request({"request_id": value})).code == "too_large"
    fits = {"request_id": value[:512]}
    assert codec.decode_request_bytes(codec.encode_request(fits), LIMITS) == fits


def test_deep_nesting_is_too_large_not_a_crash():
    error = decode_error(b"\x91" * 5000 + b"\x00")
    assert error.code == "too_large" and "nested too deeply" in str(error)


# ----------------------------------------------------------------- decoder: not msgpack at all

NOT_MSGPACK = [
    pytest.param(b"", "empty", id="empty"),
    pytest.param(None, "null", id="tombstone-none"),
    pytest.param("a string", "expected bytes", id="python-str"),
    pytest.param(b"\xc1", "0xc1", id="reserved-byte"),
    pytest.param(b"\x82\xa1a\x01", "truncated", id="truncated-map"),
    pytest.param(b"\x81\xa1a\x01\x00", "bytes follow", id="trailing-bytes"),
    pytest.param(b"\x81\xa1a\xa2\xff\xfe", "UTF-8", id="bad-utf8"),
    pytest.param(b"\x81\x01\x02", "int is not allowed for map key", id="int-key"),
    pytest.param(b"\x81\xc0\x02", "NoneType is not allowed for map key", id="nil-key"),
    pytest.param(b"\x81\x90\x02", "list is not allowed for map key", id="array-key"),
    pytest.param(b"\xd4\x01\x00", "extension type", id="fixext1"),
    pytest.param(b"\x81\xa1a\xc7\x00\x05", "extension type 5", id="empty-ext"),
    pytest.param(msgpack.packb(msgpack.Timestamp(1, 0)), "extension type", id="timestamp"),
    pytest.param(b'{"schema": "ranking-request.v1"}', "bytes follow", id="json-text"),
]


@pytest.mark.parametrize("data, reason", NOT_MSGPACK)
def test_non_msgpack_input_is_not_msgpack(data, reason):
    error = decode_error(data)
    assert error.code == "not_msgpack"
    assert error.field is None
    assert reason in str(error)
    assert "send exactly one msgpack map" in str(error)  # The fix, not only the fact.


@pytest.mark.parametrize("data, got", [
    pytest.param(msgpack.packb([1, 2]), "an array of 2 items", id="array"),
    pytest.param(msgpack.packb(7), "7", id="int"),
    pytest.param(msgpack.packb(None), "nil", id="nil"),
    pytest.param(msgpack.packb("ranking-request.v1"), "the string", id="str"),
])
def test_top_level_value_must_be_a_map(data, got):
    error = decode_error(data)
    assert error.code == "invalid" and error.field is None
    assert re.search(f"must be a msgpack map.*got {re.escape(got)}", str(error))


@pytest.mark.parametrize("data, key", [
    pytest.param(b"\x82\xa1a\x01\xa1a\x02", "'a'", id="top-level"),
    pytest.param(b"\x81\xa1h\x91\x82\xa1p\x01\xa1p\x01", "'p'", id="nested-same-value"),
])
def test_repeated_map_keys_are_rejected(data, key):
    error = decode_error(data)
    assert error.code == "invalid"
    assert f"the key {key} more than once" in str(error)


def test_binary_keys_decode_so_validation_can_name_them():
    data = msgpack.packb({b"user_id": 1}, use_bin_type=True)
    assert codec.decode_request_bytes(data, LIMITS) == {b"user_id": 1}


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview], ids=lambda f: f.__name__)
def test_decoder_accepts_bytes_like(wrap):
    data = wrap(codec.encode_request(minimal_request()))
    assert codec.decode_request_bytes(data, LIMITS) == minimal_request()


# ------------------------------------------------------------------------------- encoders

def test_strings_are_msgpack_str_and_bytes_are_bin():
    # fixmap(1) fixstr"a" fixstr"b"; then bin8 of 2 bytes.
    assert codec.encode_request({"a": "b"}) == b"\x81\xa1a\xa1b"
    assert codec.encode_request({"a": b"\x00\x01"}) == b"\x81\xa1a\xc4\x02\x00\x01"


def test_large_ids_encode_as_uint64():
    assert codec.encode_request({"u": 2**64 - 1}) == b"\x81\xa1u\xcf" + b"\xff" * 8


def sample_result() -> dict:
    return {
        "schema": "ranking-result.v1", "request_id": "r", "user_id": 2**64 - 1,
        "model_version": "m1", "worker_id": "w1",
        "ranked": [{"post_id": 5, "author_id": 6, "score": 0.25,
                    "probabilities": {"favorite": 0.5, "reply": 0.125}}],
        "timings": {"queue_wait_ms": 1.5, "model_ms": 3.0},
        "request_timestamp_ms": None, "produced_at_ms": 1_700_000_000_000,
    }


def test_result_round_trip():
    result = sample_result()
    assert codec.decode_message(codec.encode_result(result)) == result


def test_result_numpy_scalars_become_python_numbers():
    result = sample_result()
    result["user_id"] = np.uint64(2**64 - 1)
    result["ranked"][0]["score"] = np.float32(0.25)
    result["timings"]["model_ms"] = np.float64(3.0)
    decoded = codec.decode_message(codec.encode_result(result))
    assert decoded == sample_result()
    assert type(decoded["user_id"]) is int and type(decoded["ranked"][0]["score"]) is float


def test_result_refuses_arrays_and_wrong_schema():
    result = sample_result()
    result["ranked"][0]["score"] = np.zeros(2)
    with pytest.raises(TypeError, match="cannot encode ndarray"):
        codec.encode_result(result)
    with pytest.raises(ValueError, match="schema='ranking-result.v1'"):
        codec.encode_result({**sample_result(), "schema": "ranking-request.v1"})


def test_dead_letter_keeps_original_bytes_untouched():
    original = b"\xc1\x00garbage\xff" + bytes(range(256))
    data = codec.encode_dead_letter(
        original, topic="ranking-requests", partition=3, offset=17, code="not_msgpack",
        message="m", time_ms=123)
    decoded = codec.decode_message(data)
    assert decoded == {
        "schema": "dead-letter.v2", "original": original,
        "original_size": len(original), "original_truncated": False,
        "source": {"topic": "ranking-requests", "partition": 3, "offset": 17},
        "error": {"code": "not_msgpack", "message": "m", "field": None},
        "request_id": None, "time_ms": 123}
    assert type(decoded["original"]) is bytes


def test_dead_letter_cuts_an_original_over_keep_bytes_and_records_its_size():
    original = bytes(range(256)) * 40  # 10240 bytes
    decoded = codec.decode_message(codec.encode_dead_letter(
        original, topic="t", partition=0, offset=0, code="too_large", message="m",
        keep_bytes=1000))
    assert decoded["original"] == original[:1000]
    assert decoded["original_size"] == 10240
    assert decoded["original_truncated"] is True


@pytest.mark.parametrize("size, kept", [(10, 10), (1 << 20, 1 << 20),
                                        ((1 << 20) + 1, codec.ORIGINAL_PREFIX_BYTES),
                                        (20 << 20, codec.ORIGINAL_PREFIX_BYTES)],
                         ids=["small", "at-cap", "just-over", "20MB"])
def test_dead_letter_keeps_originals_whole_up_to_the_request_cap(size, kept):
    assert codec.original_keep_bytes(size, 1 << 20) == kept


def test_dead_letter_null_value_becomes_empty_bytes_and_time_defaults_to_now():
    decoded = codec.decode_message(codec.encode_dead_letter(
        None, topic="t", partition=0, offset=0, code="invalid", message="m"))
    assert decoded["original"] == b""
    assert decoded["time_ms"] > 1_600_000_000_000


def test_dead_letter_refuses_unknown_codes_and_truncates_long_messages():
    with pytest.raises(ValueError, match="dead-letter code must be one of"):
        codec.encode_dead_letter(b"", topic="t", partition=0, offset=0, code="oops", message="m")
    long = "x" * 5000
    decoded = codec.decode_message(codec.encode_dead_letter(
        b"", topic="t", partition=0, offset=0, code="model_error", message=long))
    assert len(decoded["error"]["message"]) == codec.DEAD_LETTER_MESSAGE_CHARS + 3


def test_dead_letter_from_validation_error_carries_code_field_and_request_id():
    bad = codec.encode_request(minimal_request(
        request_id="r-9", candidates=[{"post_id": 0, "author_id": 3, "surface": 0}]))
    with pytest.raises(ValidationError) as info:
        parse_request(bad)
    decoded = codec.decode_message(codec.dead_letter_from_error(
        info.value, bad, topic="ranking-requests", partition=1, offset=2))
    assert decoded["original"] == bad
    assert decoded["request_id"] == "r-9"
    assert decoded["error"]["code"] == "invalid"
    assert decoded["error"]["field"] == "candidates[0].post_id"
    assert decoded["error"]["message"] == str(info.value)


@pytest.mark.parametrize("error, code", [
    pytest.param(ExpiredError("late"), "expired", id="expired"),
    pytest.param(ModelError("boom"), "model_error", id="model"),
])
def test_dead_letter_from_other_errors(error, code):
    decoded = codec.decode_message(codec.dead_letter_from_error(
        error, b"x", topic="t", partition=0, offset=0, request_id="r"))
    assert decoded["error"] == {"code": code, "message": str(error), "field": None}
    assert decoded["request_id"] == "r"


def test_transient_errors_cannot_be_dead_lettered():
    with pytest.raises(ValueError, match="no dead-letter code"):
        codec.dead_letter_from_error(BrokerUnavailableError("down"), b"", topic="t",
                                     partition=0, offset=0)


@pytest.mark.parametrize("data, code", [
    pytest.param(b"", "not_msgpack", id="empty"),
    pytest.param(b"\xc1", "not_msgpack", id="reserved"),
    pytest.param(msgpack.packb([1]), "invalid", id="array"),
])
def test_decode_message_raises_validation_errors(data, code):
    with pytest.raises(ValidationError) as info:
        codec.decode_message(data)
    assert info.value.code == code


def test_decode_message_byte_cap():
    data = codec.encode_result(sample_result())
    with pytest.raises(ValidationError, match="over the 10-byte cap") as info:
        codec.decode_message(data, max_bytes=10)
    assert info.value.code == "too_large"


# ------------------------------------------------------------------------- the error tree

@pytest.mark.parametrize("error, code", [
    pytest.param(ValidationError("invalid", "m", "f"), "invalid", id="validation"),
    pytest.param(ExpiredError("m"), "expired", id="expired"),
    pytest.param(ModelError("m"), "model_error", id="model"),
    pytest.param(BrokerUnavailableError("m"), None, id="broker-unavailable"),
])
def test_errors_carry_their_dead_letter_code(error, code):
    assert isinstance(error, WorkerError)
    assert error.code == code
    assert code is None or code in DEAD_LETTER_CODES


def test_validation_error_refuses_codes_it_does_not_own():
    with pytest.raises(ValueError, match="must be one of"):
        ValidationError("expired", "m")


# ------------------------------------------------------------------ README's byte test vector

def _readme_test_vector() -> bytes:
    text = README.read_text()
    block = text.split("<!-- test-vector: ranking-request.v1 -->\n```\n", 1)[1].split("```")[0]
    return bytes.fromhex(block)


def test_readme_test_vector_is_what_we_encode_and_accept():
    vector = _readme_test_vector()
    assert codec.encode_request(minimal_request()) == vector
    request = parse_request(vector)
    assert request.request_id == "a" and request.user_id == 1
    assert request.candidate_post_ids.tolist() == [2]
