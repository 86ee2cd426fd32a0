"""The data quality report: real tokenizer, real sentence embeddings, a generated
1,000-example set with known topics and planted duplicates."""

from __future__ import annotations

from collections import Counter, defaultdict

import httpx

from services.gpu import quality
from shared.settings import Settings
from tests.conftest import ServiceProcess, demo_conversations
from tests.data.generated import TOPICS, generated_set


def test_report_on_a_thousand_examples_finds_planted_duplicates_and_topics(migrated: Settings) -> None:
    examples, planted = generated_set(1000)
    report = quality.build_report(
        models_dir=migrated.models_dir,
        base_model="tiny-random",
        system_prompt="You answer questions.",
        conversations=examples,
        max_seq_length=512,
    )
    assert report["example_count"] == 1000
    assert sorted(map(tuple, report["duplicates"]["exact"])) == sorted(planted["exact"])
    near = {(pair["a"], pair["b"]) for pair in report["duplicates"]["near"]}
    assert set(planted["near"]) <= near | {(a, b) for a, b in planted["exact"]}
    # Eight domains, three kinds of question each: between 8 and 24 topics.
    assert 8 <= report["topics"]["count"] <= 30, report["topics"]["count"]
    tokens = report["tokens"]
    assert 30 < tokens["average"] < 120 and tokens["over_max_seq_length"] == 0
    assert sum(bucket["count"] for bucket in tokens["histogram"]) == 1000
    assert report["quality"]["stars"] >= 3
    assert any("exact duplicate" in text for text in report["recommendations"])


def test_topic_clusters_do_not_mix_domains() -> None:
    examples, _ = generated_set(400)
    texts = [f"{e['user']}\n{e['assistant']}" for e in examples[:380]]
    labels = quality.cluster_topics(quality.embed(texts))
    names = list(TOPICS)
    members: dict[int, list[str]] = defaultdict(list)
    for index, label in enumerate(labels):
        members[label].append(names[index % len(names)])
    purity = sum(Counter(group).most_common(1)[0][1] for group in members.values()) / len(labels)
    assert purity >= 0.9, purity


def test_stars_follow_the_spec_thresholds() -> None:
    assert quality.stars(5, 300, 12)[0] == 1, "under the 10-example minimum"
    assert quality.stars(12, 245, 7)[0] == 3, "the spec's example: 12 examples, 245 tokens, 7 topics → Good"
    assert quality.stars(600, 1200, 60)[0] == 5
    advice = quality.recommendations(12, 245, 7, 0, 0, 0, 512)
    assert advice == ["Add 38 more examples for optimal results"]


async def test_report_through_the_api(client: httpx.AsyncClient, worker: ServiceProcess) -> None:
    conversations = demo_conversations(12)
    conversations.append(dict(conversations[0]))
    skill = {"skill_id": "report-skill", "name": "R", "system_prompt": "Be kind.", "conversations": conversations}
    assert (await client.post("/api/skills", json=skill)).status_code == 201
    response = await client.get("/api/skills/report-skill/data-report", params={"base_model": "tiny-random"})
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["example_count"] == 13
    assert report["duplicates"]["exact"] == [[0, 12]]
    assert any(text.startswith("Add 37 more examples") for text in report["recommendations"])
    bad = await client.get("/api/skills/report-skill/data-report", params={"base_model": "gpt-9"})
    assert bad.status_code == 422 and "tiny-random" in bad.json()["error"]["message"]
    missing = await client.get("/api/skills/nope/data-report")
    assert missing.status_code == 404
