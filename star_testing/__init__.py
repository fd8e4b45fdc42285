"""Tiny random-initialised models for tests, demos and benchmarks, and the real-guard kit.

Nothing here is downloaded: tokenizers are trained with `tokenizers`, weights are random. Guards
(`tiny_guard`) follow the real families' architectures and templates so the scorer runs its production
path on them; `real_guards` pairs published guard templates with the real Llama 3 tokenizer; `tiny_chat`
builds trainees and policies.
"""
