"""Generated protobuf package services.core.proto.hanzo; do not edit (regenerate with `make proto`)."""
