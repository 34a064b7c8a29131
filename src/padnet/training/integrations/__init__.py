"""Callbacks that run a :class:`padnet.PadModel`'s training hooks inside other training loops: the transformers
``Trainer`` (:mod:`padnet.training.integrations.transformers`) and Lightning (:mod:`padnet.training.integrations.lightning`).
Each module imports its framework, so import the one you use."""
