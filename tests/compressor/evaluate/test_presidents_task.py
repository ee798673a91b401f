"""The knowledge task sotu_presidents: answers agree with the presidents table, ambiguous questions are left out."""
import json
import re

import pytest

from compressor.evaluate.local_tasks import TASK_DIR, check_presidents, president_items, presidents_table


def test_year_questions_name_the_one_president_in_office():
    rows = presidents_table()
    for it in president_items(n=10**6):
        m = re.match(r"Question: Who was President of the United States in (\d{4})\?", it["context"])
        if m:
            y, answer = int(m.group(1)), it["choices"][it["label"]]
            serving = {r["president_full"] for r in rows if r["start_year"] <= y <= r["end_year"]}
            assert serving == {answer}


def test_no_question_is_asked_twice_and_known_facts_hold():
    items = president_items(n=10**6)
    contexts = [it["context"] for it in items]
    assert len(contexts) == len(set(contexts))
    facts = {it["context"]: it["choices"][it["label"]] for it in items}
    assert facts["Question: Who was the 16th President of the United States?\nAnswer:"] == "Abraham Lincoln"
    assert facts["Question: Who succeeded George Washington as President of the United States?\nAnswer:"] == "John Adams"
    assert "Question: Who succeeded Grover Cleveland as President of the United States?\nAnswer:" not in facts
    shipped = [json.loads(line) for line in (TASK_DIR / "sotu_presidents.jsonl").read_text().splitlines()]
    assert all(facts[s["context"]] == s["choices"][s["label"]] for s in shipped)


def test_a_contradiction_between_tables_is_refused():
    rows = [dict(r) for r in presidents_table()]
    lincoln = next(r for r in rows if r["president_full"] == "Abraham Lincoln")
    lincoln["end_year"] = 1862      # his 1863 and 1864 addresses now fall outside his term
    with pytest.raises(ValueError, match="outside its president's term"):
        check_presidents(rows)


def test_task_presets(monkeypatch):
    from compressor.evaluate.local_tasks import LOCAL_TASKS, preset_tasks
    assert preset_tasks("offline") == list(LOCAL_TASKS)
    assert preset_tasks("papers", check_hub=False) == ["arc_easy", "hellaswag", "winogrande", "mmlu", "gsm8k"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE is set.*offline preset"):
        preset_tasks("papers")
    with pytest.raises(ValueError, match="unknown task preset"):
        preset_tasks("mmlu-pro")
