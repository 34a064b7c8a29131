"""Callbacks that run a [`padnet.PadModel`][padnet.adapter.model.PadModel]'s training hooks inside other training loops: the transformers
`Trainer` ([`padnet.training.integrations.transformers`][padnet.training.integrations.transformers]) and Lightning ([`padnet.training.integrations.lightning`][padnet.training.integrations.lightning]).
Each module imports its framework, so import the one you use."""
