"""Tiny random-initialised models for tests, demos and benchmarks, and the real-guard kit.

Nothing here is downloaded: tokenizers are trained with `tokenizers`, weights are random. Guards
(`tiny_guard`) follow the real families' architectures and templates so the scorer runs its production
path on them; `real_guards` pairs published guard templates with real tokenizers (Llama 3, and in
round 2 Qwen3, Llama 4, Mistral v3: `real_tokenizers`) and our templates (`guard_formats`); `tiny_chat`
builds trainees and policies.
"""
