"""The contract between the STAR scorer and its callers: plain types, shared errors, protobuf conversion.

Torch-free. The scorer (`scorer_server`), the client (`star_client`) and the trainer (`trainer_client`)
all import it; it imports none of them.
"""
