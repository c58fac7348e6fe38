"""The JSON Schema files agree with the fast validator, the constants and the README examples."""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
import math
import pathlib
import random
import time

import jsonschema
import msgspec
import pytest

from phoenix.actions import ACTION_NAMES
from tools.producer import BAD_EVENT_KINDS, generate_events
from worker import codec, wire
from worker.assembly import Buckets
from worker.pipeline import InputRecord, RankingPipeline, publish_failed
from worker.errors import DEAD_LETTER_CODES, ValidationError
from worker.engagement import parse_engagement, validate_engagement
from worker.validation import parse_request, validate_request
from worker.wire import TOP_K_MAX, ValidationLimits

SCHEMAS = pathlib.Path(__file__).resolve().parents[1] / "schemas"
LIMITS = ValidationLimits()


def load(name: str) -> dict:
    return json.loads((SCHEMAS / f"{name}.json").read_text())


# msgpack keeps ints and floats apart; JSON Schema's "integer" also admits 3.0. The README's
# JSON-form mapping says integer means a msgpack int, so the tests validate with that checker.
_TYPES = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
    "integer", lambda _checker, value: type(value) is int)
StrictValidator = jsonschema.validators.extend(jsonschema.Draft202012Validator,
                                               type_checker=_TYPES)
VALIDATORS = {name: StrictValidator(load(name)) for name in
              ("ranking-request.v1", "ranking-result.v1", "dead-letter.v1", "dead-letter.v2",
               "ranking-request.v2", "ranking-result.v2", "engagement.v1")}


def json_form_of_dead_letter(message: dict) -> dict:
    """The README's JSON form: the one bin field, `original`, becomes base64 text."""
    form = dict(message)
    form["original"] = base64.b64encode(message["original"]).decode("ascii")
    return form


def path_text(path) -> str:
    text = ""
    for step in path:
        text += f"[{step}]" if isinstance(step, int) else (f".{step}" if text else str(step))
    return text


def parent(field: str) -> str:
    if field.endswith("]"):
        return field[:field.rindex("[")]
    return field[:field.rindex(".")] if "." in field else ""


def schema_error_paths(name: str, message) -> set[str]:
    return {path_text(e.absolute_path) for e in VALIDATORS[name].iter_errors(message)}


# ------------------------------------------------------------------ the schema files themselves

@pytest.mark.parametrize("name", sorted(VALIDATORS))
def test_schema_files_are_valid_draft_2020_12(name):
    schema = load(name)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["properties"]["schema"]["const"] == name
    assert schema["title"] == name


def test_request_schema_matches_the_constants():
    schema = load("ranking-request.v1")
    props, defs = schema["properties"], schema["$defs"]
    assert props["schema"]["const"] == wire.REQUEST_SCHEMA
    assert defs["action"]["enum"] == list(ACTION_NAMES)
    assert props["history"]["maxItems"] == LIMITS.max_history
    assert props["candidates"]["maxItems"] == LIMITS.max_candidates
    assert props["candidates"]["minItems"] == 1
    assert props["request_id"]["maxLength"] == LIMITS.max_request_id_len
    assert defs["surface"]["maximum"] == LIMITS.num_surfaces - 1
    assert defs["id"]["maximum"] == 2**64 - 1 and defs["id"]["minimum"] == 1
    assert props["top_k"]["maximum"] == TOP_K_MAX
    assert sorted(schema["required"]) == sorted(
        ["schema", "request_id", "user_id", "history", "candidates"])


def _as_schema(info: msgspec.inspect.Type) -> dict:
    """A msgspec type, written the way schemas/ranking-request.v1.json writes its rules."""
    if isinstance(info, msgspec.inspect.StructType):
        return {"type": "object", "additionalProperties": not info.forbid_unknown_fields,
                "required": [f.name for f in info.fields if f.required],
                "properties": {f.name: _as_schema(f.type) for f in info.fields}}
    if isinstance(info, msgspec.inspect.UnionType):  # optional: "or nil"
        (value,) = [t for t in info.types if not isinstance(t, msgspec.inspect.NoneType)]
        node = _as_schema(value)
        return {**node, "type": [node["type"], "null"]}
    if isinstance(info, msgspec.inspect.IntType):
        # msgspec cannot state a bound above int64; a msgpack int stops at 2**64-1 anyway.
        return {"type": "integer", "minimum": info.ge,
                "maximum": wire.U64_MAX if info.le is None else info.le}
    if isinstance(info, msgspec.inspect.StrType):
        return {"type": "string", "minLength": info.min_length, "maxLength": info.max_length}
    if isinstance(info, msgspec.inspect.LiteralType):
        values = sorted(info.values)  # msgspec reports a Literal's values sorted
        return {"const": values[0]} if len(values) == 1 else {"enum": values}
    if isinstance(info, (msgspec.inspect.ListType, msgspec.inspect.VarTupleType)):
        node = {"type": "array", "items": _as_schema(info.item_type)}
        if info.min_length:
            node["minItems"] = info.min_length
        if info.max_length is not None:
            node["maxItems"] = info.max_length
        return node
    raise AssertionError(f"no schema form for {info!r}")


def _schema_rules(node: dict, defs: dict) -> dict:
    """The schema file's rules at `node`: $refs resolved, prose dropped, enums sorted."""
    if "$ref" in node:
        node = defs[node["$ref"].removeprefix("#/$defs/")]
    rules = {key: value for key, value in node.items()
             if key not in ("description", "$schema", "$id", "title", "$defs")}
    if "properties" in rules:
        rules["properties"] = {key: _schema_rules(value, defs)
                               for key, value in rules["properties"].items()}
        # In field order, as the Struct lists them (the check below is on the set of names).
        rules["required"] = [key for key in rules["properties"] if key in rules["required"]]
    if "items" in rules:
        rules["items"] = _schema_rules(rules["items"], defs)
    if "enum" in rules:
        rules["enum"] = sorted(rules["enum"])
    return rules


@pytest.mark.parametrize("name, schema_id", [("ranking-request.v1", wire.REQUEST_SCHEMA),
                                             ("ranking-request.v2", wire.REQUEST_SCHEMA_V2)])
def test_typed_decoder_types_match_the_request_schema_both_ways(name, schema_id):
    # Every schema property is a Struct field with the same required-ness, type and bounds,
    # and every Struct field is a schema property, at every level: one contract, two spellings.
    schema = load(name)
    written = _schema_rules(schema, schema["$defs"])
    typed = _as_schema(msgspec.inspect.type_info(wire.request_type(LIMITS, schema_id)))
    # The one rule a type cannot state; check_typed checks it after decoding.
    typed["properties"]["history"]["items"]["properties"]["actions"]["uniqueItems"] = True
    typed["required"].sort(), written["required"].sort()  # v2's Struct lists keywords last
    assert typed == written
    assert ("history" in written["required"]) == (schema_id == wire.REQUEST_SCHEMA)
    assert written["properties"]["history"]["items"]["required"] == [
        "post_id", "author_id", "actions", "surface"]  # The comparison reached the items.


def test_typed_decoder_bounds_follow_the_limits():
    limits = ValidationLimits(max_history=4, history_keep=2, max_candidates=3, num_surfaces=5,
                              max_request_id_len=9)
    props = _as_schema(msgspec.inspect.type_info(wire.request_type(limits)))["properties"]
    assert props["history"]["maxItems"] == 4 and props["candidates"]["maxItems"] == 3
    assert props["request_id"]["maxLength"] == 9
    assert props["candidates"]["items"]["properties"]["surface"]["maximum"] == 4
    # Never looser than the untyped decoder's list cap (the larger of the two list caps).
    assert props["history"]["items"]["properties"]["actions"]["maxItems"] == 4
    assert wire.decoder(limits) is wire.decoder(ValidationLimits(**dataclasses.asdict(limits)))


def test_result_and_dead_letter_schemas_match_the_constants():
    result = load("ranking-result.v1")
    probabilities = result["properties"]["ranked"]["items"]["properties"]["probabilities"]
    assert probabilities["required"] == list(ACTION_NAMES)
    assert result["properties"]["schema"]["const"] == wire.RESULT_SCHEMA
    dead = load("dead-letter.v2")
    assert dead["properties"]["error"]["properties"]["code"]["enum"] == list(DEAD_LETTER_CODES)
    assert dead["properties"]["schema"]["const"] == wire.DEAD_LETTER_SCHEMA


def test_dead_letter_v2_is_v1_plus_the_size_fields_and_publish_failed():
    v1, v2 = load("dead-letter.v1"), load("dead-letter.v2")
    assert set(v2["properties"]) - set(v1["properties"]) == {"original_size",
                                                             "original_truncated"}
    codes = v2["properties"]["error"]["properties"]["code"]["enum"]
    assert codes == v1["properties"]["error"]["properties"]["code"]["enum"] + ["publish_failed"]


# -------------------------------------------------------------------------- generated events

def random_id(rng: random.Random) -> int:
    return rng.choice([rng.randint(1, 1000), rng.randint(2**63, 2**64 - 1),
                       rng.randint(1, 2**64 - 1)])


def generate_request(rng: random.Random, max_history: int = 40, max_candidates: int = 20) -> dict:
    """A valid ranking-request.v1 event, with every optional field present or not."""
    n_candidates = rng.randint(1, max_candidates)
    post_ids: set[int] = set()
    while len(post_ids) < n_candidates:
        post_ids.add(random_id(rng))
    request = {
        "schema": "ranking-request.v1",
        "request_id": "".join(rng.choice("abcdef0123456789-é✓")  # 1..128 code points
                              for _ in range(rng.randint(1, 128))),
        "user_id": random_id(rng),
        "history": [{"post_id": random_id(rng), "author_id": random_id(rng),
                     "actions": rng.sample(ACTION_NAMES, rng.randint(0, len(ACTION_NAMES))),
                     "surface": rng.randrange(16)}
                    for _ in range(rng.randint(0, max_history))],
        "candidates": [{"post_id": p, "author_id": random_id(rng), "surface": rng.randrange(16)}
                       for p in post_ids],
    }
    for key, value in (("top_k", rng.randint(1, TOP_K_MAX)),
                       ("timestamp_ms", rng.randint(0, 2**63 - 1)),
                       ("deadline_ms", rng.randint(0, 2**63 - 1))):
        choice = rng.random()
        if choice < 0.4:
            request[key] = value
        elif choice < 0.6:
            request[key] = None
    return request


def generate_result(rng: random.Random) -> dict:
    ranked = [{"post_id": random_id(rng), "author_id": random_id(rng),
               "score": rng.uniform(-5, 5),
               "probabilities": {name: rng.random() for name in ACTION_NAMES}}
              for _ in range(rng.randint(1, 12))]
    ranked.sort(key=lambda item: -item["score"])
    return {
        "schema": "ranking-result.v1", "request_id": f"r-{rng.randrange(10**9)}",
        "user_id": random_id(rng), "model_version": "v1", "worker_id": "w-1", "ranked": ranked,
        "timings": {"queue_wait_ms": rng.uniform(0, 50), "model_ms": rng.uniform(0, 50)},
        "request_timestamp_ms": rng.choice([None, rng.randint(0, 2**62)]),
        "produced_at_ms": rng.randint(0, 2**62),
    }


def test_generated_requests_are_valid_for_both():
    rng = random.Random(2024)
    for _ in range(200):
        request = generate_request(rng)
        VALIDATORS["ranking-request.v1"].validate(request)
        validate_request(request, LIMITS)
        # And after the wire: msgpack round trip, then schema and validator again.
        decoded = codec.decode_request_bytes(codec.encode_request(request), LIMITS)
        VALIDATORS["ranking-request.v1"].validate(decoded)
        parse_request(codec.encode_request(request), LIMITS)


def test_worker_built_results_are_valid():
    rng = random.Random(7)
    for _ in range(100):
        result = generate_result(rng)
        VALIDATORS["ranking-result.v1"].validate(codec.decode_message(codec.encode_result(result)))


def test_worker_built_dead_letters_are_valid():
    rng = random.Random(8)
    for _ in range(100):
        original = rng.randbytes(rng.randint(0, 300))
        try:
            parse_request(original, LIMITS)
            continue
        except ValidationError as error:
            data = codec.dead_letter_from_error(error, original, topic="ranking-requests",
                                                partition=rng.randrange(8),
                                                offset=rng.randrange(10**6))
        VALIDATORS["dead-letter.v2"].validate(json_form_of_dead_letter(codec.decode_message(data)))


# ------------------------------------------------------------ agreement on mutated requests

NASTY_VALUES = [0, 1, -1, 15, 16, 2**31, 2**63, 2**64 - 1, 2**64, 3.0, 0.5, math.nan, math.inf,
                -math.inf, True, False, None, "", "x", "favorite", "ranking-request.v1",
                "ranking-request.v2", b"x", [], [1], ["favorite", "favorite"], ["reply", "dwel"],
                ["reply"], {}, {"post_id": 1}, "x" * 129]
NEW_KEYS = ["topk", "surfce", "post_id", "extra", "actions", "top_k", "deadline_ms", "surface"]


def containers(obj, path=()):
    """Every (path, container) in a request, the request included."""
    yield path, obj
    items = obj.items() if isinstance(obj, dict) else enumerate(obj)
    for key, value in items:
        if isinstance(value, (dict, list)):
            yield from containers(value, path + (key,))


def mutate(rng: random.Random, request: dict) -> None:
    path, target = rng.choice(list(containers(request)))
    keys = list(target.keys()) if isinstance(target, dict) else list(range(len(target)))
    op = rng.random()
    if isinstance(target, dict) and (op < 0.15 or not keys):
        target[rng.choice(NEW_KEYS)] = copy.deepcopy(rng.choice(NASTY_VALUES))
    elif keys and op < 0.3:
        del target[rng.choice(keys)]
    elif keys:
        target[rng.choice(keys)] = copy.deepcopy(rng.choice(NASTY_VALUES))


def test_fast_validator_and_schema_agree_on_mutated_requests():
    rng = random.Random(31337)
    seen = {"both_ok": 0, "both_fail": 0, "duplicate_post_ids": 0}
    for _ in range(1500):
        request = generate_request(rng, max_history=5, max_candidates=5)
        for _ in range(rng.choice([1, 1, 2])):
            mutate(rng, request)
        paths = schema_error_paths("ranking-request.v1", request)
        try:
            validate_request(request, LIMITS)
        except ValidationError as error:
            if not paths:
                # The one rule JSON Schema cannot state: distinct candidate post ids.
                assert "repeats the post id" in str(error), (error, request)
                seen["duplicate_post_ids"] += 1
                continue
            # The schema also rejects it, and at the same place (rules like "required" and
            # "additionalProperties" are reported at the map that holds the key).
            assert error.field in paths or parent(error.field) in paths, (error, paths)
            seen["both_fail"] += 1
        else:
            assert not paths, (request, paths)  # Valid for us => valid for the schema.
            seen["both_ok"] += 1
    # The mutations must exercise both outcomes, or the test proves nothing.
    assert seen["both_ok"] > 50 and seen["both_fail"] > 500, seen


def test_documented_differences_from_plain_json_schema():
    request = generate_request(random.Random(1), max_candidates=3)
    request["candidates"] = [request["candidates"][0], dict(request["candidates"][0])]
    request["candidates"][1]["author_id"] = 5
    plain = jsonschema.Draft202012Validator(load("ranking-request.v1"))
    assert plain.is_valid(request)  # Distinct post ids cannot be stated in JSON Schema ...
    with pytest.raises(ValidationError, match="repeats the post id"):
        validate_request(request, LIMITS)  # ... so the worker adds the rule.
    request = generate_request(random.Random(2))
    request["user_id"] = 3.0
    assert plain.is_valid(request)  # Plain JSON Schema counts 3.0 as an integer ...
    assert not VALIDATORS["ranking-request.v1"].is_valid(request)  # ... the msgpack form not.
    with pytest.raises(ValidationError, match="floats .* are never accepted"):
        validate_request(request, LIMITS)


# ---------------------------------------------------------------------- the README examples

def readme_example(name: str) -> dict:
    text = (SCHEMAS / "README.md").read_text()
    block = text.split(f"<!-- example: {name} -->\n```json\n", 1)[1].split("```", 1)[0]
    return json.loads(block)


def test_readme_request_example():
    example = readme_example("ranking-request.v1")
    VALIDATORS["ranking-request.v1"].validate(example)
    request = parse_request(codec.encode_request(example), LIMITS)
    assert request.candidate_post_ids.tolist() == [2001, 2002, 2003]
    assert request.user_id > 2**63  # The example shows a uint64-only id on purpose.


def test_readme_result_example():
    example = readme_example("ranking-result.v1")
    VALIDATORS["ranking-result.v1"].validate(example)
    assert codec.decode_message(codec.encode_result(example)) == example
    scores = [item["score"] for item in example["ranked"]]
    assert scores == sorted(scores, reverse=True)


def test_readme_dead_letter_example_is_what_the_worker_would_write():
    example = readme_example("dead-letter.v2")
    VALIDATORS["dead-letter.v2"].validate(example)
    original = base64.b64decode(example["original"], validate=True)
    assert example["original_size"] == len(original) and not example["original_truncated"]
    with pytest.raises(ValidationError) as info:
        parse_request(original, LIMITS)
    assert example["error"] == {"code": info.value.code, "message": str(info.value),
                                "field": info.value.field}
    assert example["request_id"] == info.value.request_id


# ------------------------------------------------------------ what the real pipeline publishes


def test_real_pipeline_outputs_validate_for_every_outcome_kind(tiny_runner, monkeypatch):
    """Results and a dead letter of every code, as the pipeline builds them, against the
    published schemas (not dicts built by the test)."""
    runner = tiny_runner
    pipeline = RankingPipeline.create(runner, Buckets(batch_sizes=(1, 8), widths=(4, 8, 16)),
                                      "w-schema", max_history=64, max_candidates=16)
    events = list(generate_events(seed=5, count=4 * len(BAD_EVENT_KINDS), bad_fraction=0.5,
                                  source="random"))
    now = int(time.time() * 1000)
    records = [InputRecord(e.encode(now), e.key, "ranking-requests", 0, i, now)
               for i, e in enumerate(events)]
    records.append(InputRecord(b"\x85" + bytes(2 << 20), None, "ranking-requests", 0, 10**6))
    outcomes = pipeline.process(pipeline.decode(records)).outcomes

    def always_fails(batch):
        raise FloatingPointError("injected")

    monkeypatch.setattr(runner, "rank_cached", always_fails)
    valid = next(r for r, o in zip(records, outcomes) if o.is_result)
    outcomes += pipeline.process(pipeline.decode([valid])).outcomes  # model_error
    outcomes.append(publish_failed(outcomes[-1], RuntimeError("refused")))

    codes = {o.dead_letter_code for o in outcomes}
    assert codes == {None, *DEAD_LETTER_CODES}  # every kind is really in the sample
    for outcome in outcomes:
        message = codec.decode_message(outcome.value)
        if outcome.is_result:
            VALIDATORS[message["schema"]].validate(message)
        else:
            VALIDATORS["dead-letter.v2"].validate(json_form_of_dead_letter(message))


# ------------------------------------------- ranking-request.v2, ranking-result.v2, engagements

def _without(node: dict, *keys: str) -> dict:
    return {k: v for k, v in node.items() if k not in keys}


def test_request_v2_is_v1_with_history_optional():
    v1, v2 = load("ranking-request.v1"), load("ranking-request.v2")
    assert v2["required"] == [key for key in v1["required"] if key != "history"]
    assert v2["properties"]["schema"]["const"] == wire.REQUEST_SCHEMA_V2
    same = ("$id", "title", "description", "required")
    assert _without(v2, *same, "properties") == _without(v1, *same, "properties")
    for name, rule in v1["properties"].items():  # every rule kept; only prose and the id differ
        if name != "schema":
            assert _without(v2["properties"][name], "description") == _without(
                rule, "description"), name


def test_result_v2_is_v1_plus_the_history_fields():
    v1, v2 = load("ranking-result.v1"), load("ranking-result.v2")
    assert set(v2["properties"]) - set(v1["properties"]) == {"history_source", "history_items"}
    assert v2["required"] == v1["required"] + ["history_source", "history_items"]
    assert v2["properties"]["history_source"]["enum"] == ["request", "table"]
    assert v2["properties"]["schema"]["const"] == wire.RESULT_SCHEMA_V2


def test_engagement_schema_matches_the_constants():
    schema = load("engagement.v1")
    assert schema["properties"]["schema"]["const"] == wire.ENGAGEMENT_SCHEMA
    assert schema["$defs"]["action"]["enum"] == list(ACTION_NAMES)
    assert schema["$defs"]["surface"]["maximum"] == LIMITS.num_surfaces - 1
    assert schema["$defs"] == {key: load("ranking-request.v1")["$defs"][key]
                               for key in ("id", "surface", "action")}


def generate_engagement(rng: random.Random) -> dict:
    return {"schema": "engagement.v1", "user_id": random_id(rng), "post_id": random_id(rng),
            "author_id": random_id(rng),
            "actions": rng.sample(ACTION_NAMES, rng.randint(0, len(ACTION_NAMES))),
            "surface": rng.randrange(16), "timestamp_ms": rng.randint(0, 2**63 - 1)}


def generate_request_v2(rng: random.Random) -> dict:
    request = generate_request(rng, max_history=5, max_candidates=5)
    request["schema"] = "ranking-request.v2"
    if rng.random() < 0.5:
        del request["history"]
    return request


def test_generated_engagements_and_v2_requests_are_valid_for_both():
    rng = random.Random(16)
    for _ in range(200):
        engagement = generate_engagement(rng)
        VALIDATORS["engagement.v1"].validate(engagement)
        parsed = parse_engagement(codec.encode_request(engagement), LIMITS)
        assert bin(parsed.actions).count("1") == len(engagement["actions"])
        request = generate_request_v2(rng)
        VALIDATORS["ranking-request.v2"].validate(request)
        parsed = parse_request(codec.encode_request(request), LIMITS, wire.REQUEST_SCHEMAS)
        assert parsed.version == 2
        assert parsed.history_source == ("request" if "history" in request else "table")


def _agree(name: str, message: dict, validate) -> str:
    """'both_ok' or 'both_fail' when the validator and the schema `name` agree on `message`
    (at the same place when both refuse it); fails the test otherwise."""
    paths = schema_error_paths(name, message)
    try:
        validate(message)
    except ValidationError as error:
        if not paths:
            assert "repeats the post id" in str(error), (error, message)
            return "duplicate_post_ids"
        assert error.field in paths or parent(error.field) in paths, (error, paths)
        return "both_fail"
    assert not paths, (message, paths)
    return "both_ok"


@pytest.mark.parametrize("name", ["engagement.v1", "ranking-request.v2"])
def test_validator_and_schema_agree_on_mutated_messages(name):
    rng = random.Random(1616)
    seen = {"both_ok": 0, "both_fail": 0, "duplicate_post_ids": 0}
    if name == "engagement.v1":
        generate, validate = generate_engagement, lambda m: validate_engagement(m, LIMITS)
    else:
        generate = generate_request_v2
        validate = lambda m: validate_request(m, LIMITS, wire.REQUEST_SCHEMAS)  # noqa: E731
    for _ in range(1500):
        message = generate(rng)
        for _ in range(rng.choice([1, 1, 2])):
            mutate(rng, message)
        if message.get("schema") == "ranking-request.v1":
            continue  # v1 is the other schema file's (the test above)
        seen[_agree(name, message, validate)] += 1
    assert seen["both_ok"] > 50 and seen["both_fail"] > 500, seen


def test_readme_v2_and_engagement_examples():
    engagement = readme_example("engagement.v1")
    VALIDATORS["engagement.v1"].validate(engagement)
    assert parse_engagement(codec.encode_request(engagement), LIMITS).user_id > 2**63
    request = readme_example("ranking-request.v2")
    VALIDATORS["ranking-request.v2"].validate(request)
    assert "history" not in request
    assert parse_request(codec.encode_request(request), LIMITS,
                         wire.REQUEST_SCHEMAS).history_source == "table"
    result = readme_example("ranking-result.v2")
    VALIDATORS["ranking-result.v2"].validate(result)
    assert codec.decode_message(codec.encode_result(result)) == result
