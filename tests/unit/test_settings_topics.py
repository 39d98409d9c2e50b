from datetime import timedelta

import pytest
from pydantic import ValidationError

from handlers import RetryPolicy
from streams.kafka.admin import TopicError, config_problems, replication_for, required_configs
from streams.settings import Settings, SettingsError
from streams.wire.topics import Topics


def test_settings_from_environment_and_flags() -> None:
    env = {
        "KOURIER_BOOTSTRAP_SERVERS": "k1:9092,k2:9092",
        "KOURIER_NAMESPACE": "prod",
        "KOURIER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KOURIER_KAFKA_SASL_PASSWORD": "hunter2",
    }
    settings = Settings.from_env(env, namespace="override", partitions=None)
    assert settings.bootstrap_servers == "k1:9092,k2:9092"
    assert settings.namespace == "override"
    assert settings.partitions == 8
    config = settings.client_config({"group.id": "g"})
    assert config["security.protocol"] == "SASL_SSL"
    assert config["sasl.password"] == "hunter2"
    assert config["group.id"] == "g"
    assert "hunter2" not in repr(settings.redacted())


def test_every_secret_property_is_masked_where_settings_are_logged() -> None:
    """A worker and an ingress log ``redacted()`` as they start: a private key in PEM and
    an OAuth config line with its client secret were logged in clear."""
    secrets = {
        "KOURIER_KAFKA_SSL_KEY_PEM": "-----BEGIN PRIVATE KEY-----x",
        "KOURIER_KAFKA_SASL_OAUTHBEARER_CONFIG": "clientId=a clientSecret=s3cret",
        "KOURIER_KAFKA_SASL_OAUTHBEARER_ASSERTION_PRIVATE_KEY_PASSPHRASE": "open-sesame",
        "KOURIER_KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET": "s3cret2",
    }
    settings = Settings.from_env({**secrets, "KOURIER_KAFKA_SASL_MECHANISM": "OAUTHBEARER"})
    shown = repr(settings.redacted())
    for value in secrets.values():
        assert value not in shown
    assert "OAUTHBEARER" in shown, "a property that is no secret is shown"


def test_a_token_is_read_without_blanks_around_it_and_empty_values_are_unset() -> None:
    """A Secret made from a file ends with a newline, no request's header carries it: every
    request was a 401. ``KOURIER_KAFKA_X=`` reached librdkafka as an empty value."""
    settings = Settings.from_env({"KOURIER_TOKEN": "s3cret\n", "KOURIER_KAFKA_SASL_USERNAME": ""})
    assert settings.token == "s3cret"
    assert "sasl.username" not in settings.client_config()
    assert Settings.from_env({"KOURIER_TOKEN": " \n"}).token is None


def test_allowed_hosts_are_read_comma_separated_and_lower_cased() -> None:
    env = {"KOURIER_ALLOWED_HOSTS": "Kourier.LAN, admin.internal,"}
    assert Settings.from_env(env).allowed_hosts == ("kourier.lan", "admin.internal")
    assert Settings().allowed_hosts == ()


def test_stall_after_is_read_as_a_duration() -> None:
    assert Settings().stall_after == timedelta(minutes=2)
    assert Settings.from_env({"KOURIER_STALL_AFTER": "90s"}).stall_after == timedelta(seconds=90)
    assert Settings.from_env({"KOURIER_STALL_AFTER": "5"}).stall_after == timedelta(seconds=5)
    for too_short in ("0s", "500ms"):
        with pytest.raises(SettingsError, match="KOURIER_STALL_AFTER"):
            Settings.from_env({"KOURIER_STALL_AFTER": too_short})


def test_the_workers_default_retry_policy_is_read_from_the_environment() -> None:
    """DESIGN.md §3: retries are configurable per handler and globally; there was no
    global setting (every service without a policy had the built-in one)."""
    assert Settings.from_env({}).retry_policy == RetryPolicy()
    env = {
        "KOURIER_RETRY_INITIAL": "10ms",
        "KOURIER_RETRY_FACTOR": "3",
        "KOURIER_RETRY_MAX_INTERVAL": "2m",
        "KOURIER_RETRY_MAX_ATTEMPTS": "None",
    }
    policy = Settings.from_env(env).retry_policy
    assert policy == RetryPolicy(
        initial=timedelta(milliseconds=10),
        factor=3.0,
        max_interval=timedelta(minutes=2),
        max_attempts=None,
    )
    refused = [
        ("KOURIER_RETRY_MAX_ATTEMPTS", "0"),
        ("KOURIER_RETRY_FACTOR", "0.5"),
        ("KOURIER_RETRY_INITIAL", "0s"),
        ("KOURIER_RETRY_FACTOR", "inf"),
    ]
    for name, value in refused:
        with pytest.raises(SettingsError, match=f"^{name}='{value}': "):
            Settings.from_env({name: value})


def test_values_that_cannot_be_used_are_named_in_one_line_by_where_they_came_from() -> None:
    """pydantic's report ran over many lines, named the field (``call_timeout``), not the
    variable, and for ``5x`` spoke of a "day identifier" in an ISO-8601 duration."""
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"KOURIER_CALL_TIMEOUT": "5x"}, partitions=0)
    said = str(refused.value)
    assert "\n" not in said
    assert said.split("; ") == [
        "--partitions=0: Input should be greater than or equal to 1",
        "KOURIER_CALL_TIMEOUT='5x': invalid duration '5x': use 500ms, 90s, 10m, 1h or PT90S",
    ]
    assert isinstance(refused.value, ValueError)  # the CLI's exit 2
    # What pydantic reads is still read, and a value out of bounds is named as given.
    for given, read in (("PT90S", 90), ("01:30:00", 5400), ("+PT90S", 90), ("1d,01:02:03", 90123)):
        timeout = Settings.from_env({"KOURIER_CALL_TIMEOUT": given}).call_timeout
        assert timeout.total_seconds() == read
    with pytest.raises(SettingsError, match=r"^KOURIER_STALL_AFTER='0s': Input should be greater"):
        Settings.from_env({"KOURIER_STALL_AFTER": "0s"})


@pytest.mark.parametrize("bad", ["", "has space", "a/b", "x" * 101])
def test_namespace_must_be_a_topic_prefix(bad: str) -> None:
    with pytest.raises(ValidationError, match="namespace"):
        Settings(namespace=bad)


def test_topic_names_come_from_the_namespace() -> None:
    topics = Topics("shop")
    assert topics.ingress == "shop.ingress"
    assert topics.delay == "shop.delay"
    assert topics.responses == "shop.responses"
    assert topics.deadletter == "shop.deadletter"
    specs = {s.name: s for s in topics.specs(partitions=12)}
    assert set(specs) == set(topics.all())
    compacted = {n for n, s in specs.items() if s.config.get("cleanup.policy") == "compact"}
    assert compacted == {"shop.state", "shop.invocations", "shop.dedup", "shop.services"}
    # State lives next to its partition: changelogs share the ingress partition count.
    co_partitioned = compacted - {"shop.services"} | {"shop.ingress", "shop.delay"}
    assert set(topics.co_partitioned()) == co_partitioned | {"shop.responses"}
    assert all(specs[n].partitions == 12 for n in topics.co_partitioned())
    assert [n for n, s in specs.items() if s.partitions != 12] == [
        "shop.deadletter",
        "shop.services",
    ]


def test_a_topic_that_deletes_what_kourier_needs_is_named() -> None:
    """Kafka's defaults (delete after 7 days) on a changelog or the delay topic."""
    specs = {spec.name: spec for spec in Topics("ns").specs(4)}
    week = {"cleanup.policy": "delete", "retention.ms": "604800000", "retention.bytes": "-1"}
    assert [p.split(":")[0] for p in config_problems(specs["ns.state"], week)] == [
        "ns.state has cleanup.policy=delete",
        "ns.state deletes records by retention.ms=604800000",
    ]
    assert len(config_problems(specs["ns.delay"], week)) == 1
    assert config_problems(specs["ns.ingress"], week) == [], "calls may expire"
    kept = {"cleanup.policy": "delete", "retention.ms": "-1", "retention.bytes": "-1"}
    assert config_problems(specs["ns.delay"], kept) == []
    compacted = {"cleanup.policy": "compact", "retention.ms": "604800000"}
    assert config_problems(specs["ns.state"], compacted) == [], "compaction alone keeps keys"
    both = {"cleanup.policy": "compact,delete", "retention.bytes": "1000000"}
    assert len(config_problems(specs["ns.dedup"], both)) == 1


def test_what_mending_sets_leaves_no_problem_and_odd_spellings_are_read() -> None:
    specs = Topics("ns").specs(4)
    kafka_defaults = {"cleanup.policy": "delete", "retention.ms": "604800000",
                      "retention.bytes": "1000000000"}  # fmt: skip
    for spec in specs:
        mended = kafka_defaults | required_configs(spec)
        assert config_problems(spec, mended) == [], spec.name
    by_name = {spec.name: spec for spec in specs}
    assert config_problems(by_name["ns.state"], {"cleanup.policy": " Compact "}) == []
    assert config_problems(by_name["ns.state"], {"cleanup.policy": "delete, compact"}) == []
    for name in ("ns.ingress", "ns.delay", "ns.responses", "ns.deadletter"):
        compacted = {"cleanup.policy": "compact", "retention.ms": "-1", "retention.bytes": "-1"}
        assert config_problems(by_name[name], compacted), f"{name} compacted loses a key's past"
    limited = {"cleanup.policy": "delete", "retention.ms": "-1", "retention.bytes": "10000"}
    assert config_problems(by_name["ns.delay"], limited), "a broker's log.retention.bytes"


def test_the_clusters_default_replication_counts_the_brokers_that_are_away() -> None:
    """The metadata lists only the brokers up: topics made while one of three restarted
    got two replicas for good, and with ``min.insync.replicas`` 2 stopped their writes at
    the next broker's loss. The cluster's default only raises the count (Kafka's own
    default is 1), up to 3; a factor given is taken as given."""
    unset = Settings()
    assert replication_for(unset, 3) == 3
    assert replication_for(unset, 3, cluster_default=1) == 3
    assert replication_for(unset, 1, cluster_default=1) == 1
    assert replication_for(unset, 5, cluster_default=5) == 3
    with pytest.raises(
        TopicError, match=r"default.replication.factor is 3: start the brokers"
    ) as away:
        replication_for(unset, 2, cluster_default=3)
    assert away.value.retriable, "it may pass once they are back (exit 1, not 2)"
    assert replication_for(Settings(replication_factor=2), 2, cluster_default=3) == 2
