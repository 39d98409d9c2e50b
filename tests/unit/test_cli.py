import json
import subprocess
import sys

import jsonschema


def test_kourier_schema_prints_valid_json_schema() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "schema"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    for which in ("ingress", "response"):
        jsonschema.Draft202012Validator.check_schema(document[which])
    ingress = jsonschema.Draft202012Validator(document["ingress"])
    assert ingress.is_valid(
        {"v": 1, "kind": "invoke", "target": {"service": "Greeter", "handler": "greet"}}
    )
    assert not ingress.is_valid({"v": 1, "kind": "invoke"})


def test_kourier_without_arguments_explains_itself() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "broker" in done.stderr
