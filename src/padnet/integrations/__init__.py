"""Callbacks that run a :class:`padnet.PadModel`'s training hooks inside other training loops: the transformers
``Trainer`` (:mod:`padnet.integrations.transformers`) and Lightning (:mod:`padnet.integrations.lightning`).
Each module imports its framework, so import the one you use."""
