"""Encoder families: the protocol (:mod:`.base`), the registry (:mod:`.registry`) and one
module per family (:mod:`.resnet`, ...). See docs/models.md, "Adding an encoder family"."""
