"""Loads exported Itera-Lite folders with Hugging Face `transformers` as they are, and compares
its next-token log-probabilities with those `native-trainer score` wrote for the same text.

    python3 scripts/hf_check.py TEXT DIR[:score.json] ...

Each DIR is an export folder (model.safetensors, config.json, tokenizer.json); with `:score.json`
(written by `native-trainer score --text TEXT`) the per-token log-probabilities of that file are
compared, and Python `tokenizers` must encode TEXT into the same ids. Runs on the
CPU in float32. Needs torch, transformers, tokenizers (not part of the project's own build).
"""
import json
import sys

import torch
from tokenizers import Tokenizer
from transformers import AutoConfig, AutoModelForCausalLM


def check(text, folder, score_path):
    cfg = AutoConfig.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.eval()
    print(f"{folder}: loaded {type(model).__name__} (model_type {cfg.model_type}), "
          f"{sum(p.numel() for p in model.parameters())} parameters")
    if score_path is None:
        return True
    score = json.load(open(score_path))
    tok = Tokenizer.from_file(f"{folder}/tokenizer.json")
    eot = tok.token_to_id("<|endoftext|>")
    ids = tok.encode(text, add_special_tokens=False).ids
    same_ids = ids == score["tokens"]
    inp = torch.tensor([[eot] + score["tokens"][:-1]])
    with torch.no_grad():
        logits = model(inp).logits[0].float()
    logp = torch.log_softmax(logits, -1)
    hf = logp[torch.arange(len(score["tokens"])), torch.tensor(score["tokens"])]
    ours = torch.tensor(score["logprobs"])
    diff = (hf - ours).abs().max().item()
    ok = same_ids and diff < 1e-3
    print(f"  tokenizer ids identical: {same_ids}; max |logprob_hf - logprob_ours| = {diff:.2e} "
          f"over {len(ours)} tokens -> {'OK' if ok else 'MISMATCH'}")
    return ok


if __name__ == "__main__":
    torch.set_num_threads(4)
    text = open(sys.argv[1], encoding="utf-8").read()
    results = []
    for arg in sys.argv[2:]:
        folder, _, score = arg.partition(":")
        try:
            results.append(check(text, folder, score or None))
        except Exception as e:  # report and go on: every folder gets its line
            print(f"{folder}: FAILED to load: {type(e).__name__}: {e}")
            results.append(False)
    sys.exit(0 if all(results) else 1)
