"""Settings from flags and RANKER_* variables: every mistake is one line naming what to fix."""

import dataclasses

import pytest

from worker.settings import Settings, SettingsError, flag_name


@pytest.mark.parametrize("argv, closest", [
    (["--max-batchsize", "32"], "--max-batch-size"),
    (["--max-batch", "32"], "--max-batch-size"),  # a prefix is a typo, not that flag
    (["--metrics-prot=9200"], "--metrics-port"),
], ids=["misspelt", "prefix", "with_equals"])
def test_unknown_flags_are_an_error_naming_the_closest_setting(argv, closest):
    with pytest.raises(SettingsError, match=f"did you mean {closest}\\?") as caught:
        Settings.load(argv, environ={})
    assert argv[0].split("=")[0] in str(caught.value) and "\n" not in str(caught.value)


def test_a_stray_value_is_an_error():
    with pytest.raises(SettingsError, match="unexpected argument '32'"):
        Settings.load(["32"], environ={})


def test_misspelt_variables_are_an_error_naming_the_closest():
    with pytest.raises(SettingsError, match="RANKER_MAX_BATCHSIZE is not a setting; did you mean "
                                            "RANKER_MAX_BATCH_SIZE"):
        Settings.load([], environ={"RANKER_MAX_BATCHSIZE": "32"})


@pytest.mark.parametrize("argv, environ, message", [
    (["--max-batch-size", "many"], {}, "--max-batch-size: expected an integer, got 'many'"),
    ([], {"RANKER_MAX_BATCH_SIZE": "many"}, "RANKER_MAX_BATCH_SIZE: expected an integer"),
    ([], {"RANKER_BATCH_BUCKETS": "1;8"}, "RANKER_BATCH_BUCKETS: expected comma-separated"),
    ([], {"RANKER_LOG_LEVEL": "verbose"},
     "RANKER_LOG_LEVEL / --log-level: log_level must be one of DEBUG, INFO"),
    (["--max-batch-size", "0"], {}, "RANKER_MAX_BATCH_SIZE / --max-batch-size: max_batch_size "
                                    "must be >= 1, got 0"),
    (["--max-batch-wait-ms", "0"], {}, "max_batch_wait_ms must be > 0 (0 would hold every "
                                       "batch until max_batch_size records arrive"),
    (["--metrics-port", "70000"], {}, "RANKER_METRICS_PORT / --metrics-port"),
    (["--max-batch-size"], {}, "argument --max-batch-size: expected one argument"),
], ids=["flag_type", "variable_type", "tuple", "log_level", "rule", "zero_wait", "port",
        "no_value"])
def test_bad_values_name_the_flag_or_variable(argv, environ, message):
    with pytest.raises(SettingsError, match=message.replace("(", r"\(")):
        Settings.load(argv, environ=environ)


def test_log_level_is_case_insensitive():
    assert Settings.load(["--log-level", "debug"], environ={}).log_level == "debug"


def test_flags_win_over_variables_and_variables_over_defaults():
    settings = Settings.load(["--max-batch-size", "8"], environ={
        "RANKER_MAX_BATCH_SIZE": "16", "RANKER_PARTITIONS": "2"})
    assert (settings.max_batch_size, settings.partitions, settings.group_id) == (
        8, 2, "phoenix-ranker")


def test_help_lists_every_setting_with_flag_variable_default_and_meaning(capsys):
    with pytest.raises(SystemExit) as exit_:
        Settings.load(["--help"], environ={})
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # help wraps lines; compare words
    for field in dataclasses.fields(Settings):
        assert flag_name(field.name) in text
        assert f"[{Settings.env_name(field.name)}, default {Settings.default_text(field)!r}]" \
            in text, field.name
        assert " ".join(field.metadata["help"].split()) in text, field.name


def test_variable_reads_only_settings():
    assert Settings.variable("metrics_port", {"RANKER_METRICS_PORT": "9200"}) == "9200"
    assert Settings.variable("metrics_port", {}) is None
    with pytest.raises(KeyError):
        Settings.variable("metrics_prot", {})


SECRET = "s3cret-Pa55"


@pytest.mark.parametrize("name", ["sasl_password", "ssl_key_password"])
def test_a_secret_comes_from_the_file_its_variable_or_flag_names(tmp_path, name):
    path = tmp_path / "secret"
    path.write_text(SECRET + "\n")  # a mounted secret usually ends with a newline
    by_variable = Settings.load([], environ={Settings.env_name(name) + "_FILE": str(path)})
    by_flag = Settings.load([flag_name(name) + "-file", str(path)], environ={})
    assert getattr(by_variable, name) == getattr(by_flag, name) == SECRET
    assert SECRET not in by_variable.describe()


def test_a_secret_given_twice_or_unreadable_is_an_error_without_its_value(tmp_path):
    path = tmp_path / "password"
    path.write_text(SECRET)
    with pytest.raises(SettingsError) as twice:
        Settings.load([], environ={"RANKER_SASL_PASSWORD": SECRET,
                                   "RANKER_SASL_PASSWORD_FILE": str(path)})
    assert str(twice.value) == ("RANKER_SASL_PASSWORD and RANKER_SASL_PASSWORD_FILE both give "
                                "the sasl_password: set one")
    missing = tmp_path / "absent"
    with pytest.raises(SettingsError) as unreadable:
        Settings.load(["--sasl-password-file", str(missing)], environ={})
    assert str(unreadable.value) == (f"--sasl-password-file: cannot read the sasl_password from "
                                     f"{str(missing)!r}: No such file or directory")
    assert SECRET not in str(twice.value) + str(unreadable.value)


def test_help_lists_the_secret_files_and_no_secret(capsys):
    with pytest.raises(SystemExit):
        Settings.parser().parse_args(["--help"])
    shown = capsys.readouterr().out
    assert "--sasl-password-file PATH" in shown and "RANKER_SASL_PASSWORD_FILE" in shown
    assert "--ssl-key-password-file PATH" in shown


@pytest.mark.parametrize("guarantee, interval", [("at_least_once", 0.5), ("exactly_once", 0.1)],
                         ids=["at-least-once", "exactly-once"])
def test_the_faust_client_options_come_from_the_settings_and_one_declaration(guarantee,
                                                                             interval):
    from worker import kafka_clients

    settings = Settings(processing_guarantee=guarantee, compression_type="lz4", partitions=3)
    options = kafka_clients.faust_client_options(settings, replication_factor=2)
    assert options["broker_commit_interval"] == interval
    assert options["processing_guarantee"] == guarantee
    assert options["producer_compression_type"] == "lz4"
    assert options["producer_max_batch_size"] == kafka_clients.PRODUCER_BATCH_BYTES
    assert (options["topic_partitions"], options["topic_replication_factor"]) == (3, 2)


def test_the_embedded_brokers_fetch_wait_is_declared_once():
    from tools.broker import EmbeddedBroker
    from tools.kafka_io import FETCH_WAIT_MS
    from worker.settings import EMBEDDED_BROKER_FETCH_WAIT_MS
    from worker.upstream.fetch_wait import ConsumerTuning

    assert {EmbeddedBroker.fetch_wait_ms, FETCH_WAIT_MS,
            ConsumerTuning().fetch_max_wait_ms} == {EMBEDDED_BROKER_FETCH_WAIT_MS}
