"""The built-in toy safety world: a toy guard, a toy aligned chat model, datasets and the demo."""
