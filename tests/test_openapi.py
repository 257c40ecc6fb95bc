"""Issue 11 §8: the OpenAPI document describes every answer, and Schemathesis, run against the live API, finds
nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.service_harness import PORTRAITS, start_api
from tests.test_api import post_edit

KEYS = "alpha:alpha-key,beta:beta-key"
CONFIG = Path(__file__).with_name("schemathesis.toml")


@pytest.fixture
def spec(api_server: str) -> dict:
    return httpx.get(f"{api_server}/openapi.json").json()


def references(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in references(value)]
    if isinstance(node, list):
        return [ref for item in node for ref in references(item)]
    return []


def test_every_reference_resolves(spec: dict) -> None:
    schemas = spec["components"]["schemas"]
    refs = references(spec)
    assert refs
    for ref in refs:
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in schemas, ref
    body = spec["paths"]["/edit"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["properties"]["refine"]["enum"] == ["diffuse", "warp", "none"]
    assert body["properties"]["output"]["enum"] == ["jpeg", "png", "webp"]
    assert body["properties"]["return"]["enum"] == ["photo", "aligned"]


def test_every_answer_is_declared(spec: dict) -> None:
    declared = {
        (path, method): set(operation["responses"])
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
    }
    assert {"202", "400", "401", "413", "415", "422", "429", "503"} <= declared[("/edit", "post")]
    for path, method in [("/jobs/{job_id}", "get"), ("/jobs/{job_id}/result", "get"), ("/jobs/{job_id}", "delete")]:
        assert {"401", "404", "429", "503"} <= declared[(path, method)], (path, method)
    assert "409" in declared[("/jobs/{job_id}/result", "get")] and "409" in declared[("/jobs/{job_id}", "delete")]
    assert {"200", "503"} <= declared[("/readyz", "get")]
    error_schema = spec["paths"]["/jobs/{job_id}"]["get"]["responses"]["404"]["content"]["application/json"]
    assert error_schema["schema"]["$ref"].endswith("/ErrorEnvelope")
    assert spec["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": spec["components"]["securitySchemes"]["bearer"]["description"]
    }
    assert spec["paths"]["/jobs/{job_id}"]["get"]["security"] == [{"bearer": []}]


def test_options_names_every_method_of_a_path(api_server: str) -> None:
    response = httpx.options(f"{api_server}/jobs/{'0' * 32}")
    allowed = {method.strip() for method in response.headers["allow"].split(",")}
    assert {"GET", "DELETE", "OPTIONS"} <= allowed
    refused = httpx.put(f"{api_server}/jobs/{'0' * 32}")
    assert refused.status_code == 405 and "DELETE" in refused.headers["allow"]


@pytest.mark.slow
def test_schemathesis_finds_nothing(isolated_env: dict[str, str], tmp_path: Path) -> None:
    api, base_url = start_api({**isolated_env, "CHINFIX_API_KEYS": KEYS}, tmp_path)
    try:
        accepted = post_edit(base_url, PORTRAITS[0].read_bytes(), headers={"Authorization": "Bearer alpha-key"})
        run = subprocess.run(
            [
                sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "run", f"{base_url}/openapi.json",
                "--header", "Authorization: Bearer alpha-key",
                "--checks", "all",
                "--max-examples", "15",
                "--seed", "11",
                "--generation-database", "none",
                "--workers", "1",
                "--no-color",
            ],
            cwd=tmp_path, capture_output=True, text=True, timeout=240,
            env={**isolated_env, "CHINFIX_SCHEMATHESIS_JOB_ID": accepted.json()["id"]},
        )  # fmt: skip
    finally:
        api.stop()
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
