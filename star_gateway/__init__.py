"""star-gateway: an OpenAI-compatible HTTP server in front of any OpenAI-compatible upstream, which
moderates each answer with the STAR scorer while it streams (docs/gateway.md).

    star-gateway --upstream http://vllm:8000 --scorer scorer:50051

Also answers LiteLLM's Generic Guardrail API (`POST /beta/litellm_basic_guardrail_api`)."""
