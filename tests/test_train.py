"""End-to-end finetuning runs against a real scorer server (subprocess) on tiny models, CPU."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from star_testing.tiny_chat import TRAINING_RESPONSES, save_tiny_run
from trainer_client.data import Example, build_examples, conversation_hash, load_conversations
from trainer_client.scoring.cache import ScoreCache
from trainer_client.scoring.precompute import main as precompute_main
from trainer_client.train import run_training
from trainer_client.train.config import TrainConfig, build_config


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_run(tmp_path_factory.mktemp("train"), examples=12)


@pytest.fixture(scope="module")
def server(default_server: Any) -> Any:
    return default_server


def _cfg(workdir: Path, out: str, **kw: Any) -> TrainConfig:
    base: dict[str, Any] = dict(
        model=str(workdir / "trainee"),
        data=str(workdir / "data.jsonl"),
        output_dir=str(workdir / out),
        batch_size=2,
        lr=1e-3,
        min_lr=1e-5,
        progress=False,
        lora_r=4,
        lora_alpha=8,
    )
    base.update(kw)
    return build_config(base)


def _examples(cfg: TrainConfig) -> list[Example]:
    from transformers import AutoTokenizer

    return build_examples(
        AutoTokenizer.from_pretrained(cfg.trainee.model), load_conversations(cfg.dataset.data)
    )


def _metric(server: Any, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def _rows(out: Path) -> list[dict[str, float]]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_dss_lora_epoch2_and_reruns_make_no_guard_calls(workdir: Path, server: Any) -> None:
    cuts0 = _metric(server, "star_cuts_scored_total")
    fw0 = _metric(server, "star_guard_forwards_total")
    cfg = _cfg(workdir, "dss2", method="dss", scorer=server.address, epochs=2, prefetch_batches=2)
    res = run_training(cfg)
    assert res.finished and res.steps == 12
    cache = ScoreCache(cfg.resolved_cache_path or "")
    assert cache.count() == 12
    exs = _examples(cfg)
    expected_cuts = sum(len(e.turns[0].request.cuts.offsets) for e in exs)
    # epoch 2 came entirely from the cache: the server scored each cut exactly once
    assert _metric(server, "star_cuts_scored_total") - cuts0 == expected_cuts
    assert res.metrics["guard_requests"] == 12
    rows = _rows(Path(res.output_dir))
    assert [r["epoch"] for r in rows] == [0] * 6 + [1] * 6
    assert all(0.0 < r["mean_star"] < 1.0 and r["kl"] >= 0.0 for r in rows)
    assert (Path(res.final_dir) / "adapter_model.safetensors").is_file()
    # a rerun with the same cache: zero guard calls
    fw1 = _metric(server, "star_guard_forwards_total")
    assert fw1 > fw0
    again = run_training(
        cfg.replace(output_dir=str(workdir / "dss2-rerun"), cache_path=cfg.resolved_cache_path)
    )
    assert again.metrics["guard_requests"] == 0
    assert _metric(server, "star_guard_forwards_total") == fw1


def _final_weights(out: Path, lora: bool) -> dict[str, torch.Tensor]:
    name = "adapter_model.safetensors" if lora else "model.safetensors"
    return load_file(str(out / "final" / name))


@pytest.mark.parametrize("finetune", [pytest.param("full", marks=pytest.mark.slow), "lora"])
def test_resume_equals_uninterrupted(workdir: Path, server: Any, finetune: str) -> None:
    kw: dict[str, Any] = dict(method="dss", scorer=server.address, finetune=finetune, epochs=2, grad_accum=2)
    # One score cache for all three runs: the server's float results can differ in the last bits with
    # how it happens to batch requests, and this test is about the trainer's state, not the scorer's.
    kw.update(warmup_ratio=0.2, cache_path=str(workdir / f"resume-{finetune}.sqlite"))
    whole = run_training(_cfg(workdir, f"whole-{finetune}", **kw))
    part = run_training(_cfg(workdir, f"part-{finetune}", save_every=2, stop_after_steps=3, **kw))
    assert not part.finished and part.steps == 3
    assert not (Path(part.output_dir) / "final").exists()
    resumed = run_training(_cfg(workdir, f"part-{finetune}", save_every=2, resume=True, **kw))
    assert resumed.finished and resumed.steps == whole.steps == 6
    lora = finetune == "lora"
    a = _final_weights(Path(whole.output_dir), lora)
    b = _final_weights(Path(resumed.output_dir), lora)
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # ... and the weights trained, before and after the resume (equal untrained weights prove nothing)
    at_stop = Path(part.output_dir) / "checkpoints" / "step-00000003"
    stopped = load_file(str(next((at_stop / ("adapter" if lora else "model")).glob("*.safetensors"))))
    assert stopped.keys() == a.keys()
    if lora:
        # PEFT starts every lora_B at zero (the adapter adds nothing); every adapter tensor then trains
        lora_b = [k for k in a if ".lora_B." in k]
        assert lora_b and len(lora_b) == len(a) // 2
        assert all(bool(stopped[k].any()) and bool(a[k].any()) for k in lora_b)
        assert all(not torch.equal(stopped[k], a[k]) for k in a), "the resumed run did not train"
    else:
        start = load_file(str(workdir / "trainee" / "model.safetensors"))
        assert any(k in start and not torch.equal(stopped[k], start[k]) for k in a)
        assert any(not torch.equal(stopped[k], a[k]) for k in a), "the resumed run did not train"
    assert [r["step"] for r in _rows(Path(resumed.output_dir))] == [1, 2, 3, 4, 5, 6]


def test_prefetch_hides_a_scorer_slower_than_zero_but_faster_than_a_step(workdir: Path, server: Any) -> None:
    delay, sleep = 0.5, 0.7  # every scorer call takes 0.5 s longer; every step takes >= 0.7 s
    kw: dict[str, Any] = dict(method="dss", scorer=server.address, step_sleep_s=sleep, prefetch_batches=2)
    kw.update(batch_size=1, cache_path="", max_examples=8)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        slow = run_training(_cfg(workdir, "pf-slow", scorer_delay_s=delay, **kw))
    finally:
        torch.set_num_threads(threads)
    rows = _rows(Path(slow.output_dir))
    # no cache: every example's scores came from the (delayed) scorer
    assert len(rows) == 8 and slow.metrics["guard_requests"] == 8
    # After the first step the scorer's latency is hidden behind training: each step's scores had
    # arrived before the step asked for them. This is the prefetcher's count, not a clock, so a loaded
    # machine does not break it (each fetch has two steps, >= 1.4 s, for its 0.5 s and the scoring).
    assert [r["scores_ready"] for r in rows[1:]] == [1.0] * 7


def test_rs_full_and_precomputed_reference(workdir: Path, server: Any) -> None:
    rs_cfg = _cfg(workdir, "rs", method="rs", scorer=server.address, finetune="full", rs_normalize="kept")
    rs = run_training(rs_cfg)
    assert rs.finished
    # rs_normalize kept: the loss saw exactly the label tokens of the examples the guard judged safe
    exs = _examples(rs_cfg)
    cache = ScoreCache(rs_cfg.resolved_cache_path or "")
    fp = cache._db.execute("SELECT DISTINCT fingerprint FROM verdicts").fetchone()[0]
    verdicts = cache.get_verdicts(fp, [conversation_hash(e.turns[-1].request.conversation) for e in exs])
    kept = sum(
        sum(e.label_mask) for e, v in zip(exs, verdicts, strict=True) if v is not None and not v.unsafe
    )
    assert 0 < kept < sum(sum(e.label_mask) for e in exs)
    assert sum(r["label_tokens"] for r in _rows(Path(rs.output_dir))) == kept
    # the default (published) rs_normalize all: every label token is in the denominators, and the
    # kept ones carry weight 1, the dropped ones 0
    all_cfg = _cfg(
        workdir, "rs-all", method="rs", scorer=server.address, cache_path=rs_cfg.resolved_cache_path
    )
    assert all_cfg.loss.rs_normalize == "all" and run_training(all_cfg).finished
    rows = _rows(Path(all_cfg.run.output_dir))
    assert sum(r["label_tokens"] for r in rows) == sum(sum(e.label_mask) for e in exs)
    assert sum(r["mean_star"] * r["label_tokens"] for r in rows) == pytest.approx(kept)
    cfg = _cfg(
        workdir, "pre", method="dss", scorer=server.address, reference="precomputed", kl_estimator="k3"
    )
    pre = run_training(cfg)
    assert pre.finished and pre.metrics["kl"] >= 0.0
    assert ScoreCache(cfg.resolved_cache_path or "").count("ref_logprobs") == 12


def test_precomputed_scores_file(workdir: Path, server: Any, tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    cfg = _cfg(workdir, "offline", method="dss", scorer=server.address, cache_path="")
    recipe.write_text(json.dumps({k: v for k, v in cfg.to_dict().items() if k != "extra"}))
    out = tmp_path / "scores.jsonl"
    assert precompute_main(["--config", str(recipe), "--out", str(out), "--verdicts"]) == 0
    assert len(out.read_text().splitlines()) == 24  # 12 score records + 12 verdicts
    cuts = _metric(server, "star_cuts_scored_total")
    res = run_training(cfg.replace(scorer=None, scores_file=str(out), output_dir=str(tmp_path / "o")))
    assert res.finished and 0.0 < res.metrics["mean_star"] < 1.0
    assert _metric(server, "star_cuts_scored_total") == cuts


def test_full_vocab_kl_bf16_autocast_and_every_turn(workdir: Path, server: Any, tmp_path: Path) -> None:
    data = tmp_path / "multi.jsonl"
    turns = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello there, how can I help you today?"},
        {"role": "user", "content": "How do I bake bread?"},
        {"role": "assistant", "content": TRAINING_RESPONSES[2]},
    ]
    data.write_text("\n".join(json.dumps({"messages": turns}) for _ in range(4)) + "\n")
    cfg = _cfg(
        workdir,
        "fullkl",
        data=str(data),
        method="dss",
        scorer=server.address,
        kl_estimator="full",
        mixed_precision="bf16",
        all_turns=True,
        grad_accum=2,
    )
    res = run_training(cfg)
    assert res.finished and res.steps == 1
    # both assistant turns were scored (each its own guard request); identical rows were deduped
    assert res.metrics["guard_requests"] == 2
    row = _rows(Path(res.output_dir))[0]
    assert row["kl"] >= 0.0 and 0.0 < row["mean_star"] < 1.0


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_activation_checkpointing_changes_memory_not_the_run(
    workdir: Path, server: Any, finetune: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`activation_checkpointing: true` recomputes each layer in the backward pass: the same per-step
    losses and final weights as without it (within 1e-6; tests/test_memory_plan.py measures the memory
    it saves). LoRA checks the frozen base: non-reentrant checkpointing needs no input with grad."""
    kw: dict[str, Any] = dict(method="dss", scorer=server.address, finetune=finetune, grad_accum=2)
    kw.update(cache_path=str(workdir / f"ac-{finetune}.sqlite"))  # one score cache: the trainer is tested
    import transformers.modeling_utils as mu

    calls: list[int] = []
    real = mu.checkpoint

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(mu, "checkpoint", counted)  # transformers binds it when checkpointing is enabled
    plain = run_training(_cfg(workdir, f"plain-{finetune}", **kw))
    assert not calls
    ac = run_training(_cfg(workdir, f"ac-{finetune}", activation_checkpointing=True, **kw))
    assert len(calls) >= 2 * ac.steps  # every layer of every micro-batch ran checkpointed
    a, b = _rows(Path(plain.output_dir)), _rows(Path(ac.output_dir))
    assert len(a) == len(b) == plain.steps > 0
    for ra, rb in zip(a, b, strict=True):
        assert abs(ra["loss"] - rb["loss"]) <= 1e-6 and abs(ra["kl"] - rb["kl"]) <= 1e-6, (ra, rb)
    lora = finetune == "lora"
    wa, wb = _final_weights(Path(plain.output_dir), lora), _final_weights(Path(ac.output_dir), lora)
    assert wa.keys() == wb.keys() and len(wa) > 0
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) <= 1e-6
