"""The quality proxy: how far a checkpoint's next-token distributions moved from a reference model's
on fixed held-out text, with a 95% interval, so that two recipes' proxies read as a difference or a tie.

Per held-out text the KL(reference || checkpoint) summed over its tokens and the count of tokens where
both pick the same next token; the interval resamples texts (tokens of one text are not independent).
"""

from exatrack.compress import calibration
from exatrack.core import stats


def per_text(reference, candidate, tokenizer, max_tokens: int) -> list[tuple[float, int, int]]:
    """(KL summed over tokens, top-1 agreements, tokens) for every held-out text."""
    import torch

    out = []
    with torch.inference_mode():
        for text in calibration.heldout_texts(tokenizer):
            ids = tokenizer(text, return_tensors="pt", add_special_tokens=False, truncation=True, max_length=max_tokens).input_ids
            ref_logp = reference(ids).logits.float().log_softmax(-1)[0]
            cand_logp = candidate(ids).logits.float().log_softmax(-1)[0]
            kl = (ref_logp.exp() * (ref_logp - cand_logp)).sum(-1).sum().item()
            agree = (ref_logp.argmax(-1) == cand_logp.argmax(-1)).sum().item()
            out.append((kl, agree, ids.shape[1]))
    return out


def summarize(texts: list[tuple[float, int, int]]) -> dict:
    def ratio(picks, column):
        return sum(texts[i][column] for i in picks) / sum(texts[i][2] for i in picks)

    sizes = {"texts": len(texts)}
    draws = list(stats.resamples(sizes))
    metrics = {"proxy_tokens": sum(t[2] for t in texts)}
    for name, column in (("proxy_kl", 0), ("proxy_top1_agreement", 1)):
        metrics[name] = ratio(range(len(texts)), column)
        metrics[f"{name}_low"], metrics[f"{name}_high"] = stats.percentile_interval([ratio(d["texts"], column) for d in draws])
    return metrics


def quality_proxy(reference_folder, checkpoint_folder, max_tokens: int = 512) -> dict:
    """proxy_kl (mean KL per token), proxy_top1_agreement, each with _low/_high, and proxy_tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(reference_folder)
    reference = AutoModelForCausalLM.from_pretrained(reference_folder, dtype=torch.float32).eval()
    candidate = AutoModelForCausalLM.from_pretrained(checkpoint_folder, dtype=torch.float32).eval()
    return summarize(per_text(reference, candidate, tokenizer, max_tokens))
