"""Estimates against real runs: seeded first, then calibrated by completed tiny-random jobs."""

from __future__ import annotations

import httpx

from tests.conftest import ServiceProcess, create_skill, wait_for_status

SKILL_ID = "estimate-skill"
CONFIG = {"preset": "quick", "base_model": "tiny-random", "max_steps": 4, "max_seq_length": 128}
CALIBRATION_JOBS = 3
# A calibrated tiny-random run is mostly startup (process start, imports, model build:
# ~10 s) around ~1 s of optimizer steps, so its error is that startup's run-to-run noise
# on a busy 2-core machine; measured -12 %..+9 % (docs/estimates.md). 35 % leaves room
# for a slow neighbour without letting a broken calibration (seed vs measured) through.
CALIBRATED_TOLERANCE_PCT = 35.0


async def _train(http: httpx.AsyncClient) -> dict:
    started = await http.post(f"/api/train-skill/{SKILL_ID}", json={"config": CONFIG})
    assert started.status_code == 202, started.text
    accepted = started.json()
    done = await wait_for_status(http, accepted["job_id"], {"completed", "failed"}, timeout=300)
    assert done["status"] == "completed", done
    return {"accepted": accepted, "done": done}


async def test_estimate_calibrates_on_completed_jobs(client: httpx.AsyncClient, worker: ServiceProcess) -> None:
    await create_skill(client, SKILL_ID)
    seeded = (await client.post(f"/api/skills/{SKILL_ID}/estimate", json={"config": CONFIG})).json()
    assert seeded["throughput_source"] == "seeded", seeded
    assert seeded["device"] == "cpu" and seeded["backend"] == "local" and seeded["examples"] == 12
    assert seeded["token_count"] == "tokenizer" and seeded["tokens"] > 0
    assert seeded["confidence"] == "medium"

    errors = []
    for _ in range(CALIBRATION_JOBS):
        run = await _train(client)
        # train-skill returns the same estimate it stores on the job
        assert run["accepted"]["estimate"]["minutes"] == run["accepted"]["estimated_time_minutes"]
        assert run["done"]["estimated_time_minutes"] == run["accepted"]["estimated_time_minutes"]
        done = run["done"]
        assert done["device"] == "cpu"
        assert done["tokens_trained"] > 0 and done["tokens_per_second"] > 0 and done["startup_seconds"] > 0
        assert done["estimate_error_pct"] is not None
        errors.append(done["estimate_error_pct"])
    print(f"\nseeded estimate errors (%): {errors}")

    calibrated = (await client.post(f"/api/skills/{SKILL_ID}/estimate", json={"config": CONFIG})).json()
    assert calibrated["throughput_source"] == f"measured ({CALIBRATION_JOBS} jobs)", calibrated
    assert calibrated["confidence"] == "high"
    assert calibrated["tokens"] == seeded["tokens"]

    run = await _train(client)
    assert run["accepted"]["estimate"]["throughput_source"] == f"measured ({CALIBRATION_JOBS} jobs)"
    assert run["accepted"]["estimate"]["minutes"] == calibrated["minutes"]
    error = run["done"]["estimate_error_pct"]
    print(
        f"calibrated estimate: {calibrated['minutes'] * 60:.1f} s "
        f"({calibrated['throughput_tokens_per_second']} tok/s, startup {calibrated['startup_seconds']} s); "
        f"error {error} %"
    )
    assert abs(error) < CALIBRATED_TOLERANCE_PCT, error
    # the measured token count agrees with the estimate's
    assert abs(run["done"]["tokens_trained"] - calibrated["tokens"]) / calibrated["tokens"] < 0.25, run["done"]


async def test_estimate_validation(client: httpx.AsyncClient) -> None:
    missing = await client.post("/api/skills/nope/estimate", json={})
    assert missing.status_code == 404
    await create_skill(client, SKILL_ID)
    url = f"/api/skills/{SKILL_ID}/estimate"

    bad_preset = await client.post(url, json={"preset": "turbo"})
    assert bad_preset.status_code == 422 and "quick" in bad_preset.json()["error"]["message"]
    bad_backend = await client.post(url, json={"backend": "cloud"})
    assert bad_backend.status_code == 422 and "modal" in bad_backend.json()["error"]["message"]
    bad_model = await client.post(url, json={"config": {"base_model": "gpt-5"}})
    assert bad_model.status_code == 422
    assert "tiny-random" in bad_model.json()["error"]["details"]["allowed"]
    bad_gpu = await client.post(url, json={"backend": "modal", "gpu_type": "tpu"})
    assert bad_gpu.status_code == 422 and "A10G" in bad_gpu.json()["error"]["details"]["allowed"]
    local_gpu = await client.post(url, json={"gpu_type": "a10g"})
    assert local_gpu.status_code == 422

    llama = {"preset": "standard", "base_model": "unsloth/Meta-Llama-3.1-8B-Instruct-bnb-4bit"}
    a10g = (await client.post(url, json={"config": llama, "backend": "modal", "gpu_type": "a10g"})).json()
    assert a10g["device"] == "a10g" and a10g["gpu_type"] == "A10G" and a10g["price_per_hour"] == 1.10
    assert a10g["throughput_source"] == "seeded" and a10g["confidence"] == "medium"
    assert abs(a10g["cost_usd"] - a10g["minutes"] / 60 * 1.10) < 0.001
    t4 = (await client.post(url, json={"config": llama, "backend": "modal", "gpu_type": "T4"})).json()
    assert t4["price_per_hour"] == 0.40 and t4["minutes"] > a10g["minutes"]
    unseeded = (await client.post(url, json={"config": {"base_model": "tiny-random"}, "backend": "modal"})).json()
    assert unseeded["confidence"] == "low" and unseeded["throughput_source"] == "default"
