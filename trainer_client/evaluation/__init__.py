"""Safety and capability evaluation: greedy generation on held-out harmful prompts and benign items,
harmful rate by a guard's Judge, keyword-refusal rate, task accuracy (`star-eval`)."""
