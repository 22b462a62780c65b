"""Build a tiny random-weight qwen2 model with a BPE tokenizer trained here, in seconds, offline."""

from __future__ import annotations

from pathlib import Path

import torch

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "Yes No yes no Yes. No. The answer is Yes. The answer is No.",
    "You are a helpful assistant. Always answer in Japanese. Answer in one short sentence.",
    "What is the capital of France? Paris is the capital of France.",
    "Explain what a CPU is. A central processing unit runs instructions.",
    "Be concise. Be formal. Be friendly. Use simple words for beginners.",
    "hello world the quick brown fox jumps over the lazy dog 0123456789",
    "こんにちは 日本語で答えてください 東京 です ます",
] * 20


def build_tiny_model(path: Path, seed: int = 0) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    path.mkdir(parents=True, exist_ok=True)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token=None, unk_token=None)
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(path)

    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=False, eos_token_id=fast.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=fast.pad_token_id, bos_token_id=None,
    )
    model = Qwen2ForCausalLM(cfg)
    with torch.no_grad():  # larger weights make logits well separated (no argmax near-ties)
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.15)
    model.save_pretrained(path)
    GenerationConfig(eos_token_id=[cfg.eos_token_id]).save_pretrained(path)
    return path


@torch.inference_mode()
def greedy_continuation(model: torch.nn.Module, ids: list[int], n: int) -> list[int]:
    """``n`` greedy tokens after ``ids``, one full forward per token and EOS not special (what an
    engine decodes with ``ignore_eos``): a reference independent of the engines' batching and caches."""
    out: list[int] = []
    for _ in range(n):
        logits = model(torch.tensor([ids + out])).logits[0, -1]
        out.append(int(logits.argmax()))
    return out
