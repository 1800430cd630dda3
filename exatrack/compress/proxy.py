"""The quality proxy: how far a checkpoint's next-token distributions moved from a reference model's
on fixed held-out text, with a 95% interval, so that two recipes' proxies read as a difference or a tie.

Per held-out text the KL(reference || checkpoint) summed over its tokens and the count of tokens where
both pick the same next token; the interval resamples texts (tokens of one text are not independent).
Each checkpoint keeps its per-text values (proxy.json), so that two checkpoints of one reference
compare through `difference`: the same texts resampled for both, so that a hard text, hard for both,
cancels; two recipes a few percent apart in KL are told apart where their own intervals overlap.
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


COLUMNS = (("proxy_kl", 0), ("proxy_top1_agreement", 1))


def ratio(texts: list[tuple[float, int, int]], picks, column: int) -> float:
    """A column summed over the picked texts, per token."""
    return sum(texts[i][column] for i in picks) / sum(texts[i][2] for i in picks)


def summarize(texts: list[tuple[float, int, int]]) -> dict:
    draws = list(stats.resamples({"texts": len(texts)}))
    metrics = {"proxy_tokens": sum(t[2] for t in texts)}
    for name, column in COLUMNS:
        metrics[name] = ratio(texts, range(len(texts)), column)
        metrics[f"{name}_low"], metrics[f"{name}_high"] = stats.percentile_interval([ratio(texts, d["texts"], column)
                                                                                     for d in draws])
    return metrics


def difference(candidate: list[tuple[float, int, int]], base: list[tuple[float, int, int]]) -> dict:
    """The candidate's proxy minus the base's, both per_text over the same held-out texts: every draw
    resamples the same texts on both sides, so what a text does to both (a hard one) cancels and two
    checkpoints of equal quality read as an interval around 0."""
    def delta(picks, column):
        return ratio(candidate, picks, column) - ratio(base, picks, column)

    if [t[2] for t in candidate] != [t[2] for t in base]:
        raise ValueError("the two checkpoints' proxies were measured on different texts")
    draws = list(stats.resamples({"texts": len(base)}))
    metrics = {}
    for name, column in COLUMNS:
        metrics[f"{name}_delta"] = delta(range(len(base)), column)
        metrics[f"{name}_delta_low"], metrics[f"{name}_delta_high"] = stats.percentile_interval(
            [delta(d["texts"], column) for d in draws])
    return metrics


def side_by_side(reference_folder, checkpoints: dict, base: str, max_tokens: int = 512) -> dict[str, dict]:
    """Each checkpoint's proxy against the reference model, and its paired difference to the `base`
    checkpoint's: for two ways of making the same checkpoint (exatrack.compress.gptq's paths)."""
    texts = dict(zip(checkpoints, measure(reference_folder, *checkpoints.values(), max_tokens=max_tokens)))
    return {name: {**summarize(t), **difference(t, texts[base])} for name, t in texts.items()}


def measure(reference_folder, *checkpoint_folders, max_tokens: int = 512) -> list[list[tuple[float, int, int]]]:
    """per_text of each checkpoint against the reference, all loaded in float32 (the reference once)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def load(folder):
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()

    tokenizer, reference = AutoTokenizer.from_pretrained(reference_folder), load(reference_folder)
    return [per_text(reference, load(folder), tokenizer, max_tokens) for folder in checkpoint_folders]


def quality_proxy(reference_folder, checkpoint_folder, max_tokens: int = 512) -> dict:
    """proxy_kl (mean KL per token), proxy_top1_agreement, each with _low/_high, and proxy_tokens."""
    [texts] = measure(reference_folder, checkpoint_folder, max_tokens=max_tokens)
    return summarize(texts)
