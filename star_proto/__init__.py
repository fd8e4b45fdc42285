"""Generated from proto/star/v1 by scripts/gen_proto.py. Do not edit."""
